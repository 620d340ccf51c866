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
# training set raises Dice on the rare classes (the poster's table is set beside ours below). We test it with arms
# that share one segmenter configuration, the number of optimisation steps and the training seeds:
#
# - `ref`: real training slices only;
# - `oversample`: real slices with rare classes repeated up to the synthetic set's class balance, the control
#   that separates "more rare-class pixels" from "better synthetic images";
# - `copypaste`: real lesion patches, with their own HU, pasted into healthy lung of other training slices: the
#   control that adds new rare-class images without any generator;
# - `+segguided` and `+difflung`: the same synthesised masks (rare lesions copied, rotated and dilated into healthy
#   lung), painted by Segmentation-Guided Diffusion and by Diff-Lung (CBMAT);
# - `+insert`: the same lesions inserted into real slices by the patch model of the lesion-insertion chapter;
# - the Diff-Lung dose-response: the `+difflung` arm at several synthetic shares of the real training set.

# %% tags=["parameters", "remove-input"]
profile = "smoke"
seed = 0
run_dir = "runs/smoke/05_segmentation_augmentation"
runs_root = "runs/smoke"
device = "auto"
workers = 2  # segmenters trained at once on a CPU, one thread each
n_seeds = 2
min_seeds = 2
mix_ratio = 0.5
boost = 0.15
sampler = "dpm"
sampler_steps = 10
seg_channels = [8, 16, 32]
seg_strides = [2, 2]
seg_res_units = 1
seg_batch_size = 16
seg_lr = 0.01
seg_steps = 200
dose_shares = [0, 0.25, 1.0]
max_budgets = 1

# %% tags=["remove-input"]
from IPython.display import display

from difflung.chapters import segmentation_augmentation as ch
from difflung.plots import table
from difflung.progress import quiet_notebook_tqdm

quiet_notebook_tqdm()
experiment = ch.open_experiment(runs_root, seed=seed, n_seeds=n_seeds, min_seeds=min_seeds, seg_channels=seg_channels,
                                seg_strides=seg_strides, seg_res_units=seg_res_units, seg_batch_size=seg_batch_size,
                                seg_lr=seg_lr, seg_steps=seg_steps, mix_ratio=mix_ratio, boost=boost, sampler=sampler,
                                sampler_steps=sampler_steps, device=device, workers=workers, dose_shares=dose_shares,
                                max_budgets=max_budgets)
ch.glue_facts(ch.experiment_facts(experiment))

# %% [markdown]
# ## Inputs
#
# The phantom dataset of chapter 1, Diff-Lung (CBMAT) from chapter 3 and Seg-Guided Diffusion from chapter 4.

# %% tags=["hide-input"]
table(ch.table_inputs(experiment.inputs))

# %% [markdown]
# ## One segmenter for every arm, chosen on validation
#
# Every arm trains the same segmenter configuration. It is chosen before any arm is trained, on the validation
# patients only (the test split is not read): each candidate (the intensity shift of ±70 HU on or off, which can
# erase emphysema's −950 HU cue; the loss weighted by inverse square-root class frequency or not) trains on the real
# training slices, and is scored by its rare-class Dice pooled per validation patient. The first candidate in the
# order shown whose score is within one standard error of the best is chosen (`difflung.augment.choose_segmenter`).
# The synthetic sets and arms are then built and trained:

# %% tags=["hide-input"]
res, syn, balance = ch.run_phantom(experiment, run_dir)
table(ch.table_segmenter_choice(experiment))

# %% [markdown]
# The chosen configuration is then trained to its own plateau, again on validation only: at 1, 2, ... times the
# profile's steps until its validation score stops improving (the book's one plateau rule, the one chapter 4 applies
# to the generators), and every arm trains with the steps where it stopped:

# %% tags=["hide-input"]
ch.glue_facts(ch.arm_facts(experiment))
table(ch.table_segmenter_steps(experiment))

# %% [markdown]
# ## Synthetic sets and the control's class balance
#
# `difflung.augment.run_experiment` synthesises the masks, paints them with each diffusion model, builds the
# arms, and trains and scores each arm once per training seed ({glue:text}`n_seeds` seeds, {glue:text}`arm_steps` steps
# each). The mask synthesis, then each training set's rare-class share, which shows that `oversample` adds as many
# rare-class pixels as the synthetic arms:

# %% tags=["hide-input"]
display(*ch.synthesis_tables(syn))
table(balance)

# %% tags=["remove-input"]
real = ch.run_real(experiment, run_dir)  # None when chapter 1 prepared no real-CT dataset
metrics_path = ch.write_chapter_metrics(run_dir, [res, real], config=experiment.config, seed=seed,
                                        synthetic=syn.sets)

# %% [markdown]
# ## Dice per class
#
# The unit of replication is the training run: seed $s$ of every arm shares its initial weights and augmentation
# stream, so one Dice per class, arm and seed is one observation. That Dice is computed the same way for every
# arm: per test patient, pooled over the patient's slices, then averaged over the test patients whose truth holds
# the class. Every seed
# is shown; an interval of the mean (a percentile bootstrap over seeds, which stays inside $[0, 1]$) only from
# {glue:text}`min_interval_seeds` seeds, since an interval from fewer seeds says little. A class absent from the
# test truth, or whose HU signature is lost at this image size (chapter 1), is *not measurable* and says why.

# %% tags=["hide-input"]
table(ch.table_results(run_dir, runs_root=runs_root))

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Dice per class and arm on the held-out phantom test slices: one dot per training seed, a bar at the mean and, where there are enough seeds for one (see the text), the 95 % interval; classes that are not measurable lie on a grey band. Right: the poster's reported values, which come without seeds or intervals. Made by `difflung.chapters.segmentation_augmentation.figure_dice`.", "name": "ch5-dice"}}
ch.figure_dice(run_dir, runs_root=runs_root, seed=seed)

# %% [markdown]
# {numref}`ch5-dice` shows each seed's Dice beside the poster's values. {numref}`ch5-dose` shows how Dice moves
# with the share of Diff-Lung's synthetic slices in the training set.

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Dose-response of the Diff-Lung arm: Dice (pooled per test patient) against the synthetic share of the real training set, 0 being ref-UNet; one dot per training seed, the line through the means. Made by `difflung.chapters.segmentation_augmentation.figure_dose_response`.", "name": "ch5-dose"}}
ch.figure_dose_response(run_dir, seed=seed)

# %% [markdown]
#
# ## Comparisons between arms
#
# Each comparison "arm a > arm b" pairs the arms' Dice by training seed: the mean paired difference, and from
# {glue:text}`min_interval_seeds` seeds a t-interval and a two-sided t-test over seeds, both from one t-statistic
# (`difflung.judging.stats.compare_seeds`). The chapter compares every arm with `ref`, and each synthetic arm with the
# `oversample` and `copypaste` controls; the $p$-values are adjusted by Holm's method across the whole table, and the
# verdict follows the book's one rule (`difflung.judging.stats.verdict`): *reproduced* when the Holm-adjusted $p$ is
# below {glue:text}`alpha` with the difference above 0, *contradicted* when it is below 0, anything else is
# *inconclusive*; a comparison whose class is not measurable, or whose arm paints with a Diff-Lung model that never
# learned its masks, is *not measurable*. A generator that missed its convergence criteria (chapters 3 and 4) is
# noted, not excluded.

# %% tags=["hide-input"]
table(ch.table_comparisons(run_dir, runs_root=runs_root, seed=seed), hide_index=True)

# %% [markdown]
# ### The poster's claims
#
# The poster's own segmentation claims (Diff-Lung's Dice against `ref` and against Seg-Guided Diffusion) are judged
# once for the whole run, with Holm's correction across all of the poster's claims, by
# `difflung.judging.claims.judge_run`; the results chapter shows the same rows. They are therefore left out of the table
# above.

# %% tags=["hide-input"]
table(ch.table_poster_claims(runs_root), hide_index=True)

# %% [markdown]
# ## What the arms predict
#
# {numref}`ch5-examples` shows each arm's prediction on the same test slices.

# %% tags=["hide-input"] mystnb={"figure": {"caption": "The test slices with most rare-class pixels: the image, the phantom's truth and each arm's prediction (first training seed), with the HU colour bar of the display window. Made by `difflung.chapters.segmentation_augmentation.figure_examples`.", "name": "ch5-examples"}}
ch.figure_examples(res, run_dir, seed=seed)

# %% [markdown]
# ## The same experiment on real CT
#
# The real CT's lesion class, when chapter 1 prepared a real-CT dataset, with the same tables and the same rules.

# %% tags=["hide-input"]
display(*ch.real_ct_tables(real, run_dir, runs_root=runs_root, seed=seed))

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Dice per class and arm on the real CT's test slices, one dot per training seed. Made by `difflung.chapters.segmentation_augmentation.figure_dice`.", "name": "ch5-dice-real"}}
ch.figure_dice_real(real, run_dir, runs_root=runs_root, seed=seed)

# %% [markdown]
# ## Export for nnU-Net
#
# `python -m difflung export-nnunet` (here `difflung.data.nnunet.export_nnunet`) writes real + synthetic training data
# in nnU-Net v2's raw layout, so the augmented set can train nnU-Net.

# %% tags=["hide-input"]
ch.table_nnunet_export(experiment, syn, run_dir)

# %% tags=["remove-input"]
ch.scope(profile, run_dir, runs_root=runs_root)
