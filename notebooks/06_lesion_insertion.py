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
# # Lesion insertion into real CT
#
# The chapters so far generate whole slices from masks. What users of augmentation ask for most is different:
# take a real chest CT, choose where emphysema, fibrosis or ground-glass opacity (GGO) should appear, and get back
# the same scan with a lesion there and every other voxel untouched. This chapter does that with
# `python -m difflung insert`'s library (`difflung.insertion.insert`) on the real pyradiomics CT: a lesion-focused patch
# model, trained on phantom and real `lung1` patches, paints lesions into `lung2`, a scan it never saw in training.
# Every check below is computed from the files the insertion wrote.

# %% tags=["parameters", "remove-input"]
profile = "smoke"
seed = 0
run_dir = "runs/smoke/06_lesion_insertion"
runs_root = "runs/smoke"
device = "auto"
per_class = 2
slices_per_patient = 6
fraction = 0.1
patch_size = 64
per_slice = 4
preset = "small"
steps = 60
batch_size = 8
lr = 0.002
warmup = 20
lesion_weight = 5.0
lesion_classes = ["emphysema", "fibrosis", "ggo"]
target_ml = 3.0
insert_steps = 10
jump_length = 5
jump_n_sample = 1
margin_mm = 2.0
patch_judge_steps = 0
truth_patients = 1  # held-out phantom patients per class for the ground-truth comparison

# %% tags=["remove-input"]
from difflung.chapters import lesion_insertion as ch
from difflung.plots import table
from difflung.progress import quiet_notebook_tqdm

quiet_notebook_tqdm()
ch.glue_facts(ch.page_facts(patch_size=patch_size, per_class=per_class, steps=steps, target_ml=target_ml,
                            margin_mm=margin_mm))

# %% [markdown]
# ## The insertion model
#
# A whole-slice model at the profile's image size cannot paint texture into a 512 x 512 scan of sub-millimetre pixels.
# The insertion model works on patches of {glue:text}`patch_size` pixels at {glue:text}`patch_mm` mm, whatever the
# scan's own pixel size (`difflung.insertion.patches`): windows of the scan are resampled onto that grid, painted and
# resampled back only where the lesion goes. It is trained with the ordinary training shell
# (`difflung.insertion.patches.train_patch_model`) on patches of {glue:text}`n_phantom` phantom patients, drawn so that
# each lesion class is present (they teach the pathology), and of the real `lung1` scan (healthy lung, vessels and
# airway: the background), with the loss weighted towards lesion pixels (LeFusion's lesion-focused loss), for
# {glue:text}`train_steps` steps. Train on `lung1`, insert into `lung2`: no in-sample leakage.

# %% tags=["hide-input"]
result, phantom, real, train_seconds = ch.train_model(
    run_dir, per_class=per_class, slices_per_patient=slices_per_patient, fraction=fraction, patch_size=patch_size,
    per_slice=per_slice, preset=preset, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
    lesion_weight=lesion_weight, seed=seed, device=device)

# %% [markdown]
# ## Placing and painting lesions
#
# For each class, lesion shapes of the phantom, drawn at `lung2`'s pixel size, are pasted into its healthy lung (the
# `--synthesize` placement of `difflung.insertion.insert`, on the lung field `difflung.data.ct_anatomy` extracts) until
# they add up to {glue:text}`target_ml` ml. The edit region is the lesions dilated in-plane by {glue:text}`margin_mm` mm
# within the lung; RePaint (`difflung.diffusion.inpaint`) regenerates only that region, with the real scan
# forward-diffused as the known part at every step, and the final paste copies every other voxel from the input.

# %% tags=["hide-input"]
summary, ins = ch.insert_all(run_dir, result.model_dir, classes=lesion_classes, target_ml=target_ml,
                             insert_steps=insert_steps, jump_length=jump_length, jump_n_sample=jump_n_sample,
                             margin_mm=margin_mm, seed=seed, device=device)

# %% tags=["remove-input"]
ch.glue_facts(ch.insertion_facts(summary))

# %% [markdown]
# {glue:text}`n_lesions` lesions were inserted on {glue:text}`n_slices_edited` slices of `lung2`.
# {numref}`ch6-insertions` shows, for each class, the slice holding most of it, in the {glue:md}`lung_window`.

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Lesions inserted into the real lung2 CT, one row per class on the slice holding most of it: the input, the edited scan, their difference (the edit region; zero everywhere else) and the inserted lesion labels. Grey bar: HU in the lung window; the difference has its own bar. Made by `difflung.chapters.lesion_insertion.figure_insertions`.", "name": "ch6-insertions"}}
ch.figure_insertions(ins, run_dir, seed=seed)

# %% [markdown]
# Each placed lesion is a 3D shape of the phantom, so it spans the slices its size implies. {numref}`ch6-coronal`
# cuts the scan the other way: for each class, the coronal plane through most of its lesions, every slice drawn as
# tall as the slice spacing, so a lesion one slice thick would show as a thin streak.

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Coronal view of the inserted lung2 CT, one row per class on the coronal plane (row of the volume) through most of its lesions: the input, the edited scan and the inserted lesion labels, with the slice spacing as the aspect. Grey bar: HU in the lung window. Made by `difflung.chapters.lesion_insertion.figure_coronal`.", "name": "ch6-coronal"}}
ch.figure_coronal(ins, run_dir, seed=seed)

# %% [markdown]
# ## Checks
#
# Computed from the written files (`difflung.insertion.checks`), per inserted class:
#
# - **outside differences**: voxels outside the edit region (recomputed from the written lesion labels and the
#   scan's own anatomy) whose value differs from the input's, bit for bit; it must be 0;
# - **seam score**: mean gradient magnitude (HU/mm) on the edit region's boundary divided by that in healthy lung
#   of the same slices, on the edited scan (*after*) and on the input at the same pixels (*before*); an after well
#   above before is a visible seam;
# - **HU W1**: the Wasserstein-1 distance (HU) between the inserted lesion voxels and the phantom's lesions of the
#   same class, after insertion and, as the reference, before it (the same voxels were healthy lung); the
#   phantom's intensities follow the CT literature (chapter 1).

# %% tags=["hide-input"]
checks = ch.checks(ins, phantom, seed=seed)
ch.table_checks(checks)

# %% tags=["remove-input"]
ch.glue_facts(ch.check_facts(checks))


# %% [markdown]
# {glue:text}`outside` voxels outside the edit region differ from the input. The inserted lesions are closer to
# the phantom's lesion intensities than the healthy lung they replaced for {glue:text}`n_w1_better` of
# {glue:text}`n_classes` classes.
#
# ### Both real scans
#
# The same placement, model and seed on pyradiomics' other scan, `lung1`, whose patches trained the model (so it is
# not held out, and says less), beside `lung2`: per scan and class, what was asked for against what was painted
# (the lesions' volume, the volume painted within the class's HU range, the mean HU inside), how many slices a
# lesion spans, how continuous its texture is from slice to slice, and the voxels changed outside the edit region.

# %% tags=["hide-input"]
scanned = ch.per_scan({"lung2": (summary, ins), "lung1": ch.insert_all(
    run_dir, result.model_dir, classes=lesion_classes, target_ml=target_ml, insert_steps=insert_steps,
    jump_length=jump_length, jump_n_sample=jump_n_sample, margin_mm=margin_mm, seed=seed, scan="lung1",
    device=device)})
ch.table_scans(scanned)

# %% [markdown]
# ### Does a segmenter find the inserted lesions?
#
# The run's judge segments whole slices at the profile's image size, where a lesion of a few ml covers a handful
# of pixels. The judge for this chapter is trained the same way (`difflung.judging.scoring.judge`) on the patch dataset
# and reads windows of the patch grid centred on each inserted lesion, of the edited scan (*after*) and of the
# input at the same places (*before*: the Dice it reaches without any insertion). Its own Dice on phantom test
# patches says whether it reads a class reliably enough to judge it (the project's judge floor).

# %% tags=["hide-input"]
judged = ch.judge(run_dir, ins, steps=patch_judge_steps, seed=seed, device=device)
ch.show_judge(judged)

# %% [markdown]
# ### Against ground truth
#
# The phantom can render one patient with and without its lesions: the same anatomy, vessels and noise voxel for
# voxel (`difflung.insertion.truth`). For each class, {glue:text}`truth_patients` held-out phantom patient(s) (drawn
# from streams no training patient uses, each with its own sampling seed), at the patch spacing and `lung2`'s slice
# spacing, are cut to the few slices holding most of the class; its lesion labels are inserted into the lesion-free render by this chapter's model and compared with the
# render that has them, inside the lesions: HU W1 to truth (and of the lesion-free render, the do-nothing
# reference), mean HU, LAA-950 (share below -950 HU), texture spread and z-continuity. The same region repainted
# with no lesion label (the null insertion) gives the seam score's floor; the truth render's own seam is the
# natural lesion edge, and an insertion's seam should lie between them.

# %% tags=["hide-input"]
truthed = ch.truth(result.model_dir, classes=lesion_classes, dz_mm=ins.spacing[0], insert_steps=insert_steps,
                   jump_length=jump_length, jump_n_sample=jump_n_sample, margin_mm=margin_mm, seed=seed,
                   patients=truth_patients, device=device, study_dir=f"{run_dir}/reader_study")
ch.table_truth(truthed)

# %% tags=["remove-input"]
ch.glue_facts(ch.truth_facts(truthed))

# %% [markdown]
# ### A reader study of these insertions
#
# Whether a radiologist can tell an inserted lesion from a rendered one is a reading, not a computation. The chapter
# builds the kit: lesion-centred crops of the same slices from the rendered truth and from the insertion, windowed
# alike and shuffled into one offline page (`reader_study.html` in this chapter's run folder, with its key apart in
# `reader_study_key.json`; `python -m difflung reader-study --score answers.csv --key reader_study_key.json` scores
# the readers' exported answers with binomial intervals).

# %% tags=["hide-input"]
ch.table_reader_study(ch.reader_study(run_dir, seed=seed))

# %% [markdown]
# The targets an insertion should meet on these patients (means over them): HU W1 to truth at most 30 HU is met for
# {glue:text}`truth_w1_met` (worst class {glue:text}`truth_w1_worst:.3g` HU); inserted emphysema's LAA-950 is
# {glue:text}`truth_laa_gap:.3g` points from the truth's (target: within 5). The seam score lies between the null
# insertion and the natural edge, for every patient of the class, for {glue:text}`truth_seam_in_band`.

# %% [markdown]
# ### Is the texture continuous in z?
#
# Painting conditions each slice on what is already painted on the slice below and starts from noise correlated
# across slices (`difflung.insertion.zpaint`). The check is the Pearson correlation of the texture (HU minus its
# in-plane local mean) between adjacent slices over voxel pairs inside the lesions
# (`difflung.insertion.checks.z_continuity`): 1 is the same texture on every slice, 0 independent slices. Beside it,
# the same statistic on the phantom's own lesions of the class, on the real `lung1` lung and on `lung2`'s own lung
# before insertion, and on the ground-truth renders above (the phantom's lesions at `lung2`'s slice spacing); the
# target (issue 26) is the inserted lesions within 20 % of the phantom's own.

# %% tags=["hide-input"]
zcont = ch.z_continuity(ins, phantom, real, truthed)
ch.table_z_continuity(zcont)

# %% tags=["remove-input"]
ch.glue_facts(ch.z_continuity_facts(zcont, ins, phantom))

# %% [markdown]
# {glue:text}`n_zcont_met` of {glue:text}`n_zcont_classes` classes meet the target against the training phantom's
# lesions, {glue:text}`n_zcont_met_scan_dz` against the truth renders. The statistic depends on the slice spacing:
# `lung2`'s slices are {glue:text}`scan_dz_mm` mm apart, the training phantom patients' (a few slices spread over
# the lungs) {glue:text}`phantom_dz_mm` mm, so the truth renders at `lung2`'s spacing are the fair reference, and
# `lung2`'s own lung before insertion the real one at the same spacing.

# %% [markdown]
# ## Cost

# %% tags=["hide-input"]
cost = ch.cost(summary, train_seconds)
table(cost)

# %% tags=["remove-input"]
ch.glue_facts(ch.cost_facts(cost, summary))

# %% [markdown]
# On this run's device (**{glue:md}`device`**), one inserted lesion cost {glue:text}`s_per_lesion:.3g` s,
# reading, anatomy, placement, painting and the checked write included. The numbers are in this chapter's
# `metrics.csv` and `cost.json`.

# %% tags=["remove-input"]
metrics = ch.write_outputs(run_dir, checks, cost, summary, seed=seed, judged=judged, zcont=zcont,
                          truthed=truthed, scanned=scanned)

# %% tags=["remove-input"]
ch.scope(profile, checks, per_class=per_class, patch_size=patch_size, steps=steps, judged=judged, zcont=zcont,
         truthed=truthed, runs_root=runs_root)
