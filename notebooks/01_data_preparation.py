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
real_ct = True
mask_boost = {"emphysema": 0.06, "fibrosis": 0.08}
n_synthetic_masks = 24

# %%
from myst_nb import glue

from difflung import labels
from difflung.chapters import data_preparation as ch
from difflung.chapters import real_data as real

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
splits = ch.split_summary(dataset)
glue("n_slices_total", int(splits["slices"].sum()), display=False)
splits

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

# %% [markdown]
# ## Real chest CT
#
# A phantom that only ever meets itself proves little. The pyradiomics 3.0.1 source archive ships two real chest
# CT volumes with a lesion label each (`lung1`: a 1.4 ml nodule; `lung2`: a 48 ml tumour and an unlabelled hazy
# opacity in the left lung). `python -m difflung fetch-data` downloads the archive from PyPI into a local cache,
# checks its sha256 and extracts them; nothing of it is in this repository. `difflung.anatomy` segments body, lungs
# and airway classically; the lesion labels map onto project classes through a class map (here every lesion is a
# `nodule`).

# %%
if real_ct:
    cases = real.load_real_ct(classes="nodule")
    print(real.credit())
    display(real.lung_volume_table(cases))

# %%
if real_ct:
    display(real.figure_real_vs_phantom(cases, volumes, run_dir, seed=seed))

# %% [markdown]
# *Figure: real CT (pyradiomics lung1, lung2) beside the phantom at apex, middle and base of each one's own lung
# extent, lung window; made by `difflung.chapters.real_data.figure_real_vs_phantom`.*

# %%
if real_ct:
    display(real.figure_anatomy_overlays(cases, run_dir, seed=seed))

# %% [markdown]
# *Figure: classical anatomy (body, lungs, airway) and the mapped lesion label on the real CT; made by
# `difflung.chapters.real_data.figure_anatomy_overlays`.*
#
# ### The classical anatomy against the phantom's truth
#
# The same segmentation run on the phantom, whose true labels we know:

# %%
agreement = real.phantom_anatomy_agreement(volumes[:4])
glue("lung_dice_min", float(agreement["lung_dice_vs_truth"].min()), display=False)
glue("lung_dice_mean", float(agreement["lung_dice_vs_truth"].mean()), display=False)
agreement

# %% [markdown]
# Dice of the extracted lung field against the phantom's own lungs: mean {glue:text}`lung_dice_mean:.3f`,
# lowest {glue:text}`lung_dice_min:.3f`.
#
# ### Is the phantom's lung like real lung?

# %%
if real_ct:
    hu = real.hu_lung_samples(cases, volumes, seed=seed)
    hu_stats = real.hu_lung_stats(hu)
    display(real.figure_real_vs_phantom_hu(hu, run_dir, seed=seed))
    display(hu_stats)

# %% [markdown]
# *Figure: healthy-lung HU of real CT against the phantom, literature band shaded; made by
# `difflung.chapters.real_data.figure_real_vs_phantom_hu`.* Where the two disagree, the table says by how much;
# the phantom's parameters (`difflung.phantom.PhantomConfig`) are where to change it.
#
# ### Your own data: the worked example
#
# The same preparation as the phantom, from the command line, on the real CT. Users point it at their own
# NIfTI/NRRD/MHA volumes with label maps, or DICOM series, with a YAML class map (`examples/classmaps/`).

# %%
if real_ct:
    real_dataset, real_table, command = real.prepare_example(run_dir, size=size, seed=seed)
    print(command)
    display(real_table)

# %% [markdown]
# ## Mask synthesis for rare classes
#
# Diff-Lung makes new masks for rare classes by rotating, copying and dilating lesions, only inside healthy lung.
# `difflung.masksynth.synthesize_masks` does this on the training masks, up to a target share of the lung field
# per class; anatomy (body, airway, lung outline) is never changed. These masks feed the ablation study and the
# segmentation experiment.

# %%
fig, synth_report, synthesis = real.mask_synthesis_example(dataset.split("train").labels, run_dir, boost=mask_boost,
                                                           seed=seed, n_masks=n_synthetic_masks)
display(fig)
synth_report

# %% [markdown]
# *Figure: training masks (top) and synthetic masks made from them (bottom); made by
# `difflung.chapters.real_data.mask_synthesis_example`.*

# %%
extra = real.real_metrics_rows(real.lung_volume_table(cases) if real_ct else None, agreement,
                              hu_stats if real_ct else None, seed=seed)
metrics = ch.write_chapter_metrics(run_dir, dataset, checks, seed=seed, extra_rows=extra)
print(f"wrote {len(metrics)} rows to {run_dir}/metrics.csv")
