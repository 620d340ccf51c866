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
# # Data preparation
#
# Every later chapter trains and evaluates on the dataset artifact written here. This chapter builds it from a
# procedural chest-CT phantom whose pathology frequencies we control, shows what the phantom looks like and
# how its intensities compare with the CT literature, and reports the class frequencies $f_i$ that CBMAT uses.

# %% tags=["parameters"]
profile = "smoke"
seed = 0
run_dir = "runs/smoke/01_data_preparation"
runs_root = "runs/smoke"
size = 32
device = "auto"
n_patients = 10
slices_per_patient = 8
phantom_size = 128

# %%
from myst_nb import glue

from difflung import labels
from difflung.chapters import data_preparation as ch

# %% [markdown]
# ## The label scheme
#
# One scheme serves the whole project (`difflung.labels`). A dataset uses a subset of it, recorded in its manifest;
# models build their mask channels from that subset.

# %%
labels.legend_table()

# %% [markdown]
# ## The phantom cohort
#
# `difflung.phantom` draws each patient's anatomy (body with fat and muscle, spine, ribs, sternum, heart, aorta,
# two lungs with a tapering vessel tree, trachea and main bronchi) and pathology (emphysema with upper-zone
# predominance, ground-glass opacity, subpleural and basal fibrosis with honeycombing) from an explicit
# `numpy.random.Generator`, adds correlated CT noise and partial-volume blur, and stacks slices from apex to base.
# `difflung.chapters.data_preparation.build_phantom` windows the slices to $[-1000, 400]$ HU, resizes them to the
# profile's size, keeps slices with lung, splits by patient and writes the dataset artifact.

# %%
dataset, volumes = ch.build_phantom(run_dir, n_patients=n_patients, slices_per_patient=slices_per_patient,
                                    phantom_size=phantom_size, size=size, seed=seed)
glue("n_patients", n_patients, display=False)
glue("n_slices_total", sum(dataset.manifest["splits"][s]["n_slices"] for s in ("train", "val", "test")),
     display=False)
ch.split_summary(dataset)

# %% [markdown]
# {glue:text}`n_patients` patients gave {glue:text}`n_slices_total` slices with lung; no patient appears in two
# splits.

# %%
ch.figure_levels(volumes, run_dir, seed=seed)

# %% [markdown]
# *Figure: apex, middle and base slices of one phantom patient, lung window; made by
# `difflung.chapters.data_preparation.figure_levels`.*
#
# ## Intensities against the literature

# %%
samples = ch.hu_samples(volumes, seed=seed)
ch.figure_hu_histograms(samples, run_dir, seed=seed)

# %% [markdown]
# *Figure: HU histograms per class of the phantom, grey band the literature range; made by
# `difflung.chapters.data_preparation.figure_hu_histograms`.*

# %%
checks = ch.hu_checks(volumes)
for k, v in checks.items():
    glue(k, v, display=False)
checks

# %% [markdown]
# Healthy phantom lung has a mean of {glue:text}`healthy_lung_mean_hu:.0f` HU (SD {glue:text}`healthy_lung_sd_hu:.0f`)
# and {glue:text}`healthy_lung_below_950:.2%` of its pixels below $-950$ HU (healthy human lungs: about 0.2 %);
# {glue:text}`emphysema_below_950:.1%` of emphysema pixels are below $-950$ HU, the LAA-950 criterion.
#
# ## Class frequencies
#
# CBMAT drops class $i$ from the condition with probability $1 - f_i$; these are the $f_i$ of each split,
# as fractions of the lung field.

# %%
freq = ch.frequency_table(dataset)
ch.figure_frequencies(freq, run_dir, seed=seed)

# %%
freq.pivot(index="class", columns="split", values="f_in_lung").style.format("{:.4f}")

# %% [markdown]
# *Figure: class frequency within the lung field per split; made by
# `difflung.chapters.data_preparation.figure_frequencies`.*

# %%
metrics = ch.write_chapter_metrics(run_dir, dataset, checks, seed=seed)
print(f"wrote {len(metrics)} rows to {run_dir}/metrics.csv")
