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
# # Mask ablation study
#
# A mask-guided DDPM learns $\varepsilon_\theta(x_t, t \mid m)$ from image-mask pairs. Mask-ablated training
# removes classes from the condition $m$ during training, so that the model can also generate from partial masks.
# Segmentation-Guided Diffusion {cite}`konz2024segguided` removes each class with $p = 0.5$; Diff-Lung's CBMAT
# removes class $i$ with $P_\text{initial}(i) = 1 - f_i$, cosine-annealed to zero over training. Read literally,
# $1 - f_i$ drops the *rarest* classes most often; we therefore also train the inverse ($P_i = f_i$) to see which
# direction helps. Same network, data, budget and seed for every strategy:
#
# | strategy | $P_i(t)$ |
# |---|---|
# | `none` | 0 |
# | `uniform` | 0.5 (the parent) |
# | `cbmat` | $(1 - f_i)\,(1 + \cos(\pi t / T))/2$ (Diff-Lung) |
# | `cbmat-constant` | $1 - f_i$ |
# | `cbmat-inverse` | $f_i\,(1 + \cos(\pi t / T))/2$ |
#
# Ablated pixels become "unspecified" (zero in every mask channel); background is never ablated.

# %% tags=["parameters"]
profile = "smoke"
seed = 0
run_dir = "runs/smoke/02_mask_ablation_study"
runs_root = "runs/smoke"
device = "auto"
judge_steps = 300
preset = "small"
steps = 200
batch_size = 8
lr = 0.002
warmup = 20
n_test = 16
sampler = "dpm"
sampler_steps = 10
sample_seeds = [0, 1]

# %%
from difflung.chapters import ablation_study as ch

# %% [markdown]
# ## Ablation probabilities per class
#
# $f_i$ is each class's share of the non-background pixels of the training split (chapter 1's dataset).

# %%
ch.table_probabilities(runs_root, steps=steps)

# %%
ch.figure_schedules(runs_root, run_dir, steps=steps, seed=seed)

# %% [markdown]
# *Figure: ablation probability $P_i(t)$ per class over training, for each strategy; made by
# `difflung.chapters.ablation_study.figure_schedules`.*
#
# ## Training: one model per strategy

# %%
ch.train_strategies(runs_root, run_dir, steps=steps, batch_size=batch_size, preset=preset, lr=lr, warmup=warmup,
                    seed=seed, device=device)

# %%
ch.figure_losses(run_dir, seed=seed)

# %% [markdown]
# *Figure: training loss per strategy; made by `difflung.chapters.ablation_study.figure_losses`.*
#
# ## Evaluation
#
# Each model generates the test slices' masks (and the masks with one class removed in turn); every model gets the
# same initial noise for the same mask and seed. PSNR and SSIM against the real slice; mask faithfulness is the
# per-class Dice between the conditioning mask and what the run's judge, a segmentation network trained on real
# training slices only (shared by every chapter), reads in the generated image.

# %%
scored = ch.evaluate(runs_root, run_dir, judge_steps=judge_steps, n_test=n_test, sampler=sampler,
                     sampler_steps=sampler_steps, seeds=sample_seeds, seed=seed, device=device)
ch.table_judge(scored)

# %% [markdown]
# The judge on the real test slices: the ceiling of mask faithfulness for any generator.

# %%
ch.table_quality(scored)

# %% [markdown]
# Means with 95 % CIs over test slices (and over sampling seeds); the row `real` is the judge on the real test
# slices.

# %%
ch.figure_dice(scored, run_dir, seed=seed)

# %% [markdown]
# *Figure: mask faithfulness per class and strategy, rare classes included; made by
# `difflung.chapters.ablation_study.figure_dice`.*
#
# ## Generation from partial masks

# %%
ch.figure_partial(scored, run_dir, seed=seed)

# %% [markdown]
# *Figure: quality when one class is removed from the mask in turn; made by
# `difflung.chapters.ablation_study.figure_partial`.*

# %%
ch.figure_samples(scored, run_dir)

# %% [markdown]
# *Figure: scored test slices rich in rare classes and each strategy's generation from the same masks (the images
# scored above); made by `difflung.chapters.ablation_study.figure_samples`.*
