"""The real chest CT (pyradiomics lung1/lung2, fetched by `difflung.data.realdata`) read, measured and set against the
phantom: chapter 1's computations on real data.

    cases = load_real_ct()                             # fetch (idempotent) + read + anatomy + mapped lesion labels
    lung_volume_table(cases)                           # coverage, lung / airway / lesion volumes per patient
    phantom_anatomy_agreement(phantom_volumes)         # the classical anatomy against the phantom's truth
    hu_lung_stats(hu_lung_samples(cases, phantom_volumes, seed=0))
    prepare_example(run_dir, size=32, seed=0)          # `python -m difflung prepare` on the cached files
    metrics_rows(volume_table, agreement, hu_stats, seed=0)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from difflung import labels as L
from difflung.core import runs
from difflung.data.ct_anatomy import AnatomyConfig, segment
from difflung.data.classmap import load_classmap
from difflung.data.dataset import Dataset, Volume
from difflung.data.prepare import Case, prepare, prepare_volume
from difflung.core.provenance import write_json_atomic
from difflung.data.realdata import cached_paths, fetch_pyradiomics

LEVELS = {"apex": 0.12, "middle": 0.5, "base": 0.88}  # fractions of each volume's own lung extent in z


@dataclass
class RealCase:
    volume: Volume  # HU and project labels (z, y, x), z from apex to base
    row: dict  # the `prepare` summary row: volumes in ml, voxel counts, slices with lung, warnings


def load_real_ct(cache_dir=None, *, classes="nodule", fetch: bool = True,
                 anatomy: AnatomyConfig | None = None) -> list[RealCase]:
    """The pyradiomics lung1/lung2 CT with anatomy and their lesion labels mapped by `classes`.

    Args:
        cache_dir: where `fetch-data` put them (default `difflung.data.realdata.default_cache_dir()`).
        classes: class map for their label files (both hold one value, 1: a nodule / a tumour).
        fetch: run the idempotent fetch first (downloads from PyPI only when the cache is missing or wrong).
        anatomy: settings of the classical anatomy (default `AnatomyConfig()`).
    """
    paths = fetch_pyradiomics(cache_dir, log=lambda s: None) if fetch else cached_paths(cache_dir)
    cmap, cfg = load_classmap(classes), anatomy or AnatomyConfig()
    out = []
    for name in ("lung1", "lung2"):
        vol, row = prepare_volume(Case(paths[f"{name}_image"], paths[f"{name}_label"], name), cmap, cfg)
        out.append(RealCase(vol, row))
    return out


def lung_levels(labels: np.ndarray) -> dict[str, int]:
    """Slice index of apex/middle/base: fixed fractions of the volume's own z-extent of lung field."""
    zs = np.flatnonzero(np.isin(labels, L.LUNG_IDS).any(axis=(1, 2)))
    if zs.size == 0:
        raise ValueError("no lung in this volume")
    return {k: int(round(zs[0] + f * (zs[-1] - zs[0]))) for k, f in LEVELS.items()}


def crop_body(hu: np.ndarray, lab: np.ndarray, margin: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """One slice's HU and labels (y, x) cropped to the labelled body plus `margin` pixels (unchanged if none)."""
    ys, xs = np.nonzero(lab > 0)
    if ys.size == 0:
        return hu, lab
    y0, y1 = max(ys.min() - margin, 0), ys.max() + margin + 1
    x0, x1 = max(xs.min() - margin, 0), xs.max() + margin + 1
    return hu[y0:y1, x0:x1], lab[y0:y1, x0:x1]


def lung_volume_table(cases: list[RealCase]) -> pd.DataFrame:
    """Per real patient: coverage, lung volume (right/left/total), airway, lesion volume; whether apex/base are cut."""
    rows = []
    for c in cases:
        r, v = c.row, c.volume
        vml = float(np.prod(v.spacing)) / 1000.0
        first, last = r["lung_slices"]
        rows.append({
            "patient": r["patient"], "slices": v.hu.shape[0], "pixel mm": round(v.spacing[1], 3),
            "slice mm": v.spacing[0], "scan length mm": v.hu.shape[0] * v.spacing[0],
            "lung slices": f"{first}-{last}", "lung height mm": (last - first + 1) * v.spacing[0],
            "apex in scan": first > 0, "base in scan": last < v.hu.shape[0] - 1,
            "right lung ml": r["lung_right_ml"], "left lung ml": r["lung_left_ml"],
            "lung field ml": r["lung_volume_ml"], "airway ml": r["airway_ml"],
            "lesion ml": round(sum(r["voxel_counts"].get(L.BY_ID[i].name, 0) for i in L.PATHOLOGY_IDS) * vml, 1),
        })
    return pd.DataFrame(rows).set_index("patient")


def phantom_anatomy_agreement(phantom: list[Volume], anatomy: AnatomyConfig | None = None) -> pd.DataFrame:
    """Run the classical anatomy on phantom volumes and compare with the phantom's own labels (Dice, volumes)."""
    rows = []
    for v in phantom:
        an = segment(v.hu, v.spacing, anatomy, name=v.patient)
        found, truth = np.isin(an.labels(), L.LUNG_IDS), np.isin(v.labels, L.LUNG_IDS)
        vml = float(np.prod(v.spacing)) / 1000.0
        rows.append({"patient": v.patient,
                     "lung_dice_vs_truth": 2.0 * (found & truth).sum() / max(found.sum() + truth.sum(), 1),
                     "lung_ml_found": found.sum() * vml, "lung_ml_truth": truth.sum() * vml,
                     "airway_ml_found": an.airway.sum() * vml, "airway_ml_truth": (v.labels == L.AIRWAY).sum() * vml})
    return pd.DataFrame(rows).set_index("patient")


def hu_lung_samples(cases: list[RealCase], phantom: list[Volume], *, seed: int, per_volume: int = 40000) -> pd.DataFrame:
    """Random healthy-lung (label 2) voxels of each real and phantom volume: long form (source, patient, hu)."""
    rng = np.random.default_rng(seed)
    frames = []
    for source, vols in (("real CT", [c.volume for c in cases]), ("phantom", phantom)):
        for v in vols:
            hu = v.hu[v.labels == L.LUNG]
            take = rng.choice(hu.size, size=min(per_volume, hu.size), replace=False)
            frames.append(pd.DataFrame({"source": source, "patient": v.patient, "hu": hu[np.sort(take)]}))
    return pd.concat(frames, ignore_index=True)


def hu_lung_stats(samples: pd.DataFrame) -> pd.DataFrame:
    """Per source: mean, SD, median HU of healthy lung, LAA-950 (% below -950) and % above -700."""
    g = samples.groupby("source")["hu"]
    return pd.DataFrame({"mean HU": g.mean(), "SD HU": g.std(), "median HU": g.median(),
                         "% < -950 (LAA-950)": g.apply(lambda x: 100.0 * (x < -950).mean()),
                         "% > -700": g.apply(lambda x: 100.0 * (x > -700).mean()), "voxels": g.size()})


def prepare_example(run_dir, *, size: int, seed: int, cache_dir=None, classes="nodule") -> tuple[Dataset, dict, str]:
    """`python -m difflung prepare <cache> --out <run_dir>/real_dataset --classes nodule` on the cached real CT.

    Returns (Dataset, the prepare summary without its timing, the equivalent command line). The summary is saved
    as `<run_dir>/real_dataset_summary.json`.
    """
    paths = fetch_pyradiomics(cache_dir, log=lambda s: None)
    folder = paths["lung1_image"].parent
    out = Path(run_dir) / runs.REAL_DATASET
    ds, summary = prepare(folder, out, classes=classes, size=size, seed=seed)
    summary = {k: v for k, v in summary.items() if k != "seconds"}  # keep the saved file reproducible
    write_json_atomic(Path(run_dir) / "real_dataset_summary.json", summary)
    command = f"python -m difflung prepare {folder} --out {out} --classes {classes} --size {size} --seed {seed}"
    return ds, summary, command


VOLUME_METRICS = (("lung_volume_ml", "lung", "lung field ml"), ("lung_volume_ml", "lung_right", "right lung ml"),
                  ("lung_volume_ml", "lung_left", "left lung ml"), ("airway_volume_ml", "airway", "airway ml"),
                  ("lesion_volume_ml", "lesion", "lesion ml"))  # metric, class, column of `lung_volume_table`
HU_METRICS = (("lung_hu_mean", "mean HU"), ("lung_hu_sd", "SD HU"), ("lung_laa950_pct", "% < -950 (LAA-950)"))


def metrics_rows(volume_table: pd.DataFrame | None, agreement: pd.DataFrame | None = None,
                 hu_stats: pd.DataFrame | None = None, *, seed: int) -> list[dict]:
    """Tidy rows for metrics.csv (model, metric, class, seed, patient, value): real lung volumes, phantom
    anatomy agreement, and healthy-lung HU statistics of both. A None table gives no rows."""
    def row(model, metric, cls, patient, value):
        return {"model": model, "metric": metric, "class": cls, "seed": seed, "patient": str(patient),
                "value": float(value)}

    rows = []
    for patient, r in (volume_table if volume_table is not None else pd.DataFrame()).iterrows():
        rows += [row("real-ct", metric, cls, patient, r[col]) for metric, cls, col in VOLUME_METRICS]
    for patient, r in (agreement if agreement is not None else pd.DataFrame()).iterrows():
        rows.append(row("phantom", "lung_dice_vs_truth", "lung", patient, r["lung_dice_vs_truth"]))
        rows.append(row("phantom", "lung_volume_ml", "lung", patient, r["lung_ml_truth"]))
    for source, r in (hu_stats if hu_stats is not None else pd.DataFrame()).iterrows():
        model = "real-ct" if source.startswith("real") else "phantom"
        rows += [row(model, metric, "lung", "all", r[col]) for metric, col in HU_METRICS]
    return rows
