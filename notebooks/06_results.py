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
# # Results
#
# What reproduced, what did not, at what cost. Every number on this page is read from the chapters' files of this
# run (`runs/<profile>/*/metrics.csv` and their cost records); nothing is recomputed or typed. The poster's numbers
# stand beside ours as *reported* rows. Our data (a phantom and two real CT volumes at the profile's size) and
# budget differ from the poster's (undisclosed data, 256x256, days of GPU training), so absolute values are not
# expected to match; the verdicts test the poster's *comparisons* on our paired differences, by these rules:
#
# - **reproduced**: the 95 % interval of our paired difference lies above 0 (for "not worse than", above
#   $-0.02$);
# - **not reproduced**: it lies below 0 (below $-0.02$);
# - **inconclusive at this n**: it contains 0;
# - **not measurable**: the class is absent from the test truth, or a chapter did not run;
# - a cost claim "at least 10x" is reproduced when our ratio is at least 10.

# %% tags=["parameters"]
profile = "smoke"
seed = 0
run_dir = "runs/smoke/06_results"
runs_root = "runs/smoke"

# %%
from myst_nb import glue

from difflung.chapters import results as ch

metrics = ch.load_metrics(runs_root)

# %% [markdown]
# ## Paper against reproduction

# %%
claims = ch.claims_table(metrics)
counts = ch.verdict_counts(claims)
for k, v in counts.items():
    glue(f"n_{k.replace(' ', '_')}", v, display=False)
glue("n_claims", len(claims), display=False)
glue("profile_name", profile, display=False)
glue("best_psnr", ch.best_model(metrics, "psnr"), display=False)
glue("best_ssim", ch.best_model(metrics, "ssim"), display=False)
claims.style.format({"reported": "{:+.3g}", "ours": "{:+.3g}", "lo": "{:+.3g}", "hi": "{:+.3g}"}, na_rep="n/a")

# %% [markdown]
# Of {glue:text}`n_claims` claims tested in this **{glue:text}`profile_name`** run, {glue:text}`n_reproduced`
# reproduced, {glue:text}`n_not_reproduced` did not, {glue:text}`n_inconclusive_at_this_n` are inconclusive at this
# number of test slices or seeds, and {glue:text}`n_not_measurable` could not be measured. `reported` is the
# poster's difference, `ours` the mean of our paired differences with its 95 % interval `[lo, hi]` over `n` units.

# %%
ch.figure_claims(claims, run_dir, seed=seed)

# %% [markdown]
# *Figure: our paired differences with 95 % intervals (dots) against the poster's reported differences
# (diamonds); made by `difflung.chapters.results.figure_claims`.*
#
# In this run the highest mean PSNR belongs to **{glue:text}`best_psnr`** and the highest mean SSIM to
# **{glue:text}`best_ssim`** (the poster: Diff-Lung for both). Where we disagree with the poster, the likely
# reasons are the ones the profile makes visible. In the `smoke` profile the diffusion models train for minutes on
# a CPU at 32x32 and are far from converged, while GANs learn a mask-to-image map in a few hundred steps; the rare
# classes have a handful of test slices and the segmentation arms two seeds, so small Dice differences cannot be
# told from seed-to-seed noise. The `standard` and `paper` profiles exist to test the claims at a scale where they
# could hold.
#
# ## Image quality and cost

# %%
ch.image_quality_table(metrics, runs_root)

# %% [markdown]
# Chapter 4's table: PSNR and SSIM on HU $[-1000, 400]$ (data range 2 in model units), GFLOPs per generated image
# counting every sampling step, seconds per image on this run's device.
#
# ## Segmentation Dice per class

# %%
ch.segmentation_table(metrics)

# %% [markdown]
# Chapter 5's table: Dice per class and augmentation arm, mean [95 % CI] over training seeds.
#
# ## Training and sampling cost

# %%
ch.cost_table(runs_root)

# %% [markdown]
# ## Provenance of this run

# %%
ch.provenance_table(runs_root)
