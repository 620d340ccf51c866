"""Chapter 1, real chest CT: the pyradiomics lung CT through the same preparation as the phantom.

One function per section of the real-CT part of `notebooks/01_data_preparation.py`. Each takes explicit paths
and parameters (and `seed` where anything is random or recorded), saves its figure under the run folder with
provenance (`difflung.plots.save_figure`), and returns what the notebook displays.

    cases = load_real_ct()                                   # fetch (idempotent) + read + anatomy + labels
    figure_real_vs_phantom(cases, phantom_volumes, run_dir, seed=seed)
    figure_anatomy_overlays(cases, run_dir, seed=seed)
    lung_volume_table(cases)
    agreement = phantom_anatomy_agreement(phantom_volumes)
    hu = hu_lung_samples(cases, phantom_volumes, seed=seed); figure_real_vs_phantom_hu(hu, run_dir, seed=seed)
    mask_synthesis_example(labels, run_dir, boost={...}, seed=seed)
    prepare_example(run_dir, size=size, seed=seed)
    real_metrics_rows(volume_table, agreement, hu_stats, seed=seed)   # -> write_chapter_metrics(extra_rows=...)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import labels as L
from .. import runs
from ..anatomy import AnatomyConfig, segment
from ..classmap import load_classmap
from ..dataset import Volume
from ..plots import hu_colorbar, legend_handles, plt, save_figure, show_ct, window_name
from ..prepare import Case, prepare, prepare_volume
from ..provenance import write_json_atomic
from ..realdata import CREDIT, cached_paths, fetch_pyradiomics

LEVELS = {"apex": 0.12, "middle": 0.5, "base": 0.88}  # fractions of each volume's own lung extent in z


@dataclass
class RealCase:
    volume: Volume  # HU and project labels (z, y, x), z from apex to base
    row: dict  # the `prepare` summary row: volumes in ml, voxel counts, slices with lung, warnings


def load_real_ct(cache_dir=None, *, classes="nodule", fetch: bool = True,
                 anatomy: AnatomyConfig | None = None) -> list[RealCase]:
    """The pyradiomics lung1/lung2 CT with anatomy and their lesion labels mapped by `classes`.

    Args:
        cache_dir: where `fetch-data` put them (default `difflung.realdata.default_cache_dir()`).
        classes: class map for their label files (both hold one value, 1: a nodule / a tumour).
        fetch: run the idempotent fetch first (downloads from PyPI only when the cache is missing or wrong).
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


def _crop_body(hu, lab, margin=8):
    ys, xs = np.nonzero(lab > 0)
    if ys.size == 0:
        return hu, lab
    y0, y1 = max(ys.min() - margin, 0), ys.max() + margin + 1
    x0, x1 = max(xs.min() - margin, 0), xs.max() + margin + 1
    return hu[y0:y1, x0:x1], lab[y0:y1, x0:x1]


def figure_real_vs_phantom(cases: list[RealCase], phantom: list[Volume], run_dir, *, seed: int,
                           phantom_patient: int = 0):
    """Real slices beside phantom slices at matching levels (apex / middle / base of each one's lung extent)."""
    rows = [(c.volume, f"real {c.volume.patient}") for c in cases]
    rows.append((phantom[phantom_patient], f"phantom (truth) {phantom[phantom_patient].patient}"))
    fig, axes = plt.subplots(len(rows), 3, figsize=(9.8, 3 * len(rows)), layout="constrained")
    used = {}
    for i, (v, name) in enumerate(rows):
        lv = lung_levels(v.labels)
        used[name] = lv
        for j, (level, k) in enumerate(lv.items()):
            hu, _ = _crop_body(v.hu[k], v.labels[k])
            show_ct(axes[i, j], hu, title=f"{name}, {level} (slice {k}, z {k * v.spacing[0]:.0f} mm)")
    hu_colorbar(fig, axes, shrink=0.6)
    fig.suptitle(f"Real CT (pyradiomics lung1/lung2) and phantom (truth) at matching lung levels, {window_name()}")
    save_figure(fig, Path(run_dir) / "real_vs_phantom_levels.png", config={"levels": used}, seed=seed)
    return fig


def figure_anatomy_overlays(cases: list[RealCase], run_dir, *, seed: int):
    """Classical anatomy (body outline, lung, airway) and the mapped lesion label on the real CT."""
    fig, axes = plt.subplots(len(cases), 4, figsize=(13.8, 3.4 * len(cases)), squeeze=False, layout="constrained")
    for i, c in enumerate(cases):
        v = c.volume
        lv = lung_levels(v.labels)
        lesion_z = np.flatnonzero(np.isin(v.labels, L.PATHOLOGY_IDS).any(axis=(1, 2)))
        ks = [("upper", min(lv["apex"] + 2, lv["middle"])), ("middle", lv["middle"]), ("base", lv["base"])]
        ks.append(("lesion", int(lesion_z[len(lesion_z) // 2])) if lesion_z.size else ("upper airway", lv["apex"]))
        for j, (name, k) in enumerate(ks):
            hu, lab = _crop_body(v.hu[k], v.labels[k])
            show_ct(axes[i, j], hu, lab, alpha=0.4, title=f"{v.patient} {name} (slice {k})")
            axes[i, j].contour(lab > 0, levels=[0.5], colors=[L.BY_NAME["body"].color], linewidths=0.8)
    present = sorted(set().union(*[set(np.unique(c.volume.labels).tolist()) for c in cases]) - {L.BACKGROUND})
    hu_colorbar(fig, axes, shrink=0.6)
    fig.legend(handles=legend_handles(present), loc="outside lower center", ncol=len(present), frameon=False)
    fig.suptitle(f"Anatomy found by thresholds and components (body outline, lung, airway) + the files' own lesion, "
                 f"{window_name()}")
    save_figure(fig, Path(run_dir) / "real_anatomy_overlays.png", config={"patients": [c.volume.patient for c in cases]},
                seed=seed)
    return fig


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


def figure_real_vs_phantom_hu(samples: pd.DataFrame, run_dir, *, seed: int):
    """Density histograms of healthy-lung HU, real CT against phantom, with the literature band of normal lung
    (`labels.LabelClass.hu_range` of lung)."""
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    sns.histplot(samples, x="hu", hue="source", stat="density", common_norm=False, bins=120,
                 binrange=(-1050, -450), element="step", fill=False, ax=ax)
    lo, hi = L.BY_NAME["lung"].hu_range
    ax.axvspan(lo, hi, color="0.85", zorder=0, label="normal lung (literature)")
    ax.axvline(-950, color="0.4", ls=":", lw=1)
    ax.set_xlabel("HU of healthy lung voxels (label 2)")
    ax.set_title("Healthy lung attenuation: real CT vs phantom (dotted: -950 HU)")
    fig.tight_layout()
    save_figure(fig, Path(run_dir) / "real_vs_phantom_lung_hu.png", config={"n": int(len(samples))}, seed=seed)
    return fig


def mask_synthesis_example(labels: np.ndarray, run_dir, *, boost: dict, seed: int, n_masks: int | None = None,
                           n_show: int = 4, sources: np.ndarray | None = None, **kwargs):
    """Synthesise masks with boosted rare classes; show before/after pairs; return (fig, report, MaskSynthesis)."""
    from ..masksynth import synthesize_masks

    syn = synthesize_masks(labels, boost, np.random.default_rng(seed), n_masks=n_masks, sources=sources, **kwargs)
    n_show = min(n_show, len(syn.labels))
    fig, axes = plt.subplots(2, n_show, figsize=(2.6 * n_show, 5.4), squeeze=False)
    cmap, norm = L.colormap()
    for j in range(n_show):
        src = int(syn.source_index[j])
        ys, xs = np.nonzero(labels[src] > 0)  # same crop (the body) for the pair
        box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1)) if ys.size else (slice(None),) * 2
        for i, (m, title) in enumerate(((labels[src], f"input slice {src}"), (syn.labels[j], f"synthetic {j}"))):
            axes[i, j].imshow(m[box], cmap=cmap, norm=norm, interpolation="nearest")
            axes[i, j].set_title(title, fontsize=9)
            axes[i, j].set_axis_off()
    present = sorted(set(np.unique(syn.labels[:n_show]).tolist()) | set(np.unique(labels[syn.source_index[:n_show]]).tolist()))
    fig.legend(handles=legend_handles(present), loc="lower center", ncol=len(present), frameon=False)
    fig.suptitle("Mask synthesis: lesions rotated, copied and dilated into healthy lung (top: input, bottom: new)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    config = {"boost": {str(k): v for k, v in boost.items()}, "n_masks": int(len(syn.labels)), **kwargs}
    save_figure(fig, Path(run_dir) / "mask_synthesis_examples.png", config=config, seed=seed)
    return fig, syn.report, syn


def prepare_example(run_dir, *, size: int, seed: int, cache_dir=None, classes="nodule"):
    """The worked example: `python -m difflung prepare <cache> --out <run_dir>/real_dataset --classes nodule`.

    Returns (Dataset, per-patient summary DataFrame, the equivalent command line). The JSON summary is saved as
    `<run_dir>/real_dataset_summary.json`.
    """
    paths = fetch_pyradiomics(cache_dir, log=lambda s: None)
    folder = paths["lung1_image"].parent
    out = Path(run_dir) / runs.REAL_DATASET
    ds, summary = prepare(folder, out, classes=classes, size=size, seed=seed)
    summary = {k: v for k, v in summary.items() if k != "seconds"}  # keep the saved file reproducible
    write_json_atomic(Path(run_dir) / "real_dataset_summary.json", summary)
    table = pd.DataFrame([{
        "patient": r["patient"], "slices kept": r["slices_kept"], "of": r["slices_total"],
        "spacing mm (z, y, x)": ", ".join(f"{s:.3g}" for s in r["spacing_mm"]),
        "lung ml": r["lung_volume_ml"], **{f"{k} voxels": n for k, n in r["voxel_counts"].items()},
    } for r in summary["patients"]]).set_index("patient")
    command = f"python -m difflung prepare {folder} --out {out} --classes {classes} --size {size} --seed {seed}"
    return ds, table, command


def real_metrics_rows(volume_table: pd.DataFrame | None, agreement: pd.DataFrame | None = None,
                      hu_stats: pd.DataFrame | None = None, *, seed: int) -> list[dict]:
    """Tidy rows for metrics.csv (model, metric, class, seed, patient, value): real lung volumes, phantom
    anatomy agreement, and healthy-lung HU statistics of both."""
    rows = []
    for patient, r in (volume_table if volume_table is not None else pd.DataFrame()).iterrows():
        for metric, cls, col in (("lung_volume_ml", "lung", "lung field ml"), ("lung_volume_ml", "lung_right", "right lung ml"),
                                 ("lung_volume_ml", "lung_left", "left lung ml"), ("airway_volume_ml", "airway", "airway ml"),
                                 ("lesion_volume_ml", "lesion", "lesion ml")):
            rows.append({"model": "real-ct", "metric": metric, "class": cls, "seed": seed, "patient": str(patient),
                         "value": float(r[col])})
    if agreement is not None:
        for patient, r in agreement.iterrows():
            rows.append({"model": "phantom", "metric": "lung_dice_vs_truth", "class": "lung", "seed": seed,
                         "patient": str(patient), "value": float(r["lung_dice_vs_truth"])})
            rows.append({"model": "phantom", "metric": "lung_volume_ml", "class": "lung", "seed": seed,
                         "patient": str(patient), "value": float(r["lung_ml_truth"])})
    if hu_stats is not None:
        for source, r in hu_stats.iterrows():
            model = "real-ct" if source.startswith("real") else "phantom"
            for metric, col in (("lung_hu_mean", "mean HU"), ("lung_hu_sd", "SD HU"), ("lung_laa950_pct", "% < -950 (LAA-950)")):
                rows.append({"model": model, "metric": metric, "class": "lung", "seed": seed, "patient": "all",
                             "value": float(r[col])})
    return rows


def credit() -> str:
    """The line the book prints under every real-CT figure."""
    return CREDIT
