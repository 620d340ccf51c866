"""Chapter 1, data preparation: the figures and tables of `notebooks/01_data_preparation.py` (the phantom) and of
`notebooks/01_own_dataset.py` (the page that stands in for it when a run uses a prepared dataset, `--set dataset=`;
its functions are the `own_*` ones at the end).

The numbers come from `difflung.data.phantom_dataset` (the phantom cohort, its HU checks, signature and frequencies) and
`difflung.data.realct` (the real pyradiomics CT); each function here draws one section's figure or table, saves a
figure under the run folder with provenance (`difflung.plots.save_figure`) and returns what the page shows.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from difflung import labels as L
from difflung.chapters.scope import Scope, glue_facts, smoke_caveat  # noqa: F401  (glue_facts: for the page)
from difflung.data import masksynth, own_dataset, phantom_dataset as cohort, realct
from difflung.data.dataset import Dataset, SPLITS, Volume, unwindow
from difflung.data.phantom_dataset import frequency_pivot, hu_samples, not_measurable
from difflung.data.realct import RealCase, crop_body, lung_levels
from difflung.data.realdata import CREDIT
from difflung.judging import instruments as I
from difflung.plots import hu_colorbar, legend_handles, pct, plt, save_figure, show_ct, sig, table, window_name


def page_facts(*, size: int, phantom_size: int) -> dict:
    """Values the page's prose quotes (glued, never typed): image sizes, the display window, the HU threshold."""
    return {"size": size, "phantom_size": phantom_size, "lung_window": window_name(),
            "laa_hu": f"{I.EMPHYSEMA_THRESHOLD_HU:g}"}


def table_labels():
    """The label scheme (`difflung.labels`): id, name, colour, in lung, pathology, HU range (yes/no, not
    True/False)."""
    t = L.legend_table()
    for c in t.columns:
        if t[c].dtype == bool:
            t[c] = t[c].map({True: "yes", False: "no"})
    return t


# ---------------------------------------------------------------------------------------------------------------
# the phantom cohort (`difflung.data.phantom_dataset`)

def build_phantom(run_dir, *, n_patients: int, slices_per_patient: int, phantom_size: int, size: int,
                  seed: int) -> tuple[Dataset, list[Volume]]:
    """Draw the phantom cohort and write the dataset artifact (`phantom_dataset.build_phantom`); forget a prepared
    dataset an earlier run in this folder used (`--set dataset=`), so the pages say phantom again."""
    (Path(run_dir) / own_dataset.SOURCE_FILE).unlink(missing_ok=True)
    return cohort.build_phantom(run_dir, n_patients=n_patients, slices_per_patient=slices_per_patient,
                                phantom_size=phantom_size, size=size, seed=seed)


def cohort_facts(ds: Dataset, *, n_patients: int) -> dict:
    """Patients drawn and the slices with lung they gave (all splits), for the page's prose."""
    return {"n_patients": n_patients, "n_slices_total": int(table_splits(ds)["slices"].sum())}


def hu_checks(volumes: list[Volume]) -> dict[str, float]:
    """The phantom's HU against the literature (`phantom_dataset.hu_checks`): healthy-lung mean, SD, LAA-950."""
    return cohort.hu_checks(volumes)


def hu_signature(ds: Dataset, volumes: list[Volume], run_dir) -> pd.DataFrame:
    """Which classes keep their HU signature at the run's size (`phantom_dataset.hu_signature`); writes
    `<run_dir>/hu_signature.json`, which later chapters read."""
    return cohort.hu_signature(ds, volumes, run_dir)


def signature_facts(signature: pd.DataFrame) -> dict:
    """The classes whose signature the resize loses, in words ("no class" when none), and the verb's number."""
    lost = not_measurable(signature)
    return {"sig_lost": ", ".join(lost) if lost else "no class", "sig_verb": "loses" if len(lost) == 1 else "lose"}


def frequency_table(ds: Dataset) -> pd.DataFrame:
    """f_i for CBMAT and in-lung fractions per split and class (`phantom_dataset.frequency_table`)."""
    return cohort.frequency_table(ds)


def table_splits(ds: Dataset) -> pd.DataFrame:
    """Patients and slices per split (no patient is in two splits)."""
    rows = [{"split": s, "patients": len(ds.manifest["splits"][s]["patients"]),
             "slices": ds.manifest["splits"][s]["n_slices"],
             "patient ids": ", ".join(ds.manifest["splits"][s]["patients"])} for s in SPLITS]
    return pd.DataFrame(rows).set_index("split")


def figure_levels(volumes: list[Volume], run_dir, *, seed: int, patient: int = 0):
    """Apex, middle and base slices of one phantom patient in the lung window, without and with labels."""
    v = volumes[patient]
    last = len(v.hu) - 1
    zs = {"apex": int(0.12 * last), "middle": int(0.5 * last), "base": int(0.88 * last)}
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


def figure_hu_histograms(volumes: list[Volume], run_dir, *, seed: int):
    """Per-class HU histograms of a seeded sample of the cohort's pixels (`difflung.data.phantom_dataset.hu_samples`),
    with each class's literature HU range (`labels.LabelClass.hu_range`) shaded."""
    import seaborn as sns

    samples = hu_samples(volumes, seed=seed)
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


CHECK_NAMES = {"healthy_lung_mean_hu": ("healthy lung, mean", "HU"),
               "healthy_lung_sd_hu": ("healthy lung, standard deviation", "HU"),
               "healthy_lung_below_950": ("healthy lung below -950 HU", "share"),
               "emphysema_below_950": ("emphysema below -950 HU (LAA-950)", "share")}


def table_hu_checks(checks: dict[str, float]) -> pd.DataFrame:
    """`difflung.data.phantom_dataset.hu_checks` as a two-column table (what, value) with units in words."""
    rows = [{"check": CHECK_NAMES[k][0], "value": pct(v) if CHECK_NAMES[k][1] == "share" else f"{sig(v)} HU"}
            for k, v in checks.items()]
    return pd.DataFrame(rows).set_index("check")


def table_signature(signature: pd.DataFrame, full_size: int) -> pd.DataFrame:
    """`difflung.data.phantom_dataset.hu_signature` for the page: one row per class, readable columns, kept/lost in
    words."""
    size = int(signature["size"].iloc[0])
    thr = f"% < {I.EMPHYSEMA_THRESHOLD_HU:g} HU"
    out = pd.DataFrame({"class": signature["class"], "check": signature["check"]})
    # a prepared dataset has no higher resolution than the run's: one set of columns
    for tag, px in (("full", full_size), ("size", size))[1 if full_size == size else 0:]:
        out[f"{px} px: mean HU"] = signature[f"{tag}_mean_hu"].map(sig)
        out[f"{px} px: {thr}"] = signature[f"{tag}_share_below_threshold"].map(pct)
        out[f"{px} px: signature"] = [("kept" if ok else "lost") if chk != "none (anatomy)" else "no check"
                                      for ok, chk in zip(signature[f"{tag}_ok"], signature["check"])]
    return out.set_index("class")


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


def table_frequencies(freq: pd.DataFrame, column: str):
    """One frequency column of `difflung.data.phantom_dataset.frequency_table` as a class x split table of
    percentages."""
    pv = frequency_pivot(freq, column)
    return table(pv, percent=pv.columns)


# ---------------------------------------------------------------------------------------------------------------
# real chest CT (`difflung.data.realct`); every function takes None when the profile skips it (`real_ct: false`)

@dataclass
class RealCT:
    """The real pyradiomics CT of the chapter: its cases and their lung, airway and lesion volumes."""
    cases: list[RealCase]
    volumes: pd.DataFrame  # `realct.lung_volume_table`


def open_real_ct(enabled: bool = True) -> RealCT | None:
    """Load the real CT (fetched once, sha256-checked; every lesion mapped to `nodule`); None when not `enabled`."""
    if not enabled:
        return None
    cases = realct.load_real_ct(classes="nodule")
    return RealCT(cases, realct.lung_volume_table(cases))


def real_ct_tables(real: RealCT | None) -> list:
    """What the real-CT section shows first: the data's credit line and the volume table (nothing when None)."""
    from IPython.display import Markdown

    return [] if real is None else [Markdown(CREDIT), table(real.volumes)]


def figure_real_vs_phantom(real: RealCT | None, phantom: list[Volume], run_dir, *, seed: int,
                           phantom_patient: int = 0):
    """Real slices beside phantom slices at matching levels (apex / middle / base of each one's lung extent)."""
    if real is None:
        return None
    rows = [(c.volume, f"real {c.volume.patient}") for c in real.cases]
    rows.append((phantom[phantom_patient], f"phantom (truth) {phantom[phantom_patient].patient}"))
    fig, axes = plt.subplots(len(rows), 3, figsize=(9.8, 3 * len(rows)), layout="constrained")
    used = {}
    for i, (v, name) in enumerate(rows):
        lv = used[name] = lung_levels(v.labels)
        for j, (level, k) in enumerate(lv.items()):
            hu, _ = crop_body(v.hu[k], v.labels[k])
            show_ct(axes[i, j], hu, title=f"{name}, {level} (slice {k}, z {k * v.spacing[0]:.0f} mm)")
    hu_colorbar(fig, axes, shrink=0.6)
    fig.suptitle(f"Real CT (pyradiomics lung1/lung2) and phantom (truth) at matching lung levels, {window_name()}")
    save_figure(fig, Path(run_dir) / "real_vs_phantom_levels.png", config={"levels": used}, seed=seed)
    return fig


def figure_anatomy_overlays(real: RealCT | None, run_dir, *, seed: int):
    """Classical anatomy (body outline, lung, airway) and the mapped lesion label on the real CT."""
    if real is None:
        return None
    cases = real.cases
    fig, axes = plt.subplots(len(cases), 4, figsize=(13.8, 3.4 * len(cases)), squeeze=False, layout="constrained")
    for i, c in enumerate(cases):
        v = c.volume
        lv = lung_levels(v.labels)
        lesion_z = np.flatnonzero(np.isin(v.labels, L.PATHOLOGY_IDS).any(axis=(1, 2)))
        ks = [("upper", min(lv["apex"] + 2, lv["middle"])), ("middle", lv["middle"]), ("base", lv["base"])]
        ks.append(("lesion", int(lesion_z[len(lesion_z) // 2])) if lesion_z.size else ("upper airway", lv["apex"]))
        for j, (name, k) in enumerate(ks):
            hu, lab = crop_body(v.hu[k], v.labels[k])
            show_ct(axes[i, j], hu, lab, alpha=0.4, title=f"{v.patient} {name} (slice {k})")
            axes[i, j].contour(lab > 0, levels=[0.5], colors=[L.BY_NAME["body"].color], linewidths=0.8)
    present = sorted(set().union(*[set(np.unique(c.volume.labels).tolist()) for c in cases]) - {L.BACKGROUND})
    hu_colorbar(fig, axes, shrink=0.6)
    fig.legend(handles=legend_handles(present), loc="outside lower center", ncol=len(present), frameon=False)
    fig.suptitle(f"Anatomy found by thresholds and components (body outline, lung, airway) + the files' own lesion, "
                 f"{window_name()}")
    save_figure(fig, Path(run_dir) / "real_anatomy_overlays.png",
                config={"patients": [c.volume.patient for c in cases]}, seed=seed)
    return fig


AGREEMENT_NAMES = {"lung_dice_vs_truth": "lung Dice vs truth", "lung_ml_found": "lung ml found",
                   "lung_ml_truth": "lung ml truth", "airway_ml_found": "airway ml found",
                   "airway_ml_truth": "airway ml truth"}


def anatomy_agreement(volumes: list[Volume], n: int = 4) -> pd.DataFrame:
    """The classical anatomy run on the first `n` phantom patients against their true labels
    (`realct.phantom_anatomy_agreement`)."""
    return realct.phantom_anatomy_agreement(volumes[:n])


def table_agreement(agreement: pd.DataFrame):
    """`anatomy_agreement` for the page, readable column names."""
    return table(agreement.rename(columns=AGREEMENT_NAMES))


def agreement_facts(agreement: pd.DataFrame) -> dict:
    """Mean and lowest lung Dice of the classical anatomy against the phantom's truth."""
    return {"lung_dice_min": float(agreement["lung_dice_vs_truth"].min()),
            "lung_dice_mean": float(agreement["lung_dice_vs_truth"].mean())}


@dataclass
class LungHU:
    """Healthy-lung HU samples of the real CT and the phantom (`realct.hu_lung_samples`) and their statistics."""
    samples: pd.DataFrame
    stats: pd.DataFrame


def lung_hu(real: RealCT | None, phantom: list[Volume], *, seed: int) -> LungHU | None:
    """Healthy-lung voxels of every real and phantom volume (seeded draw) and mean, SD, LAA-950 per source."""
    if real is None:
        return None
    samples = realct.hu_lung_samples(real.cases, phantom, seed=seed)
    return LungHU(samples, realct.hu_lung_stats(samples))


def table_lung_hu(hu: LungHU | None):
    """`lung_hu`'s statistics per source (None when the real CT is skipped)."""
    return None if hu is None else table(hu.stats, percent=())


def figure_real_vs_phantom_hu(hu: LungHU | None, run_dir, *, seed: int):
    """Density histograms of healthy-lung HU (`difflung.data.realct.hu_lung_samples`), real CT against phantom, with
    the literature band of normal lung (`labels.LabelClass.hu_range` of lung)."""
    import seaborn as sns

    if hu is None:
        return None
    samples = hu.samples
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    sns.histplot(samples, x="hu", hue="source", stat="density", common_norm=False, bins=120,
                 binrange=(-1050, -450), element="step", fill=False, ax=ax)
    lo, hi = L.BY_NAME["lung"].hu_range
    ax.axvspan(lo, hi, color="0.85", zorder=0, label="normal lung (literature)")
    thr = I.EMPHYSEMA_THRESHOLD_HU
    ax.axvline(thr, color="0.4", ls=":", lw=1)
    ax.set_xlabel(f"HU of healthy lung voxels (label {L.LUNG})")
    ax.set_title(f"Healthy lung attenuation: real CT vs phantom (dotted: {thr:g} HU)")
    fig.tight_layout()
    save_figure(fig, Path(run_dir) / "real_vs_phantom_lung_hu.png", config={"n": int(len(samples))}, seed=seed)
    return fig


def prepare_real(real: RealCT | None, run_dir, *, size: int, seed: int) -> list:
    """The worked example: `python -m difflung prepare` on the real CT (`realct.prepare_example`), shown as its
    command line and a per-patient table (nothing when the real CT is skipped)."""
    from IPython.display import Markdown

    if real is None:
        return []
    _, summary, command = realct.prepare_example(run_dir, size=size, seed=seed)
    return [Markdown(f"```bash\n{command}\n```"), table(table_prepared(summary))]


def table_prepared(summary: dict) -> pd.DataFrame:
    """Per patient of `difflung.data.realct.prepare_example`'s summary: slices kept, spacing, lung ml, voxels per
    class."""
    return pd.DataFrame([{
        "patient": r["patient"], "slices kept": r["slices_kept"], "of": r["slices_total"],
        "spacing mm (z, y, x)": ", ".join(f"{s:.3g}" for s in r["spacing_mm"]),
        "lung ml": r["lung_volume_ml"], **{f"{k} voxels": n for k, n in r["voxel_counts"].items()},
    } for r in summary["patients"]]).set_index("patient")


def figure_mask_synthesis(labels: np.ndarray, run_dir, *, boost: dict, seed: int, n_masks: int | None = None,
                          n_show: int = 4, sources: np.ndarray | None = None, **kwargs):
    """Synthesise masks with boosted rare classes; show before/after pairs; return (fig, report, MaskSynthesis)."""
    from difflung.data.masksynth import synthesize_masks

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
    present = sorted(set(np.unique(syn.labels[:n_show]).tolist())
                     | set(np.unique(labels[syn.source_index[:n_show]]).tolist()))
    fig.legend(handles=legend_handles(present), loc="lower center", ncol=len(present), frameon=False)
    fig.suptitle("Mask synthesis: lesions rotated, copied and dilated into healthy lung (top: input, bottom: new)")
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    config = {"boost": {str(k): v for k, v in boost.items()}, "n_masks": int(len(syn.labels)), **kwargs}
    save_figure(fig, Path(run_dir) / "mask_synthesis_examples.png", config=config, seed=seed)
    return fig, syn.report, syn


def table_mask_synthesis(report):
    """Per rare class: its target share of the lung field and what the synthetic masks reached
    (`masksynth.report_table`)."""
    return masksynth.report_table(report)


def write_chapter_metrics(run_dir, ds: Dataset, checks: dict, *, signature: pd.DataFrame,
                          agreement: pd.DataFrame | None, real: RealCT | None, hu: LungHU | None,
                          seed: int) -> pd.DataFrame:
    """`<run_dir>/metrics.csv`: the HU checks, frequencies, slice counts and HU signature of the phantom
    (`phantom_dataset.write_cohort_metrics`), with the anatomy agreement and, when the real CT ran, its volumes
    and healthy-lung HU (`realct.metrics_rows`)."""
    extra = realct.metrics_rows(real.volumes if real is not None else None, agreement,
                                hu.stats if hu is not None else None, seed=seed)
    return cohort.write_cohort_metrics(run_dir, ds, checks, seed=seed, signature=signature, extra_rows=extra)


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


# ---------------------------------------------------------------------------------------------------------------
# chapter 1 on your own dataset (`notebooks/01_own_dataset.py`, `difflung.data.own_dataset`): the run adopts a
# prepared artifact instead of building the phantom

def own_adopt(dataset: str, run_dir, *, size: int) -> Dataset:
    """Check the prepared artifact at `dataset` and copy it in as the run's dataset (`own_dataset.adopt`)."""
    return own_dataset.adopt(dataset, run_dir, size=size)


def own_facts(ds: Dataset, run_dir) -> dict:
    """Values the page quotes: the dataset's name and sha256, patients, slices, size, the display window."""
    src = own_dataset.describe(Path(run_dir).parent) or {}
    # as code: glued Markdown of a bare string that names an existing path would be read from that path
    return {"dataset_name": f"`{src.get('name', str(ds.root))}`", "dataset_sha": f"`{src.get('sha256', '')[:16]}`",
            "n_patients": sum(len(ds.manifest["splits"][s]["patients"]) for s in SPLITS),
            "n_slices_total": sum(ds.manifest["splits"][s]["n_slices"] for s in SPLITS), "size": ds.size,
            "lung_window": window_name(), "laa_hu": f"{I.EMPHYSEMA_THRESHOLD_HU:g}"}


def own_table_splits(ds: Dataset) -> pd.DataFrame:
    """Patients and slices per split, and the classes present in each."""
    rows = []
    for s in SPLITS:
        part = ds.split(s)
        present = [c for c in L.names(np.unique(part.labels).tolist()) if c != "background"]
        rows.append({"split": s, "patients": len(np.unique(part.patient)), "slices": len(part),
                     "classes present": ", ".join(present)})
    return pd.DataFrame(rows).set_index("split")


def own_table_patients(ds: Dataset):
    """Per patient: split, slices kept, source spacing, lung volume (`own_dataset.patient_table`)."""
    t = own_dataset.patient_table(ds)
    if t.empty:
        return pd.DataFrame({"note": ["the manifest records no per-patient rows"]}).set_index("note")
    return table(t.set_index("patient"))


def own_figure_levels(ds: Dataset, run_dir, *, seed: int):
    """Apex, middle and base slices of the first training patient at the run's size, without and with labels."""
    part = ds.split("train")
    pid = sorted(np.unique(part.patient).tolist())[0]
    idx = np.flatnonzero(part.patient == pid)
    idx = idx[np.argsort(part.z[idx])]
    picks = {"apex": int(idx[int(0.12 * (len(idx) - 1))]), "middle": int(idx[len(idx) // 2]),
             "base": int(idx[int(0.88 * (len(idx) - 1))])}
    fig, axes = plt.subplots(2, 3, figsize=(9, 6.6), layout="constrained")
    hu = unwindow(part.images)
    for j, (name, k) in enumerate(picks.items()):
        show_ct(axes[0, j], hu[k], title=f"patient {pid}, {name}")
        show_ct(axes[1, j], hu[k], part.labels[k], alpha=0.45)
    hu_colorbar(fig, axes, shrink=0.8)
    present = sorted(set(np.unique(part.labels[list(picks.values())]).tolist()) - {L.BACKGROUND, L.BODY})
    if present:
        fig.legend(handles=legend_handles(present), loc="outside lower center", ncol=len(present), frameon=False)
    fig.suptitle(f"The run's dataset at {ds.size} px, {window_name()}: top CT, bottom label overlay")
    save_figure(fig, Path(run_dir) / "dataset_levels.png", config={"patient": str(pid)}, seed=seed)
    return fig


def own_hu_signature(ds: Dataset, run_dir) -> pd.DataFrame:
    """Which lung-field classes hold their HU signature at the run's size, on the training slices (there is no
    higher resolution to compare with: the artifact is at the run's size). Writes `hu_signature.json`, which later
    chapters read exactly as they read the phantom's."""
    part = ds.split("train")
    at_size = (unwindow(part.images), part.labels)
    classes = [c for c in ds.classes if L.BY_ID[c].in_lung]
    sigtab = I.signature_survival(at_size, at_size, classes, ds.size)
    I.write_signature(run_dir, sigtab, split="train", full_size=ds.size, source=ds.manifest.get("source", ""))
    return sigtab


def own_mask_synthesis(ds: Dataset, run_dir, *, boost: dict, seed: int, n_masks: int):
    """Chapter 1's mask synthesis on the dataset's training masks, boosting only the classes it holds."""
    held = {c: v for c, v in boost.items() if L.BY_NAME[c].id in ds.classes}
    return figure_mask_synthesis(ds.split("train").labels, run_dir, boost=held, seed=seed, n_masks=n_masks)


def own_absent_classes(ds: Dataset) -> list[str]:
    """The project's pathology classes of the paper (emphysema, fibrosis, GGO) this dataset does not hold: their
    claims read "not measurable: absent from this dataset"."""
    return [n for n in ("emphysema", "fibrosis", "ggo") if L.BY_NAME[n].id not in ds.classes]


def own_write_metrics(run_dir, ds: Dataset, signature: pd.DataFrame, *, seed: int) -> pd.DataFrame:
    """`<run_dir>/metrics.csv` as the phantom page writes it (`phantom_dataset.write_cohort_metrics`): frequencies
    and slice counts per split and the HU signature, with no phantom HU checks."""
    return cohort.write_cohort_metrics(run_dir, ds, {}, seed=seed, signature=signature, model="dataset")


def own_scope(profile: str, ds: Dataset, signature: pd.DataFrame) -> Scope:
    """The chapter's "What this run can and cannot show" box, from its own numbers."""
    lost = {r["class"]: r["reason"] for r in signature.to_dict("records") if not r["measurable"]}
    kept = [c for c in signature["class"] if c not in lost and I.signature_check(c) != "none (anatomy)"]
    n_test = len(ds.manifest["splits"]["test"]["patients"])
    s = Scope(profile, facts={"image size": f"{ds.size} px", "test patients": str(n_test),
                              "patients": str(sum(len(ds.manifest["splits"][x]["patients"]) for x in SPLITS))})
    s.can.append("Every later chapter's comparisons on this dataset's own patients, split as `prepare` split them.")
    if kept:
        s.can.append(f"Texture (HU) of {', '.join(kept)} at {ds.size} px: the signature holds at this size.")
    s.cannot += [f"Texture (HU) of {c}, so later chapters report it as not measurable: {why}." for c, why in lost.items()]
    s.cannot += [f"Anything about {c}: absent from this dataset." for c in own_absent_classes(ds)]
    s.cannot.append("Whether the labels are right: the book takes the dataset's labels as its truth.")
    s.cannot += smoke_caveat(profile)
    return s
