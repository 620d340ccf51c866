"""Chapter 6, lesion insertion into real CT: a patch model trained on phantom and real lung1 patches inserts
emphysema, fibrosis and GGO into the real lung2 scan; the checks (`difflung.insertion.checks`) are computed from
the files written. Each function is one section of `notebooks/06_lesion_insertion.py`:

    result, phantom, real, s = ch.train_model(run_dir, per_class=..., steps=..., seed=seed)  # patches, training
    summary, ins = ch.insert_all(run_dir, model, classes=[...], target_ml=..., insert_steps=..., seed=seed)
    ch.figure_insertions(ins, run_dir, seed=seed); ch.figure_coronal(ins, run_dir, seed=seed)
    checks = ch.checks(ins, phantom, seed=seed); ch.table_checks(checks)
    ch.show_judge(ch.judge(run_dir, ins, steps=..., seed=seed))
    tt = ch.truth(model, classes=[...], dz_mm=ins.spacing[0], insert_steps=..., seed=seed); ch.table_truth(tt)
    zc = ch.z_continuity(ins, phantom, real, tt); ch.table_z_continuity(zc)
    cost = ch.cost(summary, s)
    ch.write_outputs(run_dir, checks, cost, summary, seed=seed, judged=..., zcont=zc, truthed=tt)
    ch.scope(profile, checks, ...)      # the *_facts functions give the values the prose quotes (glued)

Train on lung1, insert into lung2: the scan a lesion goes into was never a training source.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from difflung.insertion import checks as C
from difflung import labels as L
from difflung.diffusion.recipes import recipe_config
from difflung.insertion import InsertConfig, insert_lesions, synthesize_mask_file
from difflung.insertion import build_patch_dataset, pathology_volumes, real_volumes
from difflung.diffusion.patch_model import lesion_focused, train_patch_model
from difflung.insertion.patches import PATCH_SPACING_MM
from difflung.plots import hu_colorbar, legend_handles, plt, save_figure, show_ct, sig, table, window_name
from difflung.data.realdata import fetch_pyradiomics
from difflung.data import own_dataset
from difflung.chapters.scope import Scope, glue_facts, smoke_caveat  # noqa: F401  (glue_facts: for the page)

MODEL = "insert-patch"  # the model key in metrics.csv
JUDGE_NOT_MEASURED = ("Not measured in this profile (its patch judge is off). The run's judge segments whole slices at "
                      "the profile's image size, where a lesion of a few ml covers a handful of pixels; a judge at the "
                      "1 mm patch scale needs its own training, which on a CPU costs more than this chapter's whole "
                      "smoke budget.")
TRAIN_SCAN, TARGET_SCAN = "lung1", "lung2"
LESIONS = (L.EMPHYSEMA, L.FIBROSIS, L.GGO)


def scans() -> dict[str, Path]:
    """The pyradiomics CT files (fetched once, verified by sha256)."""
    return fetch_pyradiomics(log=lambda s: None)


def page_facts(*, patch_size: int, per_class: int, steps: int, target_ml: float, margin_mm: float) -> dict:
    """Values the page's prose quotes before any run (glued): the patch grid, the training set and its steps, the
    placement."""
    return {"patch_size": patch_size, "patch_mm": PATCH_SPACING_MM, "n_phantom": per_class * len(LESIONS),
            "train_steps": steps, "target_ml": target_ml, "margin_mm": margin_mm, "lung_window": window_name()}


def train_model(run_dir, *, per_class: int, slices_per_patient: int, fraction: float, patch_size: int,
                per_slice: int, preset: str, steps: int, batch_size: int, lr: float, warmup: int,
                lesion_weight: float, seed: int, device: str = "auto"):
    """Patches of phantom patients (`per_class` with each lesion class, at `fraction` of the lung) and of lung1,
    then the patch model (lesion-focused loss when `lesion_weight` > 0).

    Returns (TrainResult, phantom volumes, the real lung1 volume(s) with their anatomy, seconds for rendering,
    cutting and training).
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    phantom = pathology_volumes(LESIONS, per_class, rng, slices_per_patient=slices_per_patient, fraction=fraction)
    real = real_volumes([scans()[f"{TRAIN_SCAN}_image"]])
    ds = build_patch_dataset(Path(run_dir) / "patches", phantom, real, size=patch_size, rng=rng,
                             per_slice=per_slice, seed=seed)
    cfg = recipe_config("difflung", preset=preset, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
                        seed=seed)  # the book's one diffusion recipe, as chapters 2-4
    cfg = lesion_focused(cfg, lesion_weight, LESIONS) if lesion_weight else cfg
    result = train_patch_model(ds, cfg, Path(run_dir) / "model", device, progress=False)
    return result, phantom, real, time.perf_counter() - t0


def insert_all(run_dir, model_dir, *, classes, target_ml: float, insert_steps: int, jump_length: int,
               jump_n_sample: int, margin_mm: float, seed: int, scan: str = TARGET_SCAN,
               device: str = "auto") -> tuple[dict, C.Insertion]:
    """`target_ml` of each class placed in the healthy lung of pyradiomics' `scan` (the `--synthesize` placement)
    and inserted in one pass (`insert_lesions` with the mask). Returns the insertion summary and the insertion read
    back from the files it wrote (`difflung.insertion.checks.read_insertion`: input, edited CT, lesion labels, edit
    region)."""
    cfg = InsertConfig(steps=insert_steps, jump_length=jump_length, jump_n_sample=jump_n_sample,
                       margin_mm=margin_mm, seed=seed)
    ct, out = scans()[f"{scan}_image"], Path(run_dir) / "inserted"
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    synthesize_mask_file(ct, out / f"{scan}_placed.nii.gz", classes, target_ml, seed=seed)
    placement = time.perf_counter() - t0
    s = insert_lesions(ct, out / f"{scan}_inserted.nii.gz", model_dir,
                       lesion_mask=out / f"{scan}_placed.nii.gz", config=cfg, device=device)
    s = {**s, "seconds_placement": round(placement, 2)}
    return s, C.read_insertion(s["input"], s)


SCAN_NAMES = {"lesions": "lesions", "requested_ml": "requested (ml)", "achieved_ml": "painted in its HU range (ml)",
              "mean_hu": "mean HU inside", "slices_per_lesion": "slices per lesion (median)",
              "zcont": "z-continuity", "outside_differences": "voxels changed outside"}


def per_scan(insertions: dict) -> pd.DataFrame:
    """Per scan and inserted class, requested against achieved (`insert.lesion_report` of the insertion summary,
    summed over the class's lesions): lesions, requested ml, ml painted within the class's HU range, mean HU
    (volume-weighted), median slices per lesion, z-continuity of the painted texture (`checks.z_continuity`), and
    the scan's voxels changed outside the edit region.

    Args:
        insertions: {scan name: (summary, Insertion)} as `insert_all` returns them.
    """
    rows = []
    for scan, (summary, ins) in insertions.items():
        outside = C.outside_differences(ins)
        for cls, g in pd.DataFrame(summary["per_lesion"]).groupby("class", sort=False):
            c, w = L.BY_NAME[cls].id, g["requested_ml"]
            achieved = pd.to_numeric(g["achieved_ml"], errors="coerce")
            rows.append({"scan": scan, "class": cls, "lesions": len(g), "requested_ml": float(w.sum()),
                         "achieved_ml": float(achieved.sum()) if achieved.notna().all() else np.nan,
                         "mean_hu": float((g["mean_hu"] * w).sum() / w.sum()),
                         "slices_per_lesion": slices_per_lesion(ins.lesions, c),
                         "zcont": C.z_continuity(ins.after, ins.lesions == c, ins.spacing),
                         "outside_differences": float(outside)})
    return pd.DataFrame(rows).set_index(["scan", "class"])


def table_scans(ps: pd.DataFrame):
    """`per_scan` for the page: one row per scan and class (the training scan marked), readable names."""
    marked = ps.rename(index={TRAIN_SCAN: f"{TRAIN_SCAN} (training scan)"}, level="scan")
    return table(marked.rename(columns=SCAN_NAMES))


def insertion_facts(summary: dict) -> dict:
    """Lesions inserted and slices edited, from the insertion summary."""
    return {"n_lesions": summary["lesions"], "n_slices_edited": summary["slices_edited"]}


def checks(ins: C.Insertion, phantom, *, seed: int) -> pd.DataFrame:
    """The checks computed from the written files (`difflung.insertion.checks.check_table`), one row per class."""
    return C.check_table(ins, phantom, seed=seed)


def check_facts(checks: pd.DataFrame) -> dict:
    """For the prose: voxels changed outside the edit region, and for how many of the classes the inserted
    lesions are closer to the phantom's intensities than the healthy lung they replaced."""
    return {"outside": int(checks["outside_differences"].iloc[0]),
            "n_w1_better": int((checks["w1_after"] < checks["w1_before"]).sum()), "n_classes": len(checks)}


def judge(run_dir, ins: C.Insertion, *, steps: int, seed: int, device: str = "auto") -> pd.DataFrame | None:
    """The patch-scale judge on the inserted lesions (`checks.judge_table`); None when `steps` is 0."""
    return C.judge_table(run_dir, ins, steps=steps, seed=seed, device=device)


def show_judge(judged: pd.DataFrame | None):
    """`table_judge`, or `JUDGE_NOT_MEASURED` in words when the profile trains no patch judge."""
    from IPython.display import Markdown

    return Markdown(JUDGE_NOT_MEASURED) if judged is None else table_judge(judged)


COST_PER_LESION = C.TIMINGS["seconds_per_lesion"]  # the row of `checks.cost_table` the prose quotes


def cost(summary: dict, train_seconds: float) -> pd.DataFrame:
    """Training, placement, painting, per lesion and per UNet call (`checks.cost_table`)."""
    return C.cost_table(summary, train_seconds)


def cost_facts(cost: pd.DataFrame, summary: dict) -> dict:
    """The device and the seconds per inserted lesion, for the prose."""
    return {"device": summary["device"], "s_per_lesion": float(cost.loc[COST_PER_LESION, "value"])}


def write_outputs(run_dir, checks: pd.DataFrame, cost: pd.DataFrame, summary: dict, *, seed: int,
                  judged: pd.DataFrame | None, zcont: pd.DataFrame | None = None,
                  truthed: pd.DataFrame | None = None, scanned: pd.DataFrame | None = None) -> pd.DataFrame:
    """metrics.csv (no timings: a seeded CPU run writes the same bytes) and cost.json (`checks.write_outputs`);
    with `zcont` (`z_continuity`), its numeric columns (`ZCONT_METRICS`) as further rows per class, with
    `truthed` (`truth`), its columns as rows "truth_<column>" per class, and with `scanned` (`per_scan`), each
    scan's columns as rows "<scan>_<column>" per class."""
    if zcont is not None:
        checks = checks.join(zcont[list(ZCONT_METRICS)].astype(float))
    if truthed is not None:
        checks = checks.join(truth_summary(truthed).add_prefix("truth_").astype(float))
    if scanned is not None:  # every scan's row per class as "<scan>_<column>"
        wide = pd.concat([g.droplevel("scan").add_prefix(f"{scan}_") for scan, g in scanned.groupby(level="scan")],
                         axis=1)
        checks = checks.join(wide.astype(float))
    return C.write_outputs(run_dir, checks, cost, summary, model=MODEL, seed=seed, judged=judged)


CHECK_NAMES = {"w1_after": "HU W1 after", "w1_before": "HU W1 before", "mean_hu_after": "mean HU after",
               "mean_hu_before": "mean HU before", "mean_hu_phantom": "mean HU phantom", "seam_after": "seam after",
               "seam_before": "seam before", "outside_differences": "outside differences"}
JUDGE_NAMES = {"judge_dice_after": "Dice after", "judge_dice_before": "Dice before",
               "judge_dice_phantom_test": "Dice on phantom test patches", "judge_windows": "windows",
               "judge_valid": "above its floor"}


def table_checks(checks: pd.DataFrame):
    """`difflung.insertion.checks.check_table` for the page: one row per check, one column per class (narrow enough
    for the page), readable names."""
    cells = checks.rename(columns=CHECK_NAMES).apply(lambda col: col.map(sig))  # counts stay whole numbers
    return table(cells.T.rename_axis("check"))


def table_judge(judged: pd.DataFrame):
    """`difflung.insertion.checks.judge_table` for the page (when it is None, show `JUDGE_NOT_MEASURED` instead)."""
    return table(judged.rename(columns=JUDGE_NAMES))


def figure_insertions(ins: C.Insertion, run_dir, *, seed: int, half_mm: float = 40.0):
    """Per class: before, after, difference and label overlay on the slice with most of it, lung window."""
    ids = [int(c) for c in np.unique(ins.lesions) if c]
    fig, axes = plt.subplots(len(ids), 4, figsize=(9.5, 2.5 * len(ids)), squeeze=False, layout="constrained")
    diff = ins.after - ins.before
    lim = max(float(np.abs(diff[ins.region]).max(initial=1.0)), 1.0)
    for row, c in zip(axes, ids):
        k = C.show_slice(ins, c)
        box = C.crop_box(ins.lesions[k] == c, ins.spacing[1:], half_mm)
        show_ct(row[0], ins.before[k][box], title=f"{L.BY_ID[c].name}: before")
        show_ct(row[1], ins.after[k][box], title="after")
        im = row[2].imshow(diff[k][box], cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        row[2].set_title("after - before", fontsize=9)
        row[2].set_axis_off()
        lab = np.where(ins.lesions[k] > 0, ins.lesions[k], L.BODY)  # lesions only (body: transparent)
        show_ct(row[3], ins.after[k][box], lab[box], alpha=0.45, title="inserted lesions")
    hu_colorbar(fig, axes[:, [0, 1, 3]], shrink=0.6)
    cb = fig.colorbar(im, ax=axes[-1, 2], location="bottom", fraction=0.05, pad=0.02, shrink=0.9)
    cb.set_label("HU difference", fontsize=8)
    fig.legend(handles=legend_handles(ids), loc="outside lower center", ncol=len(ids), fontsize=8)
    save_figure(fig, Path(run_dir) / "figures" / "insertions.png", seed=seed)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# lesions in 3D: the coronal view and continuity of texture in z

def figure_coronal(ins: C.Insertion, run_dir, *, seed: int, half_mm: float = 40.0):
    """Per inserted class, the coronal plane through most of its lesions (`checks.coronal_row`): before, after and
    the inserted labels, +-`half_mm` around the lesions in x and every slice in z, drawn with the z spacing as the
    aspect (a lesion spanning slices shows as tall as it is), lung window with its HU bar."""
    ids = [int(c) for c in np.unique(ins.lesions) if c]
    dz, dx = ins.spacing[0], ins.spacing[2]
    # narrow: the slices' aspect makes each panel tall and thin, and a wide figure leaves the HU bar over them
    fig, axes = plt.subplots(len(ids), 3, figsize=(6.0, 2.6 * len(ids)), squeeze=False, layout="constrained")
    for row, c in zip(axes, ids):
        y = C.coronal_row(ins.lesions, c)
        xs = np.flatnonzero((ins.lesions[:, y, :] == c).any(axis=0))
        h = int(half_mm / dx)
        x0 = max(int(xs.mean()) - h, 0)
        box = (slice(None), slice(x0, min(x0 + 2 * h, ins.lesions.shape[2])))
        lab = np.where(ins.lesions[:, y, :] > 0, ins.lesions[:, y, :], L.BODY)[box]
        show_ct(row[0], ins.before[:, y, :][box], title=f"{L.BY_ID[c].name}: before (coronal row {y})")
        show_ct(row[1], ins.after[:, y, :][box], title="after")
        show_ct(row[2], ins.after[:, y, :][box], lab, alpha=0.45, title="lesions")
        for ax in row:
            ax.set_aspect(dz / dx)  # one slice drawn as tall as its spacing
    hu_colorbar(fig, axes, shrink=0.6)
    fig.legend(handles=legend_handles(ids), loc="outside lower center", ncol=len(ids), fontsize=8)
    save_figure(fig, Path(run_dir) / "figures" / "insertions_coronal.png", seed=seed)
    return fig


ZCONT_TARGET = 0.20  # issue 26: z-continuity of inserted lesions within 20 % of the phantom's own
ZCONT_METRICS = ("zcont_inserted", "zcont_phantom", "zcont_real_lung", "zcont_scan_lung", "slices_per_lesion")


def slices_per_lesion(lesions: np.ndarray, cls: int) -> float:
    """Median number of slices a lesion of class `cls` spans (3D connected pieces, 26-connected)."""
    comp, n = ndi.label(lesions == cls, structure=np.ones((3, 3, 3), bool))
    if not n:
        return float("nan")
    return float(np.median([s[0].stop - s[0].start for s in ndi.find_objects(comp)]))


def _verdict(got: float, ref: float) -> tuple[float, str]:
    """Relative difference to `ref` and the issue's verdict on it ("met", "missed", "not measurable")."""
    rel = abs(got - ref) / abs(ref) if ref else float("nan")
    return rel, "not measurable" if np.isnan(rel) else "met" if rel <= ZCONT_TARGET else "missed"


def z_continuity(ins: C.Insertion, phantom, real, truthed: pd.DataFrame | None = None) -> pd.DataFrame:
    """Per inserted class, the texture correlation between adjacent slices (`checks.z_continuity`) inside the
    inserted lesions, beside the same statistic on the phantom's own lesions of that class (`z_continuity_of`),
    on real lung (`real`: prepared real volumes, class lung) and on the target scan's own lung before insertion
    (same spacing as the inserted lesions, lesions left out), with the target of issue 26 (within `ZCONT_TARGET`
    of the phantom's own): "met", "missed", or "not measurable" (too few voxel pairs in adjacent slices).
    With `truthed` (`truth`, rendered at the scan's slice spacing), also its truth renders' value
    (`zcont_phantom_scan_dz`) and the target against it (`target_scan_dz`): the statistic depends on the spacing.

    Args:
        ins: the insertion (`insert_all`); phantom: the phantom volumes; real: real volumes with anatomy labels;
        truthed: optional `truth` table.
    """
    real_lung = C.z_continuity_of(real, L.LUNG)
    scan_lung = C.z_continuity(ins.before, ins.lung & (ins.lesions == 0), ins.spacing)
    rows = []
    for c in (int(v) for v in np.unique(ins.lesions) if v):
        got, own = C.z_continuity(ins.after, ins.lesions == c, ins.spacing), C.z_continuity_of(phantom, c)
        rel, verdict = _verdict(got, own)
        row = {"class": L.BY_ID[c].name, "zcont_inserted": got, "zcont_phantom": own,
               "zcont_real_lung": real_lung, "zcont_scan_lung": scan_lung,
               "slices_per_lesion": slices_per_lesion(ins.lesions, c), "relative_difference": rel, "target": verdict}
        if truthed is not None:
            ref = float(truth_summary(truthed)["zcont_truth"].get(L.BY_ID[c].name, np.nan))
            row["zcont_phantom_scan_dz"] = ref
            row["target_scan_dz"] = _verdict(got, ref)[1]
        rows.append(row)
    return pd.DataFrame(rows).set_index("class")


def z_continuity_facts(zc: pd.DataFrame, ins: C.Insertion, phantom) -> dict:
    """For the prose: classes meeting the z-continuity target, and the slice spacings the statistic depends on."""
    same = zc["target_scan_dz"] if "target_scan_dz" in zc else pd.Series(dtype=str)
    return {"n_zcont_met": int((zc["target"] == "met").sum()), "n_zcont_classes": len(zc),
            "n_zcont_met_scan_dz": int((same == "met").sum()),
            "scan_dz_mm": round(float(ins.spacing[0]), 2),
            "phantom_dz_mm": round(float(np.median([v.spacing[0] for v in phantom])), 2)}


ZCONT_NAMES = {"zcont_inserted": "inserted", "zcont_phantom": "phantom's own lesions",
               "zcont_real_lung": f"real lung ({TRAIN_SCAN})", "zcont_scan_lung": f"{TARGET_SCAN} lung, before",
               "slices_per_lesion": "slices per lesion (median)", "relative_difference": "inserted vs phantom",
               "target": f"target: within {ZCONT_TARGET:.0%} of phantom",
               "zcont_phantom_scan_dz": "phantom truth at the scan's spacing",
               "target_scan_dz": "target against it"}


def table_z_continuity(zc: pd.DataFrame):
    """`z_continuity` for the page: one row per class, readable names, the target's verdict as words."""
    return table(zc.rename(columns=ZCONT_NAMES), percent=[ZCONT_NAMES["relative_difference"]])


# ---------------------------------------------------------------------------------------------------------------
# ground truth from the phantom

TRUTH_HELD_OUT = 10_000  # patient streams child_rng(seed + TRUTH_HELD_OUT, class, i): no training patient's
TRUTH_SLICES = 3  # slices of each held-out patient kept (the densest in its class)
TRUTH_FRACTION = 0.04  # the held-out patients' pathology knob: small lesions keep the section under a minute
TRUTH_NAMES = {"voxels": "voxels", "w1_to_truth": "HU W1 to truth", "w1_base_to_truth": "HU W1, lesion-free render",
               "mean_hu_inserted": "mean HU inserted", "mean_hu_truth": "mean HU truth",
               "laa950_inserted": "LAA-950 inserted (%)", "laa950_truth": "LAA-950 truth (%)",
               "spread_inserted": "texture spread inserted", "spread_truth": "texture spread truth",
               "zcont_inserted": "z-continuity inserted", "zcont_truth": "z-continuity truth",
               "seam_null": "seam, null insertion", "seam_inserted": "seam, inserted", "seam_truth": "seam, truth",
               "seam_in_band": "seam within null .. truth"}


def truth_case(cls: int, *, dz_mm: float, fraction: float, seed: int, slices: int = TRUTH_SLICES,
               pixel_mm: float = PATCH_SPACING_MM, max_tries: int = 20):
    """The first held-out phantom patient holding class `cls` (`truth.phantom_truth_case` at `pixel_mm`, the patch
    model's spacing, over 350 mm; slices `dz_mm` apart), cut to the `slices` slices holding most of it."""
    from difflung.phantom import PhantomConfig
    from difflung.phantom.config import child_rng
    from difflung.insertion.truth import crop_z, densest_slab, phantom_truth_case

    size = int(round(350.0 / pixel_mm))
    knobs = {L.BY_ID[c].name: (fraction if c == cls else 0.0) for c in LESIONS}
    cfg = PhantomConfig(size=size, fov_mm=size * pixel_mm, slices_per_patient=int(np.ceil(300.0 / dz_mm)),
                        slice_thickness_mm=dz_mm, **knobs)  # covers any patient's lungs
    for i in range(max_tries):
        case = phantom_truth_case(f"truth-{L.BY_ID[cls].name}{i}", child_rng(seed + TRUTH_HELD_OUT, cls, i), cfg)
        if (case.lesions == cls).sum() >= 50:
            return crop_z(case, *densest_slab(case.lesions == cls, slices))
    raise RuntimeError(f"no held-out phantom patient with {L.BY_ID[cls].name} in {max_tries} draws")


STUDY_CROP = 64  # reader-study tiles: lesion-centred crops of this many pixels (1 mm each: 64 mm)
STUDY_SLICES = 3  # per class: the slices holding most of the lesion


def study_crops(study_dir, cls: str, truth_hu: np.ndarray, inserted_hu: np.ndarray, lesions: np.ndarray) -> int:
    """Write lesion-centred crops of the same slices from the rendered truth (`real/<cls>/`) and the insertion
    (`synthetic/<cls>/`) as .npy HU, the reader study's inputs; returns the crops written per side."""
    per = lesions.reshape(len(lesions), -1).sum(1)
    zs = [int(z) for z in np.argsort(-per, kind="stable")[:STUDY_SLICES] if per[z] > 0]
    half = STUDY_CROP // 2
    for side, vol in (("real", truth_hu), ("synthetic", inserted_hu)):
        out = Path(study_dir) / side / cls
        out.mkdir(parents=True, exist_ok=True)
        for z in zs:
            ys, xs = np.nonzero(lesions[z])
            cy = int(np.clip(round(ys.mean()), half, vol.shape[1] - half))
            cx = int(np.clip(round(xs.mean()), half, vol.shape[2] - half))
            np.save(out / f"{cls}_z{z:03d}.npy", vol[z, cy - half:cy + half, cx - half:cx + half].astype(np.float32))
    return len(zs)


def reader_study(run_dir, *, seed: int) -> dict:
    """The reader-study kit for the held-out insertions (`difflung.judging.reader_study.build_study`): the rendered
    truth's lesion crops against the inserted ones at the same places, shuffled into `reader_study.html` with its
    key apart (`reader_study_key.json`). The page is built here; the reading is a radiologist's."""
    from difflung.judging.reader_study import build_study

    root = Path(run_dir) / "reader_study"
    return build_study(root / "real", root / "synthetic", Path(run_dir) / "reader_study.html",
                       key=Path(run_dir) / "reader_study_key.json", size=192, per_volume=1, seed=seed,
                       title="Inserted or rendered? Lesion crops of held-out phantom patients")


def table_reader_study(key: dict) -> pd.DataFrame:
    """The study's tiles per class and truth (counts only: the key stays apart from the page)."""
    tiles = pd.DataFrame(key["tiles"].values())
    t = tiles.groupby(["class", "truth"]).size().unstack("truth", fill_value=0)
    t = t.rename(columns={"real": "rendered (truth)", "synthetic": "inserted"})
    t.columns.name = None  # the table's header is the two sides, not the key's field name
    return t


def truth(model_dir, *, classes, dz_mm: float, insert_steps: int, jump_length: int,
          jump_n_sample: int, margin_mm: float, seed: int, patients: int = 1, fraction: float = TRUTH_FRACTION,
          slices: int = TRUTH_SLICES, pixel_mm: float = PATCH_SPACING_MM, device: str = "auto",
          study_dir=None) -> pd.DataFrame:
    """Insertion against ground truth (`difflung.insertion.truth.truth_table`): per class, `patients` held-out
    phantom patients (`truth_case`, seeds `seed`, `seed` + 1, ...) rendered with and without their lesions; the
    lesion labels inserted into the lesion-free render by the chapter's patch model, and the same region repainted
    with no label (the null insertion, one seed for both). `seam_in_band`: the insertion's seam score lies between
    the null insertion's and the truth's.

    Args:
        model_dir: the patch model; classes: class names; dz_mm: slice spacing of the renders (the target scan's);
        patients: held-out patients per class, each with its own sampling seed; fraction: the phantom's pathology
        knob; slices: slices per patient (`truth_case`); pixel_mm: the patch model's spacing (the renders' pixel
        size); study_dir: where `study_crops` writes the reader study's crops (None: none; the first patient's);
        the rest as `insert_all`.
    Returns:
        one row per class and patient (index `class`, `patient`); `truth_summary` gives the per-class view.
    """
    import torch

    from difflung.core.provenance import resolve_device
    from difflung.diffusion.train import load_model
    from difflung.insertion.truth import insert_into_case, truth_table

    cfg = InsertConfig(steps=insert_steps, jump_length=jump_length, jump_n_sample=jump_n_sample,
                       margin_mm=margin_mm, spacing_mm=pixel_mm, seed=seed)
    device = resolve_device(device)
    unet, meta = load_model(model_dir, device=device)
    if study_dir is not None:  # this run's crops only
        import shutil

        shutil.rmtree(study_dir, ignore_errors=True)
    if patients < 1:
        raise ValueError(f"patients={patients}: at least one held-out patient per class")
    tables = []
    for cls in (L.BY_NAME[c].id for c in classes):
        for i in range(patients):
            s = seed + i  # patient i: its own held-out stream and sampling seed
            case = truth_case(cls, dz_mm=dz_mm, fraction=fraction, seed=s, slices=slices, pixel_mm=pixel_mm)
            inserted, region = insert_into_case(case, unet, meta, replace(cfg, seed=s),
                                                torch.Generator().manual_seed(s), device=device)
            null, _ = insert_into_case(case, unet, meta, replace(cfg, seed=s), torch.Generator().manual_seed(s),
                                       null=True, device=device)
            t = truth_table(case, inserted, null, region, margin_mm=margin_mm).loc[[L.BY_ID[cls].name]]
            if study_dir is not None and i == 0:
                study_crops(study_dir, L.BY_ID[cls].name, case.truth.hu, inserted, case.lesions == cls)
            lo, hi = sorted((t["seam_null"].iloc[0], t["seam_truth"].iloc[0]))
            t["seam_in_band"] = bool(lo <= t["seam_inserted"].iloc[0] <= hi)
            tables.append(t.assign(patient=i).set_index("patient", append=True))
    return pd.concat(tables).rename_axis(["class", "patient"])


def truth_summary(tt: pd.DataFrame) -> pd.DataFrame:
    """`truth`'s rows per class: the mean over its held-out patients (`seam_in_band`: the share of them in band;
    `laa950_gap`: the mean of each patient's |LAA-950 inserted - truth| in points; `patients`: how many)."""
    t = tt.astype(float)
    if {"laa950_inserted", "laa950_truth"} <= set(t):
        t["laa950_gap"] = (t["laa950_inserted"] - t["laa950_truth"]).abs()
    g = t.groupby(level=0, sort=False)  # the class
    return g.mean().assign(patients=g.size().astype(float))


def truth_facts(tt: pd.DataFrame) -> dict:
    """For the prose: the issue's targets on the held-out patients (emphysema's LAA-950 within 5 points of truth,
    HU W1 to truth at most 30 HU) and the classes whose seam score lies in the band null .. truth."""
    tt = truth_summary(tt)
    w1_ok = tt.index[tt["w1_to_truth"] <= 30.0].tolist()
    laa = float(tt.loc["emphysema", "laa950_gap"]) if "emphysema" in tt.index and "laa950_gap" in tt else float("nan")
    return {"truth_w1_met": ", ".join(w1_ok) or "none", "truth_n_classes": len(tt),
            "truth_patients": int(tt["patients"].max()),
            "truth_w1_worst": float(tt["w1_to_truth"].max()), "truth_laa_gap": float(laa),
            # in band for every held-out patient of the class
            "truth_seam_in_band": ", ".join(tt.index[tt["seam_in_band"].astype(float) >= 1.0]) or "none"}


def table_truth(tt: pd.DataFrame):
    """`truth` for the page: one row per comparison, one column per class; with several held-out patients the mean
    over them and their range ("12.3 (10.1-14.0)"), and the seam row as "2 of 3" patients in band."""
    summary = truth_summary(tt)
    n = int(summary["patients"].max())
    cells = pd.DataFrame(index=summary.index)
    for col in TRUTH_NAMES:
        if col not in summary:
            continue
        if col == "seam_in_band" and n == 1:
            cells[col] = ["yes" if v else "no" for v in summary[col]]
        elif n == 1:
            cells[col] = summary[col].map(sig)
        elif col == "seam_in_band":
            cells[col] = [f"{round(v * n)} of {n} patients" for v in summary[col]]
        else:
            g = tt[col].astype(float).groupby(level="class", sort=False)
            cells[col] = [f"{sig(m)} ({sig(lo)} to {sig(hi)})" for m, lo, hi in zip(g.mean(), g.min(), g.max())]
    return table(cells.rename(columns=TRUTH_NAMES).T.rename_axis("inserted against rendered truth"))


def scope(profile: str, checks: pd.DataFrame, *, per_class: int, patch_size: int, steps: int,
          judged: pd.DataFrame | None, zcont: pd.DataFrame | None = None,
          truthed: pd.DataFrame | None = None, runs_root=None) -> Scope:
    """The chapter's "What this run can and cannot show" box, from its own numbers (with `zcont` and `truthed`:
    whether z-continuity and the held-out truth met their targets, class by class; with `runs_root`, whether the
    run used a prepared dataset, which this chapter does not)."""
    exact = int(checks["outside_differences"].sum()) == 0
    s = Scope(profile, facts={"training scans": f"{per_class * len(LESIONS)} phantom patients + {TRAIN_SCAN}",
                              "insertion scans": f"{TARGET_SCAN}, {TRAIN_SCAN}", "patch": f"{patch_size} px at 1 mm",
                              "training steps": str(steps)})
    s.can.append("That insertion leaves every voxel outside the edit region bit-identical to the input."
                 if exact else "Nothing about exactness: voxels outside the edit region changed (see the table).")
    s.can.append("What one insertion costs on this machine, per lesion and per UNet call.")
    s.cannot.append(f"That the inserted texture is realistic to a reader: two real scans ({TRAIN_SCAN} trained the "
                    "model), one placement seed, and the HU distance to the phantom is a distribution check; the "
                    "reader-study kit below is built, not read.")
    own = own_dataset.describe(runs_root) if runs_root is not None else None
    if own:
        s.cannot.append(f"Anything about the run's dataset ({own['name']}): this chapter trains and inserts on the "
                        "phantom and the real CT named above, since its ground truth needs the same anatomy rendered "
                        "with and without lesions, which only the phantom has.")
    if profile == "smoke":
        s.cannot.append("A trained insertion model: the smoke patch model is small and far from converged.")
    if judged is None:
        s.cannot.append(f"The judge segmenter's Dice on inserted lesions. {JUDGE_NOT_MEASURED}")
    else:
        bad = [c for c, ok in judged["judge_valid"].items() if not ok]
        if bad:
            s.cannot.append(f"Whether inserted {', '.join(bad)} is recognisable: the patch judge misses its Dice floor "
                            "for that class on phantom test patches.")
        if len(bad) < len(judged):
            s.can.append("Whether the patch judge finds the inserted lesions of the classes it reads reliably.")
    if zcont is not None and "target" in zcont:
        verdicts = zcont["target"].to_dict()  # `z_continuity`'s own verdict per class
        met = [c for c, v in verdicts.items() if v == "met"]
        missed = [c for c, v in verdicts.items() if v == "missed"]
        if met:
            s.can.append(f"That inserted {', '.join(met)} is as continuous across slices as the phantom's own "
                         f"(z-continuity within {ZCONT_TARGET:.0%}).")
        if missed:
            s.cannot.append(f"Lesions as continuous across slices as the phantom's for {', '.join(missed)}: their "
                            f"z-continuity misses the {ZCONT_TARGET:.0%} target (table above).")
    if truthed is not None and len(truthed):
        f, truthed = truth_facts(truthed), truth_summary(truthed)
        if f["truth_w1_met"] != "none":
            s.can.append(f"How close inserted lesions come to the rendered truth on held-out phantom patients: HU W1 "
                         f"at most 30 HU for {f['truth_w1_met']}.")
        far = [c for c in truthed.index if truthed.loc[c, "w1_to_truth"] > 30.0]
        if far:
            s.cannot.append(f"Inserted {', '.join(far)} with the HU of the rendered truth: W1 to truth above 30 HU "
                            f"(worst {f['truth_w1_worst']:.0f} HU).")
        if np.isfinite(f["truth_laa_gap"]) and f["truth_laa_gap"] > 5.0:
            s.cannot.append(f"Emphysema with the truth's share below -950 HU: {f['truth_laa_gap']:.0f} points off "
                            "(target 5).")
    s.cannot += smoke_caveat(profile)
    return s
