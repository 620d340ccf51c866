"""Chapter 7, lesion insertion into real CT: a patch model trained on phantom and real lung1 patches inserts
emphysema, fibrosis and GGO into the real lung2 scan; the checks are computed from the files written.

    result, phantom, s = ch.train_model(run_dir, per_class=..., train_steps=..., seed=seed)   # patches, training
    summary = ch.insert_all(run_dir, model, classes=[...], target_ml=..., insert_steps=..., seed=seed)
    ins = ch.read_result(summary)
    ch.checks_table(ins, phantom, seed=seed); ch.cost_table(summary, s); ch.figure_insertions(ins, run_dir, seed=seed)
    ch.write_outputs(run_dir, checks, cost, summary, seed=seed); ch.scope(profile, ...)

Train on lung1, insert into lung2: the scan a lesion goes into was never a training source.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from .. import insert_checks as C
from .. import labels as L
from ..dataset import Dataset
from ..diffusion.train import TrainConfig
from ..insert import InsertConfig, insert_lesions, synthesize_mask_file
from ..instruments import judge_floor
from ..metrics import write_metrics
from ..patches import (build_patch_dataset, dataset_spacing, lesion_focused, pathology_volumes, real_volumes,
                       train_patch_model)
from ..plots import hu_colorbar, legend_handles, plt, save_figure, show_ct
from ..provenance import write_json_atomic
from ..realdata import fetch_pyradiomics
from ..scope import Scope, smoke_caveat
from ..scoring import judge

MODEL = "insert-patch"  # the model key in metrics.csv
JUDGE_NOT_MEASURED = ("Not measured in this profile (patch_judge_steps = 0). The run's judge segments whole slices at "
                      "the profile's image size, where a lesion of a few ml covers a handful of pixels; a judge at the "
                      "1 mm patch scale needs its own training, which on a CPU costs more than this chapter's whole "
                      "smoke budget.")
TRAIN_SCAN, TARGET_SCAN = "lung1", "lung2"
LESIONS = (L.EMPHYSEMA, L.FIBROSIS, L.GGO)


def scans() -> dict[str, Path]:
    """The pyradiomics CT files (fetched once, verified by sha256)."""
    return fetch_pyradiomics(log=lambda s: None)


def train_model(run_dir, *, per_class: int, slices_per_patient: int, fraction: float, patch_size: int,
                per_slice: int, preset: str, train_steps: int, batch_size: int, lr: float, warmup: int,
                lesion_weight: float, seed: int, device: str = "auto"):
    """Patches of phantom patients (`per_class` with each lesion class, at `fraction` of the lung) and of lung1,
    then the patch model (lesion-focused loss when `lesion_weight` > 0).

    Returns (TrainResult, phantom volumes, seconds for rendering, cutting and training).
    """
    t0 = time.perf_counter()
    rng = np.random.default_rng(seed)
    phantom = pathology_volumes(LESIONS, per_class, rng, slices_per_patient=slices_per_patient, fraction=fraction)
    real = real_volumes([scans()[f"{TRAIN_SCAN}_image"]])
    ds = build_patch_dataset(Path(run_dir) / "patches", phantom, real, size=patch_size, rng=rng,
                             per_slice=per_slice, seed=seed)
    cfg = TrainConfig(preset=preset, steps=train_steps, batch_size=batch_size, lr=lr, warmup=warmup, seed=seed)
    cfg = lesion_focused(cfg, lesion_weight, LESIONS) if lesion_weight else cfg
    result = train_patch_model(ds, cfg, Path(run_dir) / "model", device, progress=False)
    return result, phantom, time.perf_counter() - t0


def insert_all(run_dir, model_dir, *, classes, target_ml: float, insert_steps: int, jump_length: int,
               jump_n_sample: int, margin_mm: float, seed: int, device: str = "auto") -> dict:
    """`target_ml` of each class placed in lung2's healthy lung (the `--synthesize` placement) and inserted in one
    pass (`insert_lesions` with the mask); returns the insertion summary."""
    cfg = InsertConfig(steps=insert_steps, jump_length=jump_length, jump_n_sample=jump_n_sample,
                       margin_mm=margin_mm, seed=seed)
    ct, out = scans()[f"{TARGET_SCAN}_image"], Path(run_dir) / "inserted"
    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    synthesize_mask_file(ct, out / f"{TARGET_SCAN}_placed.nii.gz", classes, target_ml, seed=seed)
    placement = time.perf_counter() - t0
    s = insert_lesions(ct, out / f"{TARGET_SCAN}_inserted.nii.gz", model_dir,
                       lesion_mask=out / f"{TARGET_SCAN}_placed.nii.gz", config=cfg, device=device)
    return {**s, "seconds_placement": round(placement, 2)}


def read_result(summary: dict) -> C.Insertion:
    """The insertion read back from the files it wrote (input, edited CT, lesion labels) with its edit region."""
    return C.read_insertion(summary["input"], summary)


def checks_table(ins: C.Insertion, phantom, *, seed: int) -> pd.DataFrame:
    """Per class: HU Wasserstein-1 to the phantom's lesions after/before, seam scores; voxels changed outside
    the edit region (one count for the scan)."""
    ids = [int(c) for c in np.unique(ins.lesions) if c]
    rng = np.random.default_rng(seed)
    rows = C.lesion_hu_w1(ins, {c: C.phantom_lesion_hu(phantom, c, 20000, rng) for c in ids})
    for r, c in zip(rows, ids):
        r.update(C.seam_scores(ins, c), outside_differences=C.outside_differences(ins))
    return pd.DataFrame(rows).set_index("class")


def judge_table(run_dir, ins: C.Insertion, *, steps: int, seed: int, device: str = "auto") -> pd.DataFrame | None:
    """The judge at the patch scale (`scoring.judge` trained on this chapter's patch dataset) on windows around
    the inserted lesions, after and before insertion, with its own Dice on phantom test patches against its floor.
    None when `steps` is 0 (not measured)."""
    if not steps:
        return None
    ds = Dataset(Path(run_dir) / "patches")
    seg = judge(ds, Path(run_dir) / "patch_judge", steps=steps, seed=seed, device=device)
    df = pd.DataFrame(C.judge_lesion_dice(seg, ins, ds.split("test"), ds.size, dataset_spacing(ds)))
    df["judge_valid"] = [bool(v >= judge_floor(c)) for c, v in zip(df["class"], df["judge_dice_phantom_test"])]
    return df.set_index("class")


def cost_table(summary: dict, train_seconds: float) -> pd.DataFrame:
    """The run's costs: training, placement, painting, per lesion and per UNet call."""
    st, n = summary["seconds_by_stage"], max(int(summary["lesions"]), 1)
    rows = {"patch model training (s)": train_seconds, "lesion placement (s)": summary["seconds_placement"],
            "insertion, all stages (s)": summary["seconds"], "painting (s)": st["painting"],
            "lesions inserted": summary["lesions"], "windows painted": summary["windows"],
            "UNet calls per window": summary["network_calls_per_window"],
            "seconds per lesion (insertion + placement)": (summary["seconds"] + summary["seconds_placement"]) / n,
            "seconds per lesion (painting)": st["painting"] / n}
    return pd.DataFrame({"value": rows})


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


def write_outputs(run_dir, checks: pd.DataFrame, cost: pd.DataFrame, summary: dict, *, seed: int,
                  judged: pd.DataFrame | None = None) -> pd.DataFrame:
    """metrics.csv (model, metric, class, seed, value; keys only; no timings, so that a seeded CPU run writes the
    same bytes) and cost.json (the timings) in the run folder."""
    rows = [{"model": MODEL, "metric": m, "class": c, "seed": seed, "value": float(v)}
            for t in (checks, judged) if t is not None for c, r in t.iterrows() for m, v in r.items()]
    rows += [{"model": MODEL, "metric": "lesion_ml", "class": c, "seed": seed, "value": v}
             for c, v in summary["lesion_ml"].items()]
    counts = {"lesions": "lesions inserted", "windows": "windows painted",
              "network_calls_per_window": "UNet calls per window"}
    rows += [{"model": MODEL, "metric": k, "class": "all", "seed": seed, "value": float(cost.loc[v, "value"])}
             for k, v in counts.items()]
    write_metrics(run_dir, rows)
    timings = {"seconds_per_lesion": "seconds per lesion (insertion + placement)",
               "seconds_per_lesion_painting": "seconds per lesion (painting)",
               "train_seconds": "patch model training (s)"}
    write_json_atomic(Path(run_dir) / "cost.json", {
        **{k: float(cost.loc[v, "value"]) for k, v in {**counts, **timings}.items()},
        "seconds_by_stage": summary["seconds_by_stage"], "seconds_placement": summary["seconds_placement"],
        "device": summary["device"], "config": summary["config"]})
    return pd.DataFrame(rows)


def scope(profile: str, checks: pd.DataFrame, *, per_class: int, patch_size: int, train_steps: int,
          judged: pd.DataFrame | None) -> Scope:
    """The chapter's "What this run can and cannot show" box, from its own numbers."""
    exact = int(checks["outside_differences"].sum()) == 0
    s = Scope(profile, facts={"training scans": f"{per_class * len(LESIONS)} phantom patients + {TRAIN_SCAN}",
                              "insertion scan": TARGET_SCAN, "patch": f"{patch_size} px at 1 mm",
                              "training steps": str(train_steps)})
    s.can.append("That insertion leaves every voxel outside the edit region bit-identical to the input."
                 if exact else "Nothing about exactness: voxels outside the edit region changed (see the table).")
    s.can.append("What one insertion costs on this machine, per lesion and per UNet call.")
    s.cannot.append("That the inserted texture is realistic: one scan, one seed, and the HU distance to the phantom "
                    "is a distribution check, not a reader study.")
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
    s.cannot += smoke_caveat(profile)
    return s
