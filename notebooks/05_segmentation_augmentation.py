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
# # Segmentation augmentation
#
# Diff-Lung's second claim, and the reason to use it: adding its synthetic slices to a segmentation network's
# training set raises Dice on the rare classes (poster: emphysema 0.60 to 0.80, fibrosis 0.72 to 0.81). We test it
# with four arms that share the model, the number of optimisation steps and the training seeds:
#
# - `ref`: real training slices only;
# - `oversample`: real slices with rare classes repeated up to the synthetic set's class balance, the control
#   that separates "more rare-class pixels" from "better synthetic images";
# - `+segguided` and `+difflung`: the same synthesised masks (rare lesions copied, rotated and dilated into healthy
#   lung), painted by Segmentation-Guided Diffusion and by Diff-Lung (CBMAT).

# %% tags=["parameters"]
profile = "smoke"
seed = 0
run_dir = "runs/smoke/05_segmentation_augmentation"
runs_root = "runs/smoke"
device = "auto"
n_seeds = 2
min_seeds = 2
mix_ratio = 0.5
boost = 0.15
sampler = "ddim"
sampler_steps = 10
seg_channels = [8, 16, 32]
seg_strides = [2, 2]
seg_res_units = 1
seg_batch_size = 16
seg_lr = 0.01
seg_steps = 200

# %%
from myst_nb import glue

from difflung import augment
from difflung.chapters import segmentation_augmentation as ch
from difflung.segmentation import SegConfig

# %% [markdown]
# ## Inputs
#
# The phantom dataset of chapter 1, Diff-Lung (CBMAT) from chapter 3 and Seg-Guided Diffusion from chapter 4.

# %%
inputs = ch.locate_inputs(runs_root)
config = SegConfig.from_dict({"channels": seg_channels, "strides": seg_strides, "num_res_units": seg_res_units,
                               "batch_size": seg_batch_size, "lr": seg_lr, "steps": seg_steps})
seeds = augment.training_seeds(seed, n_seeds, min_seeds)
glue("n_seeds", len(seeds), display=False)
glue("seg_steps", config.steps, display=False)
ch.table_inputs(inputs)

# %% [markdown]
# ## Synthetic sets and the control's class balance
#
# `difflung.augment.run_experiment` synthesises the masks, paints them with each
# diffusion model, builds the arms, and trains and scores each arm once per seed
# ({glue:text}`n_seeds` seeds, {glue:text}`seg_steps` steps each).

# %%
experiment = dict(config=config, seeds=seeds, seed=seed, mix_ratio=mix_ratio, boost=boost, sampler=sampler,
                  sampler_steps=sampler_steps, device=device)
res, syn, balance = augment.run_experiment(inputs.dataset, run_dir, tag="phantom", models=inputs.models, **experiment)
display(syn.report)
balance

# %% [markdown]
# ## Dice per class
#
# Mean over training seeds with a 95 % t-interval; the poster's reported rows beside ours.

# %%
real = None
if inputs.real_dataset is not None:
    real, _, _ = augment.run_experiment(inputs.real_dataset, run_dir, tag="real", models=inputs.real_models,
                                        **experiment)
ch.write_chapter_metrics(run_dir, [r for r in (res, real) if r is not None], config=config, seed=seed,
                         synthetic=syn.sets)
ch.table_results(run_dir)

# %%
ch.figure_dice(run_dir, seed=seed)

# %% [markdown]
# *Figure: Dice per class and arm, mean and 95 % CI over seeds; made by
# `difflung.chapters.segmentation_augmentation.figure_dice`.*
#
# ## Against `ref`: paired tests
#
# Wilcoxon signed-rank over seeds (the training run is the unit of replication, and seed $s$ of every arm shares
# its initial weights and augmentation stream with seed $s$ of `ref`); a rank-sum over test slices beside it as a
# secondary view. With $n$ seeds the signed-rank test cannot give $p$ below $2/2^n$: read the interval of the
# paired difference, not $p$ alone.

# %%
ch.table_tests(run_dir)

# %%
won = ch.table_winners(run_dir)
for cls, row in won.iterrows():
    glue(f"winner_{cls}", str(row["winner"]), display=False)
won

# %% [markdown]
# The winning arm per class, as computed from `metrics.csv`: healthy lung {glue:text}`winner_lung`,
# emphysema {glue:text}`winner_emphysema`, fibrosis {glue:text}`winner_fibrosis`, GGO {glue:text}`winner_ggo`.

# %%
ch.figure_examples(res, run_dir, seed=seed)

# %% [markdown]
# *Figure: predictions of each arm on the same test slices; made by
# `difflung.chapters.segmentation_augmentation.figure_examples`.*
#
# ## The same experiment on real CT
#
# The real CT's lesion class, with the experiment's size stated by its own numbers (test slices and patients,
# width of the interval).

# %%
if real is not None:
    display(ch.table_real_data(real))
    display(ch.figure_dice(run_dir, "real", seed=seed))
    print("\n".join(real.notes))

# %% [markdown]
# ## Export for nnU-Net
#
# `python -m difflung export-nnunet` (here `difflung.nnunet.export_nnunet`) writes real + synthetic training data in
# nnU-Net v2's raw layout, so the augmented set can train nnU-Net.

# %%
if "+difflung" in syn.sets:
    folder, summary = ch.export_nnunet_example(inputs.dataset, syn.sets["+difflung"], run_dir)
    print(folder)
    display(summary)
