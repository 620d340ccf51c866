# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Baseline comparison
#
# Diff-Lung's first claim is a table: PSNR, SSIM, GFLOPs and seconds per image for Pix2Pix
# {cite}`isola2017pix2pix`, SPADE {cite}`park2019spade`, Segmentation-Guided Diffusion {cite}`konz2024segguided` and
# Diff-Lung (CBMAT). Here the four are trained on the same phantom split with the same budget (optimisation steps
# times batch), and scored on the same held-out masks. The poster's reported row stands under each of ours.

# %% tags=["parameters"]
profile = "smoke"
seed = 0
run_dir = "runs/smoke/04_baseline_comparison"
runs_root = "runs/smoke"
device = "auto"
judge_steps = 300
min_seeds = 1
gan_size = "S"
n_seeds = 1
preset = "small"
train_steps = 600
batch_size = 8
n_test = 16
sampler = "dpm"
sampler_steps = 10
timing_batch = 8
timing_repeats = 1
sample_seeds = [0, 1]

# %%
from difflung.chapters import baseline_comparison as ch

# %% [markdown]
# ## The four models
#
# Diff-Lung (CBMAT) is chapter 3's model when its configuration matches; Seg-Guided Diffusion gets the same
# network and budget with the parent's setup: uniform ablation ($p = 0.5$) and a single mask channel holding
# $k/255$.

# %%
cmp = ch.open_comparison(runs_root, run_dir, seed=seed, n_seeds=n_seeds, min_seeds=min_seeds, gan_size=gan_size,
                         device=device)
ch.diffusion_models(cmp, preset=preset, train_steps=train_steps, batch_size=batch_size)

# %%
ch.gan_baselines(cmp)

# %%
ch.figure_gan_losses(cmp)

# %% [markdown]
# *Figure: Pix2Pix and SPADE training losses; made by `difflung.chapters.baseline_comparison.figure_gan_losses`.*
#
# ## Generation and mask faithfulness
#
# Every model generates the same test masks with the same initial noise per mask and sampling seed. The test
# slices are spread evenly over the test split, the rule of chapters 2 and 3 (this chapter used to draw a seeded
# random subset), so Diff-Lung's PSNR here is chapter 3's. The run's judge, a MONAI UNet trained on real training
# slices only, reads the generated slices; its Dice on the real test slices is the ceiling for any generator.

# %%
scored = ch.evaluate(cmp, judge_steps=judge_steps, n_test=n_test, sampler=sampler, sampler_steps=sampler_steps,
                     seeds=sample_seeds, timing_batch=timing_batch, timing_repeats=timing_repeats)
ch.table_judge(scored)

# %% [markdown]
# ## Quality and cost

# %%
ch.table_comparison(run_dir)

# %% [markdown]
# PSNR and SSIM on the model window HU $[-1000, 400]$ mapped to $[-1, 1]$ (data range 2), means with 95 % CIs
# over test slices (and over training seeds where there are several). GFLOPs count every sampling step; seconds
# per image are measured on this run's device at the stated batch. The poster does not state the image size or
# device of its cost columns.

# %%
ch.table_faithfulness(run_dir)

# %%
ch.figure_samples(cmp, scored)

# %% [markdown]
# *Figure: the same masks through the four models beside the real slice, lung window, with a zoom on the rarest
# class; made by `difflung.chapters.baseline_comparison.figure_samples`.*

# %%
ch.figure_quality_cost(run_dir)

# %% [markdown]
# *Figure: quality against cost (GFLOPs per image, log scale, against PSNR); hollow markers are the poster's
# reported points; made by `difflung.chapters.baseline_comparison.figure_quality_cost`.*
