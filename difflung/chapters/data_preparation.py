"""Chapter 1, data preparation: the phantom cohort, its dataset artifact, and the checks a reader can see.

Each function is one section of `notebooks/01_data_preparation.py`: it computes, saves its figure or table
under the run folder, and returns what the notebook displays.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import labels as L
from .. import runs
from ..dataset import Dataset, SPLITS, Volume, volumes_to_slices, write_dataset
from ..metrics import write_metrics
from ..phantom import PhantomConfig, phantom_cohort
from ..plots import legend_handles, plt, save_figure, show_ct

PATHOLOGIES = ("emphysema", "ggo", "fibrosis")


def build_phantom(run_dir, *, n_patients: int, slices_per_patient: int, phantom_size: int, size: int, seed: int,
                  emphysema: float | None = None, ggo: float | None = None, fibrosis: float | None = None,
                  split_fractions=(0.6, 0.2, 0.2)) -> tuple[Dataset, list[Volume]]:
    """Generate the phantom cohort from `seed` and write it as the dataset artifact `<run_dir>/dataset`.

    Args:
        run_dir: the chapter's run folder.
        n_patients, slices_per_patient: cohort size.
        phantom_size: pixels per side at which the phantom is drawn (then resized to `size`).
        size: the profile's training size.
        seed: seeds the cohort (numpy Generator) and the patient split.
        emphysema, ggo, fibrosis: target pathology fractions of lung pixels (None keeps the phantom's default).

    Returns:
        The dataset artifact and the full-resolution volumes (for the HU figures of this chapter).
    """
    knobs = {k: v for k, v in dict(emphysema=emphysema, ggo=ggo, fibrosis=fibrosis).items() if v is not None}
    cfg = PhantomConfig(size=phantom_size, slices_per_patient=slices_per_patient, **knobs)
    volumes = phantom_cohort(n_patients, np.random.default_rng(seed), cfg)
    slices, patients = volumes_to_slices(volumes, size)
    params = {"generator": "difflung.phantom", "phantom_config": _asdict(cfg), "n_patients": n_patients,
              "size": size, "split_fractions": list(split_fractions)}
    ds = write_dataset(Path(run_dir) / runs.PHANTOM_DATASET, slices, source="phantom", params=params, seed=seed,
                       fractions=split_fractions, patients=patients)
    return ds, volumes


def _asdict(cfg) -> dict:
    from dataclasses import asdict

    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}


def split_summary(ds: Dataset) -> pd.DataFrame:
    """Patients and slices per split (no patient is in two splits)."""
    rows = [{"split": s, "patients": len(ds.manifest["splits"][s]["patients"]),
             "slices": ds.manifest["splits"][s]["n_slices"],
             "patient ids": ", ".join(ds.manifest["splits"][s]["patients"])} for s in SPLITS]
    return pd.DataFrame(rows).set_index("split")


def figure_levels(volumes: list[Volume], run_dir, *, seed: int, patient: int = 0):
    """Apex, middle and base slices of one phantom patient in the lung window, without and with labels."""
    v = volumes[patient]
    zs = {"apex": int(0.12 * (len(v.hu) - 1)), "middle": int(0.5 * (len(v.hu) - 1)), "base": int(0.88 * (len(v.hu) - 1))}
    fig, axes = plt.subplots(2, 3, figsize=(9, 6.4))
    for j, (name, k) in enumerate(zs.items()):
        show_ct(axes[0, j], v.hu[k], title=f"{v.patient} {name} (slice {k})")
        show_ct(axes[1, j], v.hu[k], v.labels[k], alpha=0.45)
    present = sorted(set(np.unique(v.labels).tolist()) - {L.BACKGROUND, L.BODY})
    fig.legend(handles=legend_handles(present), loc="lower center", ncol=len(present), frameon=False)
    fig.suptitle("Phantom, lung window W1500/L-600: top CT, bottom label overlay")
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    save_figure(fig, Path(run_dir) / "phantom_levels.png", config={"patient": v.patient, "slices": zs}, seed=seed)
    return fig


def hu_samples(volumes: list[Volume], per_class: int = 20000, seed: int = 0) -> pd.DataFrame:
    """A random sample of pixel HU values per class across the cohort (long form: class, hu)."""
    rng = np.random.default_rng(seed)
    hu = np.concatenate([v.hu.ravel() for v in volumes])
    lab = np.concatenate([v.labels.ravel() for v in volumes])
    parts = []
    for cid in sorted(set(np.unique(lab).tolist()) - {L.BACKGROUND}):
        vals = hu[lab == cid]
        take = rng.choice(len(vals), size=min(per_class, len(vals)), replace=False)
        parts.append(pd.DataFrame({"class": L.BY_ID[cid].name, "hu": np.sort(vals[take])}))
    return pd.concat(parts, ignore_index=True)


def figure_hu_histograms(samples: pd.DataFrame, run_dir, *, seed: int):
    """Per-class HU histograms with each class's literature HU range (`labels.LabelClass.hu_range`) shaded."""
    import seaborn as sns

    names = list(dict.fromkeys(samples["class"]))
    ncol = min(4, len(names))
    nrow = -(-len(names) // ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(3.0 * ncol, 2.6 * nrow), squeeze=False)
    for ax in axes.ravel()[len(names):]:
        ax.set_axis_off()
    for ax, name in zip(axes.ravel(), names):
        c = L.BY_NAME[name]
        sns.histplot(samples.loc[samples["class"] == name, "hu"], bins=60, binrange=(-1100, 500), ax=ax,
                     color=c.color, stat="density", element="step")
        if c.hu_range:
            ax.axvspan(*c.hu_range, color="grey", alpha=0.2, lw=0)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("HU")
        ax.set_yticks([])
        ax.set_ylabel("")
    fig.suptitle("Phantom HU per class (grey band: literature range)")
    fig.tight_layout()
    save_figure(fig, Path(run_dir) / "phantom_hu_histograms.png", seed=seed)
    return fig


def hu_checks(volumes: list[Volume]) -> dict[str, float]:
    """Computed checks against the literature: share of healthy lung and of emphysema below -950 HU (the
    emphysema threshold), mean lung HU (normal parenchyma lies near -850 to -910 HU)."""
    hu = np.concatenate([v.hu.ravel() for v in volumes])
    lab = np.concatenate([v.labels.ravel() for v in volumes])
    lung, emph = hu[lab == L.LUNG], hu[lab == L.EMPHYSEMA]
    return {
        "healthy_lung_below_950": float((lung < -950).mean()),
        "emphysema_below_950": float((emph < -950).mean()) if emph.size else float("nan"),
        "healthy_lung_mean_hu": float(lung.mean()),
        "healthy_lung_sd_hu": float(lung.std()),
    }


def frequency_table(ds: Dataset) -> pd.DataFrame:
    """Per split and class, the pixel frequency f_i within the lung field (the input of CBMAT)."""
    rows = []
    for s in SPLITS:
        for name, f in ds.frequencies(s, "in_lung").items():
            rows.append({"split": s, "class": name, "f_in_lung": f})
    return pd.DataFrame(rows)


def figure_frequencies(freq: pd.DataFrame, run_dir, *, seed: int):
    import seaborn as sns

    fig, ax = plt.subplots(figsize=(6.5, 3))
    sns.barplot(freq, x="class", y="f_in_lung", hue="split", ax=ax)
    ax.set_yscale("log")
    ax.set_ylabel("fraction of lung pixels (log)")
    ax.set_title("Class frequency within the lung field, per split")
    fig.tight_layout()
    save_figure(fig, Path(run_dir) / "class_frequencies.png", seed=seed)
    return fig


def write_chapter_metrics(run_dir, ds: Dataset, checks: dict, *, seed: int, extra_rows=()) -> pd.DataFrame:
    """Write this chapter's numbers to `<run_dir>/metrics.csv` (tidy long form) and return them."""
    rows = [{"model": "phantom", "metric": k, "class": "lung" if "lung" in k else "emphysema", "seed": seed,
             "value": v} for k, v in checks.items()]
    for s in SPLITS:
        rows += [{"model": "phantom", "metric": f"f_in_lung_{s}", "class": name, "seed": seed, "value": f}
                 for name, f in ds.frequencies(s, "in_lung").items()]
        rows.append({"model": "phantom", "metric": f"n_slices_{s}", "class": "all", "seed": seed,
                     "value": ds.manifest["splits"][s]["n_slices"]})
    rows += list(extra_rows)
    write_metrics(run_dir, rows)
    return pd.DataFrame(rows)
