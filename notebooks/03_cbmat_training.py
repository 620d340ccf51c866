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
# # CBMAT training
#
# The profile's main Diff-Lung model: a diffusers `UNet2DModel` conditioned on the one-hot mask, DDPM with
# $T = 1000$ linear betas and $\varepsilon$-prediction, trained with CBMAT, AdamW with cosine warm-up, gradient
# clipping and EMA weights (bf16 autocast and channels_last on a GPU; HF accelerate for several GPUs). Chapters 4
# and 5 reuse this model.

# %% tags=["parameters"]
profile = "smoke"
seed = 0
run_dir = "runs/smoke/03_cbmat_training"
runs_root = "runs/smoke"
device = "auto"
preset = "small"
steps = 600
batch_size = 8
lr = 0.002
warmup = 20
n_samples = 6
n_test = 16
sampler = "dpm"
sampler_steps = 10
sample_seeds = [0, 1]

# %%
from myst_nb import glue

from difflung.chapters import cbmat_training as ch

# %% [markdown]
# ## Training

# %%
result = ch.train_main(runs_root, steps=steps, batch_size=batch_size, preset=preset, lr=lr, warmup=warmup, seed=seed,
                       device=device)
ch.write_cost(result, run_dir)
glue("train_device", result.device, display=False)
ch.table_training(result)

# %% [markdown]
# This run trained on **{glue:text}`train_device`**.

# %%
ch.figure_loss(result, run_dir, seed=seed)

# %% [markdown]
# *Figure: training loss and learning rate; made by `difflung.chapters.cbmat_training.figure_loss`.*
#
# ## Generation for held-out masks
#
# One generation per test mask and sampling seed, scored by the same rules as chapters 2 and 4 (test subset,
# seeding), so chapter 4 reports the same PSNR for this model.

# %%
scored = ch.evaluate(runs_root, run_dir, result, n_test=n_test, sampler=sampler, sampler_steps=sampler_steps,
                     seeds=sample_seeds, device=device)
ch.table_quality(scored)

# %%
ch.figure_samples(scored, run_dir, n=n_samples)

# %% [markdown]
# *Figure: scored test masks richest in rare classes, the real slice, and the generation of each sampling seed;
# made by `difflung.chapters.cbmat_training.figure_samples`.*
#
# ## Generated against real intensities

# %%
ch.figure_hu(scored, run_dir)

# %% [markdown]
# *Figure: HU histograms per class, generated against real test slices; made by
# `difflung.chapters.cbmat_training.figure_hu`.*

# %%
ch.table_hu(scored)
