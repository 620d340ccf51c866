"""The phantom cohort as a dataset artifact, and the numbers measured on it (chapter 1's computations).

    ds, volumes = build_phantom(run_dir, n_patients=10, slices_per_patient=8, phantom_size=128, size=32, seed=0)
    checks = hu_checks(volumes)                        # healthy lung / emphysema against the literature
    signature = hu_signature(ds, volumes, run_dir)     # does each class keep its HU signature at ds.size?
    freq = frequency_table(ds)                         # the f_i CBMAT uses and the in-lung fractions
    write_cohort_metrics(run_dir, ds, checks, seed=0, signature=signature)

Every random draw takes its seed explicitly (numpy Generator); the same seed writes the same bytes.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from difflung.judging import instruments as I
from difflung import labels as L
from difflung.core import runs
from difflung.data.dataset import Dataset, SPLITS, Volume, lung_fraction, unwindow, volumes_to_slices, write_dataset
from difflung.diffusion.ablation import ablation_frequencies
from difflung.core.metrics_csv import write_metrics
from difflung.phantom import PhantomConfig, phantom_cohort


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
        The dataset artifact and the full-resolution volumes (for the HU figures of chapter 1).
    """
    knobs = {k: v for k, v in dict(emphysema=emphysema, ggo=ggo, fibrosis=fibrosis).items() if v is not None}
    cfg = PhantomConfig(size=phantom_size, slices_per_patient=slices_per_patient, **knobs)
    volumes = phantom_cohort(n_patients, np.random.default_rng(seed), cfg)
    slices, patients = volumes_to_slices(volumes, size)
    config = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(cfg).items()}  # JSON: no tuples
    params = {"generator": "difflung.phantom", "phantom_config": config, "n_patients": n_patients,
              "size": size, "split_fractions": list(split_fractions)}
    ds = write_dataset(Path(run_dir) / runs.PHANTOM_DATASET, slices, source="phantom", params=params, seed=seed,
                       fractions=split_fractions, patients=patients)
    return ds, volumes


def _pooled(volumes: list[Volume]) -> tuple[np.ndarray, np.ndarray]:
    """Every voxel's HU and label across the cohort, flattened: ((n,), (n,))."""
    return np.concatenate([v.hu.ravel() for v in volumes]), np.concatenate([v.labels.ravel() for v in volumes])


def hu_samples(volumes: list[Volume], per_class: int = 20000, seed: int = 0) -> pd.DataFrame:
    """A random sample of pixel HU values per class across the cohort (long form: class, hu)."""
    rng = np.random.default_rng(seed)
    hu, lab = _pooled(volumes)
    parts = []
    for cid in sorted(set(np.unique(lab).tolist()) - {L.BACKGROUND}):
        vals = hu[lab == cid]
        take = rng.choice(len(vals), size=min(per_class, len(vals)), replace=False)
        parts.append(pd.DataFrame({"class": L.BY_ID[cid].name, "hu": np.sort(vals[take])}))
    return pd.concat(parts, ignore_index=True)


def hu_checks(volumes: list[Volume]) -> dict[str, float]:
    """Computed checks against the literature: share of healthy lung and of emphysema below -950 HU, mean lung HU."""
    hu, lab = _pooled(volumes)
    lung, emph = hu[lab == L.LUNG], hu[lab == L.EMPHYSEMA]
    return {
        "healthy_lung_below_950": float((lung < -950).mean()),
        "emphysema_below_950": float((emph < -950).mean()) if emph.size else float("nan"),
        "healthy_lung_mean_hu": float(lung.mean()),
        "healthy_lung_sd_hu": float(lung.std()),
    }


def split_slices_hu(volumes: list[Volume], patients, min_lung_fraction: float = 0.01):
    """HU (clipped to the model window) and labels of the slices `volumes_to_slices` keeps, at the phantom's own
    resolution, for `patients`: ((N, S0, S0), (N, S0, S0))."""
    keep = [(v.hu[k], v.labels[k]) for v in volumes if v.patient in set(patients)
            for k in range(v.hu.shape[0]) if lung_fraction(v.labels[k]) >= min_lung_fraction]
    if not keep:
        raise ValueError(f"no slice with lung for patients {sorted(patients)}")
    hu = np.clip(np.stack([h for h, _ in keep]), *L.MODEL_WINDOW)
    return hu, np.stack([lab for _, lab in keep])


def hu_signature(ds: Dataset, volumes: list[Volume], run_dir, *, split: str = "train") -> pd.DataFrame:
    """Per class of the dataset (anatomy outside the lung left out), whether its HU signature survives resizing
    to the dataset's size: the same check (`difflung.judging.instruments.hu_signature`) on the split's slices at the
    phantom's resolution and after the resize, both in HU on the model window. Writes
    `<run_dir>/hu_signature.json`, which later chapters read with `difflung.judging.instruments.read_signature`.
    """
    full = split_slices_hu(volumes, ds.manifest["splits"][split]["patients"])
    part = ds.split(split)
    resized = (unwindow(part.images), part.labels)
    classes = [c for c in ds.classes if L.BY_ID[c].in_lung]
    table = I.signature_survival(full, resized, classes, ds.size)
    I.write_signature(run_dir, table, split=split, full_size=int(full[0].shape[-1]), source=ds.manifest["source"])
    return table


def not_measurable(signature: pd.DataFrame) -> dict[str, str]:
    """class -> reason, for the classes whose signature (`hu_signature`) is lost at the run's size."""
    return {r["class"]: r["reason"] for r in signature.to_dict("records") if not r["measurable"]}


def frequency_table(ds: Dataset) -> pd.DataFrame:
    """Per split and class (background left out): `f_cbmat`, the class's share of the non-background pixels
    (the f_i of `difflung.diffusion.ablation.ablation_frequencies`, which CBMAT uses), and `f_in_lung`, its share
    of the lung field (NaN for classes outside the lung)."""
    rows = []
    for s in SPLITS:
        in_lung = ds.frequencies(s, "in_lung")
        for name, f in ablation_frequencies(ds, s).items():
            if name != "background":
                rows.append({"split": s, "class": name, "f_cbmat": f, "f_in_lung": in_lung.get(name, np.nan)})
    return pd.DataFrame(rows)


def frequency_pivot(freq: pd.DataFrame, column: str) -> pd.DataFrame:
    """Class x split pivot of one frequency column, rows in the label scheme's order, NaN rows dropped."""
    order = {c.name: c.id for c in L.CLASSES}
    pv = freq.pivot(index="class", columns="split", values=column)[list(SPLITS)].dropna(how="all")
    return pv.loc[sorted(pv.index, key=order.get)]


def write_cohort_metrics(run_dir, ds: Dataset, checks: dict, *, seed: int, signature: pd.DataFrame | None = None,
                         extra_rows=(), model: str = "phantom") -> pd.DataFrame:
    """Write chapter 1's numbers to `<run_dir>/metrics.csv` (tidy long form: model, metric, class, seed, value)
    and return them: the HU checks, the frequencies and slice counts per split, the HU signature, `extra_rows`.
    `model` names the dataset in the rows ("dataset" for a prepared one)."""
    def row(metric, cls, value):
        return {"model": model, "metric": metric, "class": cls, "seed": seed, "value": value}

    rows = [row(k, "lung" if "lung" in k else "emphysema", v) for k, v in checks.items()]
    freq = frequency_table(ds)
    for s in SPLITS:
        rows += [row(f"f_cbmat_{s}", r["class"], r["f_cbmat"]) for _, r in freq[freq["split"] == s].iterrows()]
        rows += [row(f"f_in_lung_{s}", name, f) for name, f in ds.frequencies(s, "in_lung").items()]
        rows.append(row(f"n_slices_{s}", "all", ds.manifest["splits"][s]["n_slices"]))
    for r in ([] if signature is None else signature.to_dict("records")):
        rows += [row(f"hu_{stat}_{tag}", r["class"], r[f"{tag}_{stat}"])
                 for tag in ("full", "size") for stat in ("mean_hu", "share_below_threshold")]
        rows.append(row("hu_signature_measurable", r["class"], float(r["measurable"])))
    rows += list(extra_rows)
    write_metrics(run_dir, rows)
    return pd.DataFrame(rows)
