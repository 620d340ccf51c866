# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
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

# %%
from myst_nb import glue

from difflung.chapters import cbmat_training as ch

# %% [markdown]
# ## Training

# %%
result = ch.train_main(runs_root, run_dir, steps=steps, batch_size=batch_size, preset=preset, lr=lr, warmup=warmup,
                       seed=seed, device=device)
ch.write_cost(result, run_dir)
glue("train_device", result.device, display=False)
ch.training_table(result, run_dir)

# %% [markdown]
# This run trained on **{glue:text}`train_device`**.

# %%
ch.loss_figure(run_dir, seed=seed)

# %% [markdown]
# *Figure: training loss and learning rate; made by `difflung.chapters.cbmat_training.loss_figure`.*
#
# ## Samples for held-out masks rich in rare classes

# %%
ch.sample_grid(runs_root, run_dir, n=n_samples, sampler=sampler, sampler_steps=sampler_steps,
               seeds=(seed, seed + 1), device=device)

# %% [markdown]
# *Figure: test masks richest in rare classes, the real slice, and two generations with different seeds; made by
# `difflung.chapters.cbmat_training.sample_grid`.*
#
# ## Generated against real intensities

# %%
gen = ch.generate_test(runs_root, run_dir, n_test=n_test, sampler=sampler, sampler_steps=sampler_steps, seed=seed,
                       device=device)
ch.write_metrics(run_dir, ch.metric_rows(result, gen))
ch.quality_table(gen)

# %%
ch.hu_figure(gen, run_dir)

# %% [markdown]
# *Figure: HU histograms per class, generated against real test slices; made by
# `difflung.chapters.cbmat_training.hu_figure`.*

# %%
ch.hu_table(gen)
