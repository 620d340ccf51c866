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
# run (`runs/<profile>/*/metrics.csv` and their cost records) or of the archived reference run; nothing is
# recomputed or typed. The poster's numbers stand beside ours as *reported* rows. Our data (a phantom and two
# real CT volumes at the profile's size) and budget differ from the poster's (undisclosed data, 256x256, days of
# GPU training), so absolute values are not expected to match; the verdicts test the poster's *comparisons*.
#
# **The verdict rule** (one function, `difflung.judging.stats.verdict`, used by every chapter): a claim "a beats b" is
# tested on paired differences a - b with the right unit (test patients for image quality: each slice's score
# averaged over sampling seeds and slices into one value per test patient and training seed, then a t-statistic
# whose error adds the spread over test patients and over each generator's training seeds; training seeds for
# segmentation: a t-statistic
# only from at least {glue:text}`min_seeds` seeds). Each claim's interval and its two-sided t-test come from the same
# t-statistic, so they cannot disagree. The p-values are adjusted by Holm's method within each family of claims
# (the poster's; LeFusion's ordering beyond it; the controls without a generator), over the claims that were tested.
# A claim is
# - **not measurable** when an instrument failed (the judge below its floor), the class lost its HU signature at
#   this image size or is absent from the test truth, Diff-Lung never learned its masks (judge Dice ratio on
#   lung below 0.8), or a generator failed its capacity check (it could not redraw a handful of training masks: a
#   defect, not a result) -- the reason is given; a generator that missed its convergence criteria, or was still
#   improving when its training reached the cap, is still compared, with the note beside it;
# - **reproduced** when the adjusted p is below {glue:text}`alpha` with the effect on the claimed side of 0 (of
#   $-$margin for the non-inferiority claim, whose margin `difflung.judging.reported` declares with its reason; the
#   poster's healthy-lung gain is tested beside it as a superiority claim);
# - **contradicted** when the adjusted p is below {glue:text}`alpha` with the effect on the other side;
# - **inconclusive** otherwise.
# Each verdict carries a magnitude note: *as reported* when our interval includes the poster's number, *smaller* or
# *larger than reported* when it lies wholly below or above it.

# %% tags=["parameters", "remove-input"]
profile = "smoke"
seed = 0
run_dir = "runs/smoke/07_results"
runs_root = "runs/smoke"

# %% tags=["remove-input"]
from IPython.display import Markdown, display

from difflung.chapters import results as ch
from difflung.plots import table

ch.glue_facts(ch.page_facts())

# %% [markdown]
# ## At a glance
#
# Each claim of the poster: what it reported, what we measured with its interval, the verdict, and why.

# %% tags=["remove-input"]
claims = ch.judge(runs_root, run_dir, seed=seed)
ref, ref_claims = ch.reference()
glance_text, glance = ch.glance_source(ref, claims, ref_claims, profile)
display(Markdown(glance_text))
table(ch.table_at_a_glance(glance))

# %% tags=["hide-input"] mystnb={"figure": {"caption": "The claims of the table above as effects: ours with its 95 % interval (dots; grey: not measurable) against the poster's reported difference (open diamonds), one panel per scale; where a dot's interval crosses 0 the run cannot tell. Made by `difflung.chapters.results.figure_claims`.", "name": "ch7-glance"}}
ch.figure_claims(glance, run_dir, seed=seed, name="claims_at_a_glance.png")

# %% [markdown]
# ## The poster's claims in this run

# %% tags=["hide-input"]
shown, notes = ch.table_claims(claims)
display(table(shown), Markdown(notes))

# %% tags=["remove-input"]
Markdown(ch.summary_markdown(claims, profile))

# %% tags=["hide-input"] mystnb={"figure": {"caption": "This run's claims as effects, as in the figure at the top: ours with its 95 % interval (dots; grey: not measurable) against the poster's reported difference (open diamonds), one panel per scale. Made by `difflung.chapters.results.figure_claims`.", "name": "ch7-claims"}}
ch.figure_claims(claims, run_dir, seed=seed)

# %% [markdown]
# ## The archived reference run
#
# A run that can test the paper takes longer than a continuous-integration build. Its numbers are archived in
# `reference/<profile>/` (CSV and JSON with provenance; `python -m difflung archive`) and shown here, so that every
# build of the book carries a result. Its claims were judged by the same function when it ran.

# %% tags=["remove-input"]
display(Markdown(ch.reference_markdown(ref)))
if ref_claims is not None:
    ref_shown, ref_notes = ch.table_claims(ref_claims)
    display(table(ref_shown), Markdown(ref_notes))

# %% [markdown]
# ## Image quality and cost (chapter 4)
#
# PSNR and SSIM on {glue:md}`model_window` (data range {glue:text}`data_range:g` in model units), mean over test slices
# with a patient-level {glue:md}`confidence` interval; GFLOPs per generated image counting every sampling step; seconds
# per image on this run's device. The poster measured at 256x256 on a GPU; our cost numbers are at the profile's size on
# this run's device.

# %% tags=["hide-input"]
table(ch.table_image_quality(runs_root, seed=seed))

# %% tags=["hide-input"]
table(ch.table_cost_ratios(runs_root))

# %% [markdown]
# The poster's cost ratios beside ours, with no threshold: the poster states none.
#
# ## Segmentation Dice per class (chapter 5)
#
# Mean over training seeds; an interval only where there are at least {glue:text}`min_seeds` seeds.

# %% tags=["hide-input"]
table(ch.table_segmentation(runs_root, seed=seed))

# %% [markdown]
# ## Provenance of this run

# %% tags=["hide-input"]
table(ch.provenance_table(runs_root))

# %% tags=["remove-input"]
ch.scope(claims, profile, ref)
