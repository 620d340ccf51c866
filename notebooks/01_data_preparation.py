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
# procedural chest-CT phantom whose pathology frequencies we control, shows what the phantom looks like, compares
# its intensities with the CT literature, checks which classes keep their intensity signature at the run's image
# size, and reports the class frequencies $f_i$ that CBMAT uses.

# %% tags=["parameters", "remove-input"]
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

# %% tags=["remove-input"]
from IPython.display import display

from difflung.chapters import data_preparation as ch

ch.glue_facts(ch.page_facts(size=size, phantom_size=phantom_size))

# %% [markdown]
# ## The label scheme
#
# One scheme serves the whole project (`difflung.labels`). A dataset uses a subset of it, recorded in its manifest;
# models build their mask channels from that subset.

# %% tags=["hide-input"]
ch.table_labels()

# %% [markdown]
# ## The phantom cohort
#
# `difflung.phantom` draws each patient's anatomy (body with fat and muscle, spine, ribs, sternum, heart, aorta,
# two lungs with a tapering vessel tree, trachea and main bronchi) and pathology (emphysema with upper-zone
# predominance, ground-glass opacity, subpleural and basal fibrosis with honeycombing) from an explicit
# `numpy.random.Generator`, adds correlated CT noise and partial-volume blur, and stacks slices from apex to base.
# `difflung.data.phantom_dataset.build_phantom` draws the slices at {glue:text}`phantom_size` pixels per side,
# resizes them to the profile's {glue:text}`size`, windows them for the model, keeps slices with lung, splits by
# patient and writes the dataset artifact.

# %% tags=["hide-input"]
dataset, volumes = ch.build_phantom(run_dir, n_patients=n_patients, slices_per_patient=slices_per_patient,
                                    phantom_size=phantom_size, size=size, seed=seed)
ch.table_splits(dataset)

# %% tags=["remove-input"]
ch.glue_facts(ch.cohort_facts(dataset, n_patients=n_patients))

# %% [markdown]
# {glue:text}`n_patients` patients gave {glue:text}`n_slices_total` slices with lung; no patient appears in two
# splits. {numref}`ch1-phantom-levels` shows one phantom patient at three levels, in the {glue:md}`lung_window`.

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Apex, middle and base slices of one phantom patient (the phantom is its own truth), without (top) and with (bottom) its label overlay; the colour bar gives the display window in HU. Made by `difflung.chapters.data_preparation.figure_levels`.", "name": "ch1-phantom-levels"}}
ch.figure_levels(volumes, run_dir, seed=seed)

# %% [markdown]
# ## Intensities against the literature
#
# {numref}`ch1-hu-histograms` sets each class's phantom intensities against the range the CT literature reports.

# %% tags=["hide-input"] mystnb={"figure": {"caption": "HU histograms per class of the phantom at its full resolution; the grey band is the literature range of the class. Made by `difflung.chapters.data_preparation.figure_hu_histograms`.", "name": "ch1-hu-histograms"}}
ch.figure_hu_histograms(volumes, run_dir, seed=seed)

# %% tags=["hide-input"]
checks = ch.hu_checks(volumes)
ch.table_hu_checks(checks)

# %% tags=["remove-input"]
ch.glue_facts(checks)

# %% [markdown]
# Healthy phantom lung has a mean of {glue:text}`healthy_lung_mean_hu:.0f` HU (SD {glue:text}`healthy_lung_sd_hu:.0f`)
# and {glue:text}`healthy_lung_below_950:.2%` of its pixels below {glue:md}`laa_hu` HU;
# {glue:text}`emphysema_below_950:.1%` of emphysema pixels are below {glue:md}`laa_hu` HU, the LAA-950 criterion.
#
# ## Does each class keep its signature at this size?
#
# Training happens at {glue:text}`size` pixels per side, not at the phantom's {glue:text}`phantom_size`. Resizing
# averages neighbouring pixels, and a small dark emphysema bulla averaged with the lung around it is no longer darker
# than {glue:md}`laa_hu` HU. The check below (`difflung.judging.instruments.hu_signature`) asks, per class, whether the
# intensity signature that defines it survives: for emphysema a sizeable share of its pixels below {glue:md}`laa_hu` HU
# (and more than healthy lung), for the other pathologies a mean inside the literature range. It runs on the training
# split, in HU, once at the phantom's resolution and once after the resize.

# %% tags=["hide-input"]
signature = ch.hu_signature(dataset, volumes, run_dir)
ch.table_signature(signature, phantom_size)

# %% tags=["remove-input"]
ch.glue_facts(ch.signature_facts(signature))

# %% [markdown]
# At {glue:text}`size` pixels, {glue:md}`sig_lost` {glue:md}`sig_verb` the signature. The result is saved as
# `hu_signature.json` in this chapter's run folder; later chapters read it
# (`difflung.judging.instruments.read_signature`) and report such a class as *not measurable at this size*, since no
# model trained on these images can be asked to reproduce a texture the images no longer hold.
#
# ## Class frequencies
#
# Two different frequencies matter, and the first is the one CBMAT uses:
#
# - $f_i$ **for CBMAT** (`difflung.diffusion.ablation.ablation_frequencies`): class $i$'s share of all
#   non-background pixels of the training split (body, lung, airway and pathology together). CBMAT drops class $i$
#   from the condition with probability $1 - f_i$, annealed over training;
# - the **in-lung fraction**: a lung-field class's share of the lung field, the number a radiologist would quote
#   (and the one mask synthesis below aims at).
#
# {numref}`ch1-frequencies` shows both per split.

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Per split, left: the f_i CBMAT uses (each class's share of the non-background pixels); right: each lung-field class's share of the lung field. Log scale. Made by `difflung.chapters.data_preparation.figure_frequencies`.", "name": "ch1-frequencies"}}
freq = ch.frequency_table(dataset)
ch.figure_frequencies(freq, run_dir, seed=seed)

# %% [markdown]
# The $f_i$ CBMAT uses, per split (share of non-background pixels):

# %% tags=["hide-input"]
ch.table_frequencies(freq, "f_cbmat")

# %% [markdown]
# In-lung fractions, per split (share of the lung field; not what CBMAT uses):

# %% tags=["hide-input"]
ch.table_frequencies(freq, "f_in_lung")

# %% [markdown]
# ## Real chest CT
#
# A phantom that only ever meets itself proves little. The pyradiomics source archive ships two real chest CT
# volumes with one lesion label each (`lung1`: a nodule; `lung2`: a tumour, and an unlabelled hazy opacity in the
# left lung). `python -m difflung fetch-data` downloads the archive from PyPI into a local cache, checks its sha256
# and extracts them; nothing of it is in this repository. `difflung.data.ct_anatomy` segments body, lungs and airway
# classically; the lesion labels map onto project classes through a class map (here every lesion is a `nodule`).
# Neither volume has labelled emphysema, fibrosis or ground-glass opacity.

# %% tags=["hide-input"]
real = ch.open_real_ct(real_ct)  # None when the profile skips the real CT: each section below shows nothing
display(*ch.real_ct_tables(real))

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Real CT (pyradiomics lung1, lung2) beside the phantom (truth) at apex, middle and base of each one's own lung extent; the colour bar gives the display window in HU. Made by `difflung.chapters.data_preparation.figure_real_vs_phantom`.", "name": "ch1-real-vs-phantom"}}
ch.figure_real_vs_phantom(real, volumes, run_dir, seed=seed)

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Classical anatomy (body outline, lungs, airway) and the files' own lesion label on the real CT. Made by `difflung.chapters.data_preparation.figure_anatomy_overlays`.", "name": "ch1-real-anatomy"}}
ch.figure_anatomy_overlays(real, run_dir, seed=seed)

# %% [markdown]
# ### The classical anatomy against the phantom's truth
#
# The same segmentation run on the phantom, whose true labels we know:

# %% tags=["hide-input"]
agreement = ch.anatomy_agreement(volumes)
ch.table_agreement(agreement)

# %% tags=["remove-input"]
ch.glue_facts(ch.agreement_facts(agreement))

# %% [markdown]
# Dice of the extracted lung field against the phantom's own lungs: mean {glue:text}`lung_dice_mean:.3f`,
# lowest {glue:text}`lung_dice_min:.3f`.
#
# ### Is the phantom's lung like real lung?

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Healthy-lung HU of the real CT against the phantom, literature band shaded. Made by `difflung.chapters.data_preparation.figure_real_vs_phantom_hu`.", "name": "ch1-real-vs-phantom-hu"}}
hu = ch.lung_hu(real, volumes, seed=seed)
ch.figure_real_vs_phantom_hu(hu, run_dir, seed=seed)

# %% tags=["hide-input"]
ch.table_lung_hu(hu)

# %% [markdown]
# Where the two disagree, the table says by how much; the phantom's parameters (`difflung.phantom.PhantomConfig`)
# are where to change it.
#
# ### Your own data: the worked example
#
# The same preparation as the phantom, from the command line, on the real CT. Users point it at their own
# NIfTI/NRRD/MHA volumes with label maps, or DICOM series, with a YAML class map (`examples/classmaps/`).

# %% tags=["hide-input"]
display(*ch.prepare_real(real, run_dir, size=size, seed=seed))

# %% [markdown]
# ## Mask synthesis for rare classes
#
# Diff-Lung makes new masks for rare classes by rotating, copying and dilating lesions, only inside healthy lung.
# `difflung.data.masksynth.synthesize_masks` does this on the training masks, up to a target share of the lung field
# per class and never beyond it: a lesion that would carry a class past its target is not pasted, and only
# training slices already at or below every target serve as a base, so a new mask may end below its target but
# never above it. Anatomy (body, airway, lung outline) is never changed. These masks feed the ablation study and
# the segmentation experiment; {numref}`ch1-mask-synthesis` shows four of them.

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Training masks (top) and the synthetic masks built on them (bottom). Made by `difflung.chapters.data_preparation.figure_mask_synthesis`.", "name": "ch1-mask-synthesis"}}
fig, synth_report, synthesis = ch.figure_mask_synthesis(dataset.split("train").labels, run_dir, boost=mask_boost,
                                                        seed=seed, n_masks=n_synthetic_masks)
fig

# %% tags=["hide-input"]
ch.table_mask_synthesis(synth_report)

# %% tags=["remove-input"]
metrics = ch.write_chapter_metrics(run_dir, dataset, checks, signature=signature, agreement=agreement, real=real,
                                   hu=hu, seed=seed)

# %% tags=["remove-input"]
ch.scope(profile, dataset, signature, real_ct=real_ct)
