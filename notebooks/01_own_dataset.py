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
# # Data preparation: your dataset
#
# This run uses a dataset prepared from labelled CT with `python -m difflung prepare`, not the phantom: the page
# stands in for chapter 1 whenever the run is made with `--set dataset=FOLDER` ([your own data](../own_data.md)).
# Every later chapter trains and judges on this dataset's patients, split as `prepare` split them, with the same
# models, criteria and verdicts as the phantom run.

# %% tags=["parameters", "remove-input"]
profile = "smoke"
seed = 0
run_dir = "runs/smoke/01_data_preparation"
runs_root = "runs/smoke"
size = 32
dataset = ""
mask_boost = {"emphysema": 0.06, "fibrosis": 0.08}
n_synthetic_masks = 24

# %% tags=["remove-input"]
from difflung.chapters import data_preparation as ch

ds = ch.own_adopt(dataset, run_dir, size=size)
ch.glue_facts(ch.own_facts(ds, run_dir))

# %% [markdown]
# ## The dataset
#
# Dataset {glue:md}`dataset_name` (sha256 of its manifest, which holds the checksum of every file:
# {glue:md}`dataset_sha`): {glue:text}`n_patients` patients, {glue:text}`n_slices_total` slices with lung at
# {glue:text}`size` pixels per side. No patient appears in two splits.

# %% tags=["hide-input"]
ch.own_table_splits(ds)

# %% [markdown]
# Per patient, as `prepare` recorded it (spacing of the source volume; the slices were resized to the run's size):

# %% tags=["hide-input"]
ch.own_table_patients(ds)

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Apex, middle and base slices of one training patient of the run's dataset at the run's size, without (top) and with (bottom) its label overlay; the colour bar gives the display window in HU. Made by `difflung.chapters.data_preparation.own_figure_levels`.", "name": "ch1-own-levels"}}
ch.own_figure_levels(ds, run_dir, seed=seed)

# %% [markdown]
# ## The label scheme
#
# The dataset's labels were mapped onto the project's classes by a class map when it was prepared:

# %% tags=["hide-input"]
ch.table_labels()

# %% [markdown]
# ## Does each class hold its signature at this size?
#
# A class is judged on generated images only if the images it was trained on still show what defines it: for
# emphysema a sizeable share of its pixels below {glue:md}`laa_hu` HU, for the other pathologies a mean inside the
# literature range (`difflung.judging.instruments.hu_signature`). The check runs on the training slices at the
# run's size; later chapters report a class that fails it as *not measurable*.

# %% tags=["hide-input"]
signature = ch.own_hu_signature(ds, run_dir)
ch.table_signature(signature, size)

# %% [markdown]
# ## Class frequencies
#
# CBMAT drops class $i$ from the condition with probability $1 - f_i$, $f_i$ being the class's share of the
# non-background pixels of the training split; {numref}`ch1-own-frequencies` shows it, and each lung-field class's
# share of the lung field, per split.

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Per split, left: the f_i CBMAT uses (each class's share of the non-background pixels); right: each lung-field class's share of the lung field. Log scale. Made by `difflung.chapters.data_preparation.figure_frequencies`.", "name": "ch1-own-frequencies"}}
freq = ch.frequency_table(ds)
ch.figure_frequencies(freq, run_dir, seed=seed)

# %% tags=["hide-input"]
ch.table_frequencies(freq, "f_cbmat")

# %% [markdown]
# ## Mask synthesis for rare classes
#
# New masks for the rare classes (lesions rotated, copied and dilated into healthy lung only, up to a target share
# of the lung field), as in the phantom run; they feed the ablation study and the segmentation experiment.

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Training masks (top) and the synthetic masks built on them (bottom). Made by `difflung.chapters.data_preparation.figure_mask_synthesis`.", "name": "ch1-own-mask-synthesis"}}
fig, synth_report, synthesis = ch.own_mask_synthesis(ds, run_dir, boost=mask_boost, seed=seed,
                                                    n_masks=n_synthetic_masks)
fig

# %% tags=["hide-input"]
ch.table_mask_synthesis(synth_report)

# %% tags=["remove-input"]
metrics = ch.own_write_metrics(run_dir, ds, signature, seed=seed)

# %% tags=["remove-input"]
ch.own_scope(profile, ds, signature)
