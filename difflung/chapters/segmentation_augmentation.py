"""Chapter 5, segmentation augmentation: does synthetic data lift rare-class Dice?

The experiment -- arms, mask synthesis, painting, the oversampling control, training and scoring over seeds --
lives in `difflung.augment`; the paired tests in `difflung.evaluation`. This module chooses the generators each
synthetic arm uses and makes the chapter's tables and figures from `metrics.csv`.

Each function is one section of `notebooks/05_segmentation_augmentation.py`:

    inputs = locate_inputs(runs_root); table_inputs(inputs)
    res, syn, balance = augment.run_experiment(inputs.dataset, run_dir, tag="phantom", models=inputs.models, ...)
    real, _, _ = augment.run_experiment(inputs.real_dataset, run_dir, tag="real", ...)   # if inputs.real_dataset
    write_chapter_metrics(run_dir, [res, real], config=config, seed=seed, synthetic=syn.sets)
    table_results(run_dir); figure_dice(run_dir); table_tests(run_dir); table_winners(run_dir)   # from metrics.csv
    figure_examples(res, run_dir)
    table_real_data(real); figure_dice(run_dir, "real")
    export_nnunet_example(inputs.dataset, syn.sets["+difflung"], run_dir)

Numbers go to `<run_dir>/metrics.csv` (column `dataset`: phantom or real; per-seed Dice rows with metric
`dice`, aggregates over seeds with seed = -1); timings, which vary from run to run, go to `timings.json`, so
metrics.csv is byte-identical for a given seed on CPU. Per-slice Dice: `<run_dir>/<dataset>/dice_per_slice.csv`.

The test against `ref` is the Wilcoxon signed-rank test over training seeds. With n seeds it cannot give p
below 2 / 2^n (0.5 at 2 seeds, 0.0625 at 5, 0.031 at 6): at small n read the interval of the paired difference,
not p alone. A rank-sum over slices is reported beside it as a secondary view.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import labels as L
from ..augment import (ARM_NAMES, ARMS, SYNTHETIC_ARMS, Results, SyntheticSet, arm_order, compare_arms, metric_rows,
                       timing_record)
from ..dataset import Dataset
from ..evaluation import mean_ci
from ..metrics import read_metrics, write_metrics
from ..plots import legend_handles, plt, save_figure, show_ct
from ..provenance import write_json_atomic
from ..reported import LABEL, SEGMENTATION_DICE
from ..segmentation import SegConfig
from ..runs import phantom_dataset_dir, real_dataset_dir

TABLE_CLASSES = ("lung", "emphysema", "fibrosis", "ggo")  # the poster's "healthy" is healthy lung parenchyma
TABLE_HEADERS = {"lung": "Dice healthy", "emphysema": "Dice emphysema", "fibrosis": "Dice fibrosis", "ggo": "Dice GGO"}
POSTER = SEGMENTATION_DICE  # the poster's rows (healthy = lung), shown as reported, never as ours


# ---------------------------------------------------------------------------------------------------------------
# inputs: the dataset and the generator of each synthetic arm

@dataclass
class Inputs:
    dataset: Path  # phantom dataset artifact
    models: dict[str, Path]  # synthetic arm -> generator folder
    real_dataset: Path | None = None  # real CT dataset artifact, if chapter 1 wrote one
    real_models: dict[str, Path] = field(default_factory=dict)  # generators trained on the real CT


def locate_inputs(runs_root, *, dataset=None, models: dict | None = None, real_dataset=None,
                  real_models: dict | None = None) -> Inputs:
    """Find the upstream artifacts of a run; explicit paths override the run layout.

    Defaults: chapter 1's phantom dataset (and its real-CT dataset, optional) and, for each synthetic arm of
    `difflung.augment.ARMS`, the generator folder its producing chapter writes (Diff-Lung CBMAT from chapter 3,
    Seg-Guided Diffusion from chapter 4). A missing model is an error naming that chapter; `models={}` runs
    without synthetic arms.
    """
    root = Path(runs_root)
    ds = Path(dataset) if dataset is not None else phantom_dataset_dir(root)
    Dataset(ds)  # clear error if missing or malformed
    chosen = ({k: root / ARMS[k].model for k in SYNTHETIC_ARMS} if models is None
              else {arm: Path(p) for arm, p in models.items()})
    for arm, p in chosen.items():
        if arm not in SYNTHETIC_ARMS:
            raise ValueError(f"models: unknown arm {arm!r}; synthetic arms are {SYNTHETIC_ARMS}")
        if not (p / "difflung_config.json").is_file():
            raise FileNotFoundError(f"{p}: no finished generator for arm {arm} (no difflung_config.json); "
                                    f"run {ARMS[arm].producer} first or pass models={{'{arm}': PATH}}")
    if real_dataset is not None:
        real = Path(real_dataset)
        Dataset(real)  # clear error if missing
    else:  # chapter 1's worked example writes real_dataset; dataset_real is accepted too
        found = [p for p in (real_dataset_dir(root), root / "01_data_preparation" / "dataset_real")
                 if (p / "manifest.json").is_file()]
        real = found[0] if found else None
    return Inputs(ds, chosen, real, {k: Path(v) for k, v in (real_models or {}).items()})


def table_inputs(inputs: Inputs) -> pd.DataFrame:
    """What this chapter reads, with sizes and classes, for the reader."""
    rows = []
    ds = Dataset(inputs.dataset)
    rows.append({"input": "phantom dataset", "path": str(inputs.dataset),
                 "detail": f"{ds.size} px, classes {', '.join(L.names(ds.classes))}, "
                           f"{ds.manifest['splits']['train']['n_slices']} train / "
                           f"{ds.manifest['splits']['test']['n_slices']} test slices"})
    for arm, p in inputs.models.items():
        meta = json.loads((p / "difflung_config.json").read_text())
        tc = meta.get("train_config", {})
        rows.append({"input": f"generator for {arm}", "path": str(p),
                     "detail": f"mask {meta.get('mask_mode', tc.get('mask_mode'))}, ablation "
                               f"{tc.get('strategy', meta.get('ablation', {}).get('strategy', '?'))}, "
                               f"preset {tc.get('preset', '?')}, {tc.get('steps', '?')} steps"})
    rows.append({"input": "real CT dataset", "path": str(inputs.real_dataset or "-"),
                 "detail": "absent: the real-data section is skipped" if inputs.real_dataset is None else
                 ", ".join(L.names(Dataset(inputs.real_dataset).classes))})
    return pd.DataFrame(rows).set_index("input")


def write_chapter_metrics(run_dir, results: list[Results], *, config: SegConfig, seed: int,
                          synthetic: dict[str, SyntheticSet] | None = None, extra: dict | None = None) -> Path:
    """metrics.csv (deterministic numbers only) + timings.json (wall times, images/s, provenance)."""
    path = write_metrics(run_dir, [row for r in results for row in metric_rows(r)])
    write_json_atomic(Path(run_dir) / "timings.json", timing_record(results, synthetic, config=config, seed=seed,
                                                                     extra=extra))
    return path


# ---------------------------------------------------------------------------------------------------------------
# tables and figures, from metrics.csv

def _fmt(m, lo, hi) -> str:
    if np.isnan(m):
        return "n/a"
    return f"{m:.3f}" if np.isnan(lo) else f"{m:.3f} [{lo:.3f}, {hi:.3f}]"


def _metrics(run_dir, dataset: str) -> pd.DataFrame:
    m = read_metrics(run_dir)
    m = m[m.dataset == dataset]
    if m.empty:
        raise ValueError(f"{run_dir}: metrics.csv has no rows for dataset {dataset!r}")
    return m


def _classes(m: pd.DataFrame, classes) -> list[str]:
    """Classes to show: the given ones, or the poster's (healthy, emphysema, fibrosis) + GGO and any other
    pathology class the dataset has (a real CT's lesion class)."""
    present = set(m.loc[m.metric == "dice", "class"])
    if classes is not None:
        return [c for c in classes if c in present]
    extra = sorted(c for c in present if c not in TABLE_CLASSES and L.BY_NAME[c].pathology)
    return [c for c in TABLE_CLASSES if c in present] + extra


def _test_pixels(m: pd.DataFrame) -> dict[str, float]:
    t = m[m.metric == "test_pixels"]
    return dict(zip(t["class"], t.value))


def table_results(run_dir, dataset: str = "phantom", classes=None, with_poster: bool | None = None) -> pd.DataFrame:
    """The poster's table from metrics.csv: our arms (mean Dice [95% CI] over seeds) and, for the phantom,
    the poster's reported rows, labelled as such. A class with no pixel in the test truth is marked: its Dice
    could only count false positives."""
    m = _metrics(run_dir, dataset)
    classes = _classes(m, classes)
    pix = _test_pixels(m)
    d = m[m.metric == "dice"]
    rows = []
    for arm in [a for a in ARMS if a in set(d.model)] + sorted(set(d.model) - set(ARMS)):
        row = {"model": ARM_NAMES.get(arm, arm), "source": "ours", "seeds": str(d[d.model == arm].seed.nunique())}
        for c in classes:
            row[TABLE_HEADERS.get(c, f"Dice {c}")] = (
                f"no {c} in test truth" if pix.get(c, 1) == 0 else
                _fmt(*mean_ci(d[(d.model == arm) & (d["class"] == c)].value)))
        rows.append(row)
    if _with_poster(classes, with_poster):
        for arm, vals in POSTER.items():
            row = {"model": ARM_NAMES[arm], "source": LABEL, "seeds": "not stated"}
            for c in classes:
                row[TABLE_HEADERS.get(c, f"Dice {c}")] = f"{vals[c]:.2f}" if c in vals else "not reported"
            rows.append(row)
    return pd.DataFrame(rows).set_index(["model", "source"])


def table_tests(run_dir, dataset: str = "phantom", classes=None) -> pd.DataFrame:
    """Per class and arm vs ref, from metrics.csv: the paired difference in mean Dice with its 95% CI, the
    Wilcoxon signed-rank p over seeds (primary) and the rank-sum p over slices (secondary)."""
    m = _metrics(run_dir, dataset)
    classes = _classes(m, classes)
    agg = m[(m.seed == -1) & m.model.isin([a for a in ARMS if a != "ref"]) & m["class"].isin(classes)]
    wide = agg.pivot_table(index=["class", "model"], columns="metric", values="value", aggfunc="first")
    cols = {"delta_vs_ref": "difference", "delta_vs_ref_lo": "lo", "delta_vs_ref_hi": "hi",
            "p_wilcoxon_seeds_vs_ref": "p signed-rank (seeds)", "p_ranksum_slices_vs_ref": "p rank-sum (slices)",
            "n_seeds": "seeds", "n_slices": "slices"}
    wide = wide.reindex(columns=list(cols)).rename(columns=cols)
    order = [(c, a) for c in classes for a in ARMS if (c, a) in wide.index]
    return wide.loc[order]


def table_winners(run_dir, dataset: str = "phantom", classes=None, alpha: float = 0.05) -> pd.DataFrame:
    """Per class, as computed: the arm(s) with the highest mean Dice, the margin over ref, and whether the
    paired evidence supports a gain (signed-rank p < alpha over seeds and the difference's CI above 0)."""
    m = _metrics(run_dir, dataset)
    classes = _classes(m, classes)
    pix = _test_pixels(m)
    rows = []
    for cls in classes:
        c = m[(m["class"] == cls) & (m.seed == -1)].pivot_table(index="model", columns="metric", values="value",
                                                                aggfunc="first")
        if pix.get(cls, 1) == 0 or "dice_mean" not in c or c["dice_mean"].isna().all():
            rows.append({"class": cls, "winner": "none", "verdict": f"no {cls} in the test truth: not measurable"})
            continue
        means = c["dice_mean"].dropna()
        top = sorted(means.index[np.isclose(means, means.max(), rtol=0, atol=1e-9)],
                     key=arm_order)
        best, ref = top[0], means.get("ref", np.nan)
        row = {"class": cls, "winner": " = ".join(top), "dice": means[best], "ref dice": ref,
               "margin over ref": means[best] - ref}
        if "ref" in top:
            row["verdict"] = ("tie with ref: " if len(top) > 1 else "") + "no arm beat real data alone"
        else:
            p, lo = c.loc[best].get("p_wilcoxon_seeds_vs_ref", np.nan), c.loc[best].get("delta_vs_ref_lo", np.nan)
            row["p signed-rank (seeds)"] = p
            row["verdict"] = (f"better than ref (p < {alpha:g}, CI of the difference above 0)" if p < alpha and lo > 0
                              else "highest mean, not distinguishable from ref at this number of seeds")
        rows.append(row)
    return pd.DataFrame(rows).set_index("class")


def _with_poster(classes, with_poster) -> bool:
    """Show the poster's rows only where its classes (emphysema, fibrosis) are studied."""
    return bool({"emphysema", "fibrosis"} & set(classes)) if with_poster is None else with_poster


def figure_dice(run_dir, dataset: str = "phantom", classes=None, *, with_poster: bool | None = None, seed: int = 0):
    """Point plot of per-class Dice (mean over seeds, 95% t-interval) per arm, from metrics.csv; the poster's
    reported values in a second panel on the same scale."""
    import seaborn as sns

    m = _metrics(run_dir, dataset)
    pix = _test_pixels(m)
    classes = [c for c in _classes(m, classes) if pix.get(c, 1) > 0]  # absent classes have no Dice to plot
    poster = _with_poster(classes, with_poster)
    m = m[(m.metric == "dice") & m["class"].isin(classes)].copy()
    m["arm"] = m.model.map(lambda a: ARM_NAMES.get(a, a))
    hue_order = [ARM_NAMES[a] for a in ARMS if ARM_NAMES[a] in set(m.arm)]
    palette = dict(zip([ARM_NAMES[a] for a in ARMS], sns.color_palette("colorblind", len(ARMS))))
    fig, axes = plt.subplots(1, 2 if poster else 1, figsize=(10 if poster else 6.5, 3.8), sharey=True,
                             squeeze=False, gridspec_kw={"width_ratios": [len(classes), 3] if poster else [1]})
    axes = axes[0]
    sns.pointplot(m, x="class", y="value", hue="arm", order=classes, hue_order=hue_order, palette=palette,
                  errorbar=lambda v: mean_ci(v)[1:] if len(v) > 1 else (np.mean(v), np.mean(v)),
                  dodge=0.45, linestyle="none", markers="o", capsize=0.08, ax=axes[0])
    axes[0].set_title(f"ours ({dataset}): mean over {m.seed.nunique()} seeds, 95% t-interval", fontsize=10)
    axes[0].set_ylabel("Dice (held-out test slices)")
    axes[0].legend(loc="best", fontsize=8, frameon=False)
    if poster:
        rep = pd.DataFrame([{"arm": ARM_NAMES[a], "class": c, "value": v} for a, d in POSTER.items()
                            for c, v in d.items()])
        sns.pointplot(rep, x="class", y="value", hue="arm", order=["lung", "emphysema", "fibrosis"],
                      hue_order=[ARM_NAMES[a] for a in POSTER], palette=palette, dodge=0.45, linestyle="none",
                      markers="D", errorbar=None, ax=axes[1])
        axes[1].set_title(f"{LABEL}: no seeds or CI given", fontsize=10)
        axes[1].get_legend().remove()
    for ax in axes:
        ax.set_xlabel("")
        ax.grid(axis="y", alpha=0.3)
        ax.set_xticks(ax.get_xticks(), ["healthy" if t.get_text() == "lung" else t.get_text()
                                        for t in ax.get_xticklabels()])
    fig.tight_layout()
    save_figure(fig, Path(run_dir) / f"dice_{dataset}.png", config={"dataset": dataset, "classes": classes},
                seed=seed)
    return fig


def figure_examples(res: Results, run_dir, *, seed: int = 0):
    """The same test slices: image, truth, and each arm's prediction (first seed), lung window with overlays."""
    from ..dataset import unwindow

    k, arms = len(res.example_idx), list(res.examples)
    fig, axes = plt.subplots(k, 2 + len(arms), figsize=(2.1 * (2 + len(arms)), 2.2 * k), squeeze=False)
    for r, i in enumerate(res.example_idx):
        hu = unwindow(res.test.images[i])
        show_ct(axes[r, 0], hu, title=f"test slice {i}")
        show_ct(axes[r, 1], hu, res.test.labels[i], alpha=0.5, title="truth" if r == 0 else None)
        for j, arm in enumerate(arms):
            show_ct(axes[r, 2 + j], hu, res.examples[arm][r], alpha=0.5,
                    title=ARM_NAMES.get(arm, arm) if r == 0 else None)
    present = sorted(set(np.unique(res.test.labels[res.example_idx]).tolist()) - {L.BACKGROUND, L.BODY})
    fig.legend(handles=legend_handles(present), loc="lower center", ncol=max(len(present), 1), frameon=False)
    fig.suptitle(f"Predictions on the same {res.tag} test slices (seed {res.seeds[0]}); lung window W1500/L-600")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    save_figure(fig, Path(run_dir) / f"examples_{res.tag}.png", config={"slices": res.example_idx.tolist()},
                seed=seed)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# real CT and nnU-Net export

def table_real_data(res: Results) -> pd.DataFrame:
    """The real-CT experiment with its size stated by the numbers: n test slices/patients and CI width."""
    t = compare_arms(res)
    t = t[t["class"].isin([L.BY_ID[c].name for c in res.classes if L.BY_ID[c].pathology] + ["lung"])]
    t = t.assign(ci_width=t.hi - t.lo, test_patients=len(set(res.test.patient.tolist())), test_slices=len(res.test))
    return t.set_index(["class", "arm"])[["mean", "lo", "hi", "ci_width", "n_seeds", "n_slices", "test_patients",
                                          "test_slices", "delta", "p_wilcoxon", "p_ranksum"]]


def export_nnunet_example(dataset, synthetic: SyntheticSet, run_dir, *, dataset_id: int = 501,
                          name: str = "DiffLung") -> tuple[Path, dict]:
    """Write the +difflung training set (real train + synthetic) as an nnU-Net v2 raw dataset in the run folder."""
    from ..nnunet import export_nnunet

    ds = Dataset(dataset)
    folder = export_nnunet(Path(run_dir) / "nnUNet_raw", dataset_id, name, ds.split("train"),
                           (synthetic.images, synthetic.labels), ds.classes, overwrite=True, source=str(ds.root))
    meta = json.loads((folder / "dataset.json").read_text())
    summary = {k: meta[k] for k in ("channel_names", "labels", "numTraining", "file_ending")}
    summary["synthetic cases"] = meta["difflung"]["n_synthetic"]
    return folder, summary
