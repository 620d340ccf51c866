"""Chapter 1, data preparation: the phantom cohort, its dataset artifact, and the checks a reader can see.

Each function is one section of `notebooks/01_data_preparation.py`: it computes, saves its figure or table
under the run folder, and returns what the notebook displays.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import instruments as I
from .. import labels as L
from .. import runs
from ..dataset import Dataset, SPLITS, Volume, lung_fraction, unwindow, volumes_to_slices, write_dataset
from ..diffusion.ablation import ablation_frequencies
from ..metrics import write_metrics
from ..phantom import PhantomConfig, phantom_cohort
from ..plots import hu_colorbar, legend_handles, plt, save_figure, show_ct, window_name
from ..scope import Scope, smoke_caveat

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
    fig, axes = plt.subplots(2, 3, figsize=(9, 6.6), layout="constrained")
    for j, (name, k) in enumerate(zs.items()):
        show_ct(axes[0, j], v.hu[k], title=f"phantom (truth) {v.patient}, {name} (slice {k})")
        show_ct(axes[1, j], v.hu[k], v.labels[k], alpha=0.45)
    hu_colorbar(fig, axes, shrink=0.8)
    present = sorted(set(np.unique(v.labels).tolist()) - {L.BACKGROUND, L.BODY})
    fig.legend(handles=legend_handles(present), loc="outside lower center", ncol=len(present), frameon=False)
    fig.suptitle(f"Phantom (truth), {window_name()}: top CT, bottom label overlay")
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
    """Computed checks against the literature: share of healthy lung and of emphysema below -950 HU, mean lung HU."""
    hu = np.concatenate([v.hu.ravel() for v in volumes])
    lab = np.concatenate([v.labels.ravel() for v in volumes])
    lung, emph = hu[lab == L.LUNG], hu[lab == L.EMPHYSEMA]
    return {
        "healthy_lung_below_950": float((lung < -950).mean()),
        "emphysema_below_950": float((emph < -950).mean()) if emph.size else float("nan"),
        "healthy_lung_mean_hu": float(lung.mean()),
        "healthy_lung_sd_hu": float(lung.std()),
    }


CHECK_NAMES = {"healthy_lung_mean_hu": ("healthy lung, mean", "HU"),
               "healthy_lung_sd_hu": ("healthy lung, standard deviation", "HU"),
               "healthy_lung_below_950": ("healthy lung below -950 HU", "share"),
               "emphysema_below_950": ("emphysema below -950 HU (LAA-950)", "share")}


def checks_table(checks: dict[str, float]) -> pd.DataFrame:
    """`hu_checks` as a two-column table (what, value) with units in words, for display."""
    from ..plots import pct, sig

    rows = [{"check": CHECK_NAMES[k][0], "value": pct(v) if CHECK_NAMES[k][1] == "share" else f"{sig(v)} HU"}
            for k, v in checks.items()]
    return pd.DataFrame(rows).set_index("check")


# ---------------------------------------------------------------------------------------------------------------
# HU signatures: does each class keep its texture at the run's size?

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
    to the dataset's size: the same check (`difflung.instruments.hu_signature`) on the split's slices at the
    phantom's resolution and after the resize, both in HU on the model window. Writes
    `<run_dir>/hu_signature.json`, which later chapters read with `difflung.instruments.read_signature`.
    """
    full = split_slices_hu(volumes, ds.manifest["splits"][split]["patients"])
    part = ds.split(split)
    resized = (unwindow(part.images), part.labels)
    classes = [c for c in ds.classes if L.BY_ID[c].in_lung]
    table = I.signature_survival(full, resized, classes, ds.size)
    I.write_signature(run_dir, table, split=split, full_size=int(full[0].shape[-1]), source=ds.manifest["source"])
    return table


def signature_display(table: pd.DataFrame, full_size: int) -> pd.DataFrame:
    """The signature table for the page: one row per class, readable column names, kept/lost in words."""
    from ..plots import pct, sig

    size = int(table["size"].iloc[0])
    thr = f"% < {I.EMPHYSEMA_THRESHOLD_HU:g} HU"
    out = pd.DataFrame({"class": table["class"], "check": table["check"]})
    for tag, px in (("full", full_size), ("size", size)):
        out[f"{px} px: mean HU"] = table[f"{tag}_mean_hu"].map(sig)
        out[f"{px} px: {thr}"] = table[f"{tag}_share_below_threshold"].map(pct)
        out[f"{px} px: signature"] = [("kept" if ok else "lost") if chk != "none (anatomy)" else "no check"
                                      for ok, chk in zip(table[f"{tag}_ok"], table["check"])]
    return out.set_index("class")


def not_measurable(table: pd.DataFrame) -> dict[str, str]:
    """class -> reason, for the classes whose signature is lost at the run's size."""
    return {r["class"]: r["reason"] for r in table.to_dict("records") if not r["measurable"]}


# ---------------------------------------------------------------------------------------------------------------
# class frequencies: the f_i CBMAT uses, and the in-lung fractions

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


def figure_frequencies(freq: pd.DataFrame, run_dir, *, seed: int):
    """Two panels per split: the f_i CBMAT uses (share of non-background pixels) and the in-lung fractions."""
    import seaborn as sns

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), layout="constrained")
    panels = (("f_cbmat", "$f_i$ used by CBMAT", "share of non-background pixels (log)"),
              ("f_in_lung", "in-lung fraction (not used by CBMAT)", "share of the lung field (log)"))
    for ax, (col, title, ylabel) in zip(axes, panels):
        data = freq.dropna(subset=[col])
        sns.barplot(data, x="class", y=col, hue="split", ax=ax, legend=ax is axes[1])
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel(ylabel)
        ax.set_xlabel("")
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    save_figure(fig, Path(run_dir) / "class_frequencies.png", seed=seed)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# the chapter's numbers and its scope box

def write_chapter_metrics(run_dir, ds: Dataset, checks: dict, *, seed: int, signature: pd.DataFrame | None = None,
                          extra_rows=()) -> pd.DataFrame:
    """Write this chapter's numbers to `<run_dir>/metrics.csv` (tidy long form) and return them."""
    rows = [{"model": "phantom", "metric": k, "class": "lung" if "lung" in k else "emphysema", "seed": seed,
             "value": v} for k, v in checks.items()]
    freq = frequency_table(ds)
    for s in SPLITS:
        part = freq[freq["split"] == s]
        rows += [{"model": "phantom", "metric": f"f_cbmat_{s}", "class": r["class"], "seed": seed,
                  "value": r["f_cbmat"]} for _, r in part.iterrows()]
        rows += [{"model": "phantom", "metric": f"f_in_lung_{s}", "class": name, "seed": seed, "value": f}
                 for name, f in ds.frequencies(s, "in_lung").items()]
        rows.append({"model": "phantom", "metric": f"n_slices_{s}", "class": "all", "seed": seed,
                     "value": ds.manifest["splits"][s]["n_slices"]})
    for r in ([] if signature is None else signature.to_dict("records")):
        for tag in ("full", "size"):
            rows += [{"model": "phantom", "metric": f"hu_{stat}_{tag}", "class": r["class"], "seed": seed,
                      "value": r[f"{tag}_{stat}"]} for stat in ("mean_hu", "share_below_threshold")]
        rows.append({"model": "phantom", "metric": "hu_signature_measurable", "class": r["class"], "seed": seed,
                     "value": float(r["measurable"])})
    rows += list(extra_rows)
    write_metrics(run_dir, rows)
    return pd.DataFrame(rows)


def scope(profile: str, ds: Dataset, signature: pd.DataFrame, *, real_ct: bool) -> Scope:
    """The chapter's "What this run can and cannot show" box, from its own numbers."""
    lost = not_measurable(signature)
    kept = [c for c in signature["class"] if c not in lost and I.signature_check(c) != "none (anatomy)"]
    n_test = len(ds.manifest["splits"]["test"]["patients"])
    s = Scope(profile, facts={"image size": f"{ds.size} px", "patients": str(len(ds.manifest["patients"])),
                              "test patients": str(n_test)})
    s.can.append("Whether the phantom's intensities match the literature ranges per class, and its class "
                 "frequencies per split (the f_i CBMAT uses).")
    if kept:
        s.can.append(f"Texture (HU) of {', '.join(kept)} at {ds.size} px: the signature survives the resize.")
    s.cannot += [f"Texture (HU) of {c} at this size, so later chapters report it as not measurable: {why}."
                 for c, why in lost.items()]
    s.cannot.append("How the method behaves on real emphysema, fibrosis or ground-glass opacity: the real CT "
                    "shown here has no such labels (only a nodule and a tumour), so every rare-class number in "
                    "this book comes from the phantom." if real_ct else
                    "Anything about real CT: this run skipped the real-CT sections.")
    s.cannot += smoke_caveat(profile)
    return s


def synthesis_display(report: pd.DataFrame) -> pd.DataFrame:
    """The mask synthesis report (`difflung.masksynth`) for the page: shares of the lung field as percentages."""
    from ..plots import pct

    r = report.set_index("class")
    return pd.DataFrame({
        "target share": r["target_fraction"].map(pct),
        "share in the training masks": r["fraction_before"].map(pct),
        "share in the new masks (pooled)": r["fraction_synthetic"].map(pct),
        "largest share in one new mask": r["max_fraction_synthetic"].map(pct),
        "slices built on": [f"{e} of {t}" for e, t in zip(r["slices_eligible"], r["slices_total"])],
        "lesions to copy": r["lesions_in_bank"],
    })
