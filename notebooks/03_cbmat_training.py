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
# $T$ = {glue:text}`n_timesteps` {glue:md}`beta_schedule` betas and {glue:md}`prediction`, trained with CBMAT,
# AdamW with cosine warm-up, gradient clipping and EMA weights (bf16 autocast and channels_last on a GPU, bf16 on a
# CPU where the profile asks for it; HF accelerate for several GPUs). Chapters 4 and 5 reuse this model. This
# chapter measures how close its slices come to real ones; those criteria are reported, not a gate, except one: a
# model that never learned its masks (judge Dice ratio on lung below {glue:text}`dice_ratio_min`) makes the later
# claims not measurable.

# %% tags=["parameters", "remove-input"]
profile = "smoke"
seed = 0
run_dir = "runs/smoke/03_cbmat_training"
runs_root = "runs/smoke"
device = "auto"
judge_steps = 300
curve_evals = 2
n_val = 4
preset = "small"
steps = 600
batch_size = 8
lr = 0.002
warmup = 20
low_res_share = 0.0
mixed_precision = "auto"
n_samples = 6
n_test = 16
sampler = "dpm"
sampler_steps = 10
sample_seeds = [0, 1]

# %% tags=["remove-input"]
from difflung.progress import quiet_notebook_tqdm

quiet_notebook_tqdm()

from difflung.chapters import cbmat_training as ch
from difflung.plots import table

ch.glue_facts(ch.page_facts())

# %% [markdown]
# ## Training

# %% tags=["hide-input"]
result = ch.train_main(runs_root, steps=steps, batch_size=batch_size, preset=preset, lr=lr, warmup=warmup, seed=seed,
                       device=device, judge_steps=judge_steps, n_val=n_val, curve_evals=curve_evals, sampler=sampler,
                       sampler_steps=sampler_steps, low_res_share=low_res_share, mixed_precision=mixed_precision)
ch.write_cost(result, run_dir)
table(ch.table_training(result))

# %% [markdown]
# Where this run's training differs from the parent's published recipe ({glue:md}`parent_recipe`);
# `benchmarks/bench_convergence.py` measures each change as time to quality:

# %% tags=["hide-input"]
table(ch.table_recipe(result))

# %% tags=["remove-input"]
ch.glue_facts(ch.train_facts(result))

# %% [markdown]
# This run trained on **{glue:md}`train_device`**; {numref}`ch3-loss` shows its loss.

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Training loss per step (grey), its running mean (blue) and the learning rate (dashed, right axis). Made by `difflung.chapters.cbmat_training.figure_loss`.", "name": "ch3-loss"}}
ch.figure_loss(result, run_dir, seed=seed)

# %% [markdown]
# ## Generation for held-out masks
#
# One generation per test mask and sampling seed, scored by the same rules as chapters 2 and 4 (test subset,
# seeding: `difflung.judging.scoring`), so chapter 4 reports the same PSNR for this model. Mask faithfulness is read by
# the run's judge, a segmentation network trained on real training slices only.

# %% tags=["hide-input"]
scored = ch.evaluate(runs_root, run_dir, result, judge_steps=judge_steps, n_test=n_test, sampler=sampler,
                     sampler_steps=sampler_steps, seeds=sample_seeds, seed=seed, device=device)
measurable, results = ch.check(runs_root, run_dir, scored, sampler=sampler, steps=steps, seed=seed)
table(ch.table_measurable(scored, measurable))

# %% tags=["remove-input"]
ch.glue_facts(ch.run_facts(scored))

# %% [markdown]
# The table gives the judge's Dice on the real test slices. A class counts as *measurable* only where the judge
# reaches its floor there (Dice {glue:text}`anatomy_floor` for the large anatomy, {glue:text}`rare_floor` for every
# other class) and the class keeps its HU signature at this image size (chapter 1's check); otherwise its
# faithfulness is reported as not measurable, with the reason.
#
# ## Has the model converged?
#
# The criteria are checked on the {glue:text}`n_test_slices` test masks of {glue:text}`n_test_patients` test patients
# (`difflung.judging.criteria.measure`, thresholds in `difflung.judging.instruments`): the judge's Dice on generated
# slices within a band around its Dice on the real slices, for each measurable class (above the band, lesions are
# caricatures, easier to find than real ones); per-class HU distance (Wasserstein-1) between generated and real pixels
# below a limit and, for lesions, below a share of the class's HU contrast with healthy lung on the training slices;
# almost every generated slice with its air near the real slice's; and a small classifier trained on some test
# patients that cannot tell real from generated slices of the others too well, but can tell its positive controls.

# %% tags=["hide-input"]
table(ch.table_criteria(results))

# %% tags=["remove-input"]
ch.glue_facts(ch.criteria_facts(results))

# %% [markdown]
# {glue:md}`converged_sentence` The criteria are saved as `criteria.json` in this chapter's run folder, and
# chapters 4 and 5 read them from there.
#
# ## Can the instruments see a known flaw?
#
# A classifier that cannot tell real from generated slices certifies nothing unless it can tell real slices from
# known perturbations of them. Its positive controls are the real test slices made 40 HU brighter inside the lung
# (a flaw the HU distance of lung lets pass) and blurred by one pixel (texture lost); each must be detected, above
# the classifier criterion's own bound, or the model is not called converged. The judge's own features (its
# bottleneck, averaged per slice; no outside weights) give a Fréchet distance and precision, recall, density and
# coverage ("Reliable Fidelity and Diversity Metrics for Generative Models", Naeem et al. 2020) of each set against
# the real test slices: reported, not criteria. With this few slices they are biased, so read them against the floor
# (as many real training slices, from other patients) and the controls, all scored on the same slices.

# %% tags=["hide-input"]
ch.table_power(results)

# %% [markdown]
# The memorisation check (reported, not a criterion) compares each generated slice's distance to its nearest
# training slice with the same distance for real test slices; a ratio well below 1 would suggest copying:

# %% tags=["hide-input"]
ch.table_memorisation(results)

# %% [markdown]
# ## What the judge's mistakes say
#
# A judge Dice ratio under its threshold has two possible causes: lesions drawn wrongly where the mask has them,
# or lesion-like texture where the mask has none. The table counts the judge's false positives of each
# measurable rare class, by the class the mask gives those pixels, on the real test slices and on this model's
# generations of the same masks (first sampling seed). Where the generated count is far above the real one, the
# mask class of that row names the texture the model renders wrongly.

# %% tags=["hide-input"]
table(ch.table_judge_errors(runs_root, scored, measurable, judge_steps=judge_steps, seed=seed, device=device))

# %% [markdown]
# A texture the model renders too smooth is one such cause: the HU histogram of a class can match (the criteria's
# distance) while its fine structure, CT noise and reticulation, is missing, and smooth lung reads as haze. The
# table gives each class's fine texture (the spread of each pixel around its 3x3 mean, inside the class) on real
# and generated slices of the same masks (`difflung.judging.realism.texture`).

# %% tags=["hide-input"]
table(ch.table_texture(scored))

# %% [markdown]
# ## Image quality: full frame, body and lung
#
# PSNR and SSIM against the real slice of the same mask, over the whole frame, inside the body and inside the
# lung (air outside the body is easy to get right and inflates full-frame scores). Each slice is averaged over
# the {glue:text}`n_seeds` sampling seeds; intervals are {glue:md}`confidence` cluster-bootstrap intervals over
# test patients.

# %% tags=["hide-input"]
table(ch.table_regions(scored, seed=seed))

# %% [markdown]
# {numref}`ch3-samples` shows the test masks richest in rare classes and what the model made of them.

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Scored test masks richest in rare classes (top, over the phantom slice), the phantom slice itself (the truth), and the generation of each sampling seed, in the lung window with its HU colour bar. Made by `difflung.chapters.cbmat_training.figure_samples`.", "name": "ch3-samples"}}
ch.figure_samples(scored, run_dir, n=n_samples)

# %% [markdown]
# Slices are shown in the {glue:md}`lung_window`.
#
# ## Generated against real intensities
#
# {numref}`ch3-hu` compares the HU of generated and real pixels under the same masks, class by class; the
# criteria table above gives the distance between them.

# %% tags=["hide-input"] mystnb={"figure": {"caption": "HU histograms per class, generated (first sampling seed) against real test pixels under the same masks; the grey band is the literature range of the class. Made by `difflung.chapters.cbmat_training.figure_hu`.", "name": "ch3-hu"}}
ch.figure_hu(scored, run_dir)

# %% tags=["remove-input"]
ch.scope(profile, scored, measurable, results)
