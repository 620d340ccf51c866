"""Chapter 5, segmentation augmentation: does synthetic data lift rare-class Dice?

The experiment -- arms, mask synthesis, painting, the oversampling control, training and scoring over seeds --
lives in `difflung.augment`, with its statistics (summaries, validity, the chapter's comparisons). This module
chooses the generators each synthetic arm uses and makes the chapter's tables and figures from `metrics.csv`.

Each function is one section of `notebooks/05_segmentation_augmentation.py`:

    exp = open_experiment(runs_root, seed=..., n_seeds=..., seg_steps=..., ...); table_inputs(exp.inputs)
    res, syn, balance = run_phantom(exp, run_dir); synthesis_tables(syn)    # `augment.run_experiment`, phantom
    real = run_real(exp, run_dir)                                           # None without a real-CT dataset
    write_chapter_metrics(run_dir, [res, real], config=exp.config, seed=seed, synthetic=syn.sets)
    table_results(run_dir, runs_root=...); figure_dice(run_dir, runs_root=...)     # from metrics.csv
    table_comparisons(run_dir, runs_root=...); table_poster_claims(runs_root)
    figure_examples(res, run_dir); export_nnunet_example(inputs.dataset, syn.sets["+difflung"], run_dir)
    scope(profile, run_dir, runs_root=...)

Numbers go to `<run_dir>/metrics.csv` (column `dataset`; per-seed Dice rows, metric `dice`, seed = training
seed, read by `difflung.judging.claims`); timings to `timings.json`. Statistics: `difflung.augment.comparisons`
(unit: training seed; an interval only from `stats.MIN_SEEDS` seeds; Holm across the chapter's table;
`stats.verdict`). The poster's claims are judged once for the run (`table_poster_claims`) and left out of the
chapter's table.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from difflung import augment as A
from difflung import labels as L
from difflung.judging import stats
from difflung.augment import ARM_NAMES, ARMS, SYNTHETIC_ARMS, Results, SyntheticSet
from difflung.data.dataset import Dataset
from difflung.core.metrics_csv import read_metrics, write_metrics
from difflung.plots import hu_colorbar, legend_handles, plt, save_figure, show_ct, sig, table, window_name
from difflung.core.provenance import write_json_atomic
from difflung.judging.reported import ALL_CLAIMS, LABEL, SEGMENTATION_DICE
from difflung.core import runs
from difflung.core.runs import phantom_dataset_dir, real_dataset_dir
from difflung.data import own_dataset
from difflung.chapters.scope import Scope, glue_facts, smoke_caveat  # noqa: F401  (glue_facts: for the page)
from difflung.segmentation import SegConfig

TABLE_CLASSES = ("lung", "emphysema", "fibrosis", "ggo")  # the poster's "healthy" is healthy lung parenchyma
POSTER = SEGMENTATION_DICE  # the poster's rows (healthy = lung), shown as reported, never as ours
POSTER_TRIPLES = {(c.cls, c.a, c.b) for c in ALL_CLAIMS if c.kind == "segmentation"}  # judged by judging.claims


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
    # the generator chapter 4 compared (where its training stopped), else its producing chapter's folder
    chosen = ({k: runs.compared_model_dir(root, ARMS[k].generator) or root / ARMS[k].model for k in SYNTHETIC_ARMS}
              if models is None else {arm: Path(p) for arm, p in models.items()})
    if models is None:  # an optional arm whose generator this run did not train is left out
        chosen = {k: p for k, p in chosen.items()
                  if not ARMS[k].optional or (p / "difflung_config.json").is_file()}
    for arm, p in chosen.items():
        if arm not in SYNTHETIC_ARMS:
            raise ValueError(f"models: unknown arm {arm!r}; synthetic arms are {SYNTHETIC_ARMS}")
        if not (p / "difflung_config.json").is_file():
            raise FileNotFoundError(f"{p}: no finished generator for arm {arm} (no difflung_config.json); "
                                    f"run {ARMS[arm].producer} first or pass models={{'{arm}': PATH}}")
    if real_dataset is not None:
        real = Path(real_dataset)
        Dataset(real)  # clear error if missing
    else:  # chapter 1's worked example writes real_dataset
        real = real_dataset_dir(root) if (real_dataset_dir(root) / "manifest.json").is_file() else None
    return Inputs(ds, chosen, real, {k: Path(v) for k, v in (real_models or {}).items()})


def table_inputs(inputs: Inputs) -> pd.DataFrame:
    """What this chapter reads, with sizes and classes, for the reader."""
    rows = []
    ds = Dataset(inputs.dataset)
    own = own_dataset.describe(Path(inputs.dataset).parent.parent)  # a run on a prepared dataset names it
    rows.append({"input": f"dataset {own['name']}" if own else "phantom dataset", "path": str(inputs.dataset),
                 "detail": f"{ds.size} px, classes {', '.join(L.names(ds.classes))}, "
                           f"{ds.manifest['splits']['train']['n_slices']} train / "
                           f"{ds.manifest['splits']['test']['n_slices']} test slices"})
    rows += [{"input": f"generator for {arm}", "path": str(p), "detail": A.describe_generator(p)}
             for arm, p in inputs.models.items()]
    rows.append({"input": "real CT dataset", "path": str(inputs.real_dataset or "-"),
                 "detail": "absent: the real-data section is skipped" if inputs.real_dataset is None else
                 ", ".join(L.names(Dataset(inputs.real_dataset).classes))})
    return pd.DataFrame(rows).set_index("input")


@dataclass
class Experiment:
    """The chapter's experiment: its inputs, the segmenter's configuration, the training seeds and the settings
    `difflung.augment.experiment.run_experiment` takes for every dataset."""
    inputs: Inputs
    config: SegConfig  # the profile's segmenter; `run_phantom` replaces it by the one chosen on validation
    seeds: list[int]
    settings: dict  # seed, mix_ratio, boost, sampler, sampler_steps, device, workers
    dose_shares: tuple = ()  # synthetic shares of the Diff-Lung dose-response arms (phantom only)
    choice: object = None  # `augment.SegChoice`, set by `run_phantom`
    max_budgets: int = 1  # the chosen segmenter trains to its own validation plateau, up to this many budgets


def open_experiment(runs_root, *, seed: int, n_seeds: int, min_seeds: int, seg_channels, seg_strides,
                    seg_res_units: int, seg_batch_size: int, seg_lr: float, seg_steps: int, mix_ratio: float,
                    boost: float | dict, sampler: str, sampler_steps: int | None, device: str = "auto",
                    workers: int = 1, dose_shares=(), max_budgets: int = 1) -> Experiment:
    """Find the run's inputs (`locate_inputs`), build the segmenter's base `SegConfig` from the profile's `seg_*`
    values and fix the training seeds (`augment.training_seeds`: an error below `min_seeds`)."""
    inputs = locate_inputs(runs_root)
    config = SegConfig.from_dict({"channels": seg_channels, "strides": seg_strides, "num_res_units": seg_res_units,
                                  "batch_size": seg_batch_size, "lr": seg_lr, "steps": seg_steps})
    seeds = A.training_seeds(seed, n_seeds, min_seeds)
    return Experiment(inputs, config, seeds, dict(seed=seed, mix_ratio=mix_ratio, boost=boost, sampler=sampler,
                                                  sampler_steps=sampler_steps, device=device, workers=workers),
                      dose_shares=tuple(dose_shares), max_budgets=int(max_budgets))


def experiment_facts(exp: Experiment) -> dict:
    """Seeds, segmenter steps and the statistics' constants the prose quotes (`difflung.judging.stats`)."""
    return {"n_seeds": len(exp.seeds), "seg_steps": exp.config.steps, "min_interval_seeds": stats.MIN_SEEDS,
            "alpha": stats.ALPHA}


def arm_facts(exp: Experiment) -> dict:
    """The steps every arm trains with (the chosen segmenter's own plateau), for the prose."""
    return {"arm_steps": exp.config.steps}


def run_phantom(exp: Experiment, run_dir):
    """The experiment on the phantom dataset: first one segmenter configuration for every arm, chosen on the
    validation patients (`augment.choose_segmenter`; the test split is not read), then `augment.run_experiment`
    (tag "phantom") with it and the dose-response arms. Returns (Results, Synthesis, the training sets'
    rare-class balance); `exp.config` becomes the chosen configuration, which the real-CT run reuses."""
    exp.choice = A.choose_segmenter(exp.inputs.dataset, exp.config, run_dir, tag="phantom",
                                    seed=exp.settings["seed"], device=exp.settings["device"],
                                    max_budgets=exp.max_budgets)
    exp.config = exp.choice.config
    return A.run_experiment(exp.inputs.dataset, run_dir, tag="phantom", models=exp.inputs.models,
                            config=exp.config, seeds=exp.seeds, dose_shares=exp.dose_shares, **exp.settings)


def table_segmenter_steps(exp: Experiment) -> pd.DataFrame:
    """The chosen configuration trained to its own plateau: validation Dice at 1, 2, ... times the profile's steps
    (`augment.choose_segmenter`, the plateau rule of `difflung.judging.plateau`); the steps every arm trains with
    marked."""
    import json

    curve = json.loads(exp.choice.path.read_text())["steps_curve"] if exp.choice.path else []
    return pd.DataFrame({"validation Dice (rare classes)": [sig(b["score"]) for b in curve],
                         "standard error": [sig(b["se"]) for b in curve],
                         "every arm trains with": ["yes" if b.get("chosen") else "" for b in curve]},
                        index=pd.Index([b["steps"] for b in curve], name="steps"))


def table_segmenter_choice(exp: Experiment) -> pd.DataFrame:
    """Each candidate configuration's validation score (mean rare-class Dice pooled per validation patient) and
    its standard error over patients; the chosen one marked (one-standard-error rule, `augment.choice`)."""
    sc = exp.choice.scores
    rows = sc.groupby("candidate", sort=False)[["score", "se"]].first()
    out = pd.DataFrame({"validation Dice (rare classes)": [sig(v) for v in rows["score"]],
                        "standard error": [sig(v) for v in rows["se"]],
                        "chosen": ["yes" if n == exp.choice.name else "" for n in rows.index]}, index=rows.index)
    out.index.name = "segmenter configuration"
    return out


def figure_dose_response(run_dir, *, dataset: str = "phantom", classes=None, seed: int = 0):
    """Dice of the Diff-Lung arm against the synthetic share of the real training set (0 = ref-UNet), one dot
    per training seed and the mean per share; None when the run had no dose-response arms."""
    d = A.dose_response(_metrics(run_dir, dataset))
    if d.empty:
        return None
    classes = [c for c in (classes or TABLE_CLASSES) if c in set(d["class"])]
    fig, axes = plt.subplots(1, len(classes), figsize=(2.6 * len(classes), 2.8), sharey=True, squeeze=False,
                             layout="constrained")
    for ax, c in zip(axes[0], classes):
        dc = d[d["class"] == c]
        ax.plot(dc["share"], dc["value"], "o", alpha=0.5, color="tab:blue")
        mean = dc.groupby("share")["value"].mean()
        ax.plot(mean.index, mean.to_numpy(), "-", color="tab:blue")
        ax.set_title(_header(c), fontsize=9)
        ax.set_xlabel("synthetic share of the real set")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("Dice (pooled per test patient)")
    save_figure(fig, Path(run_dir) / f"dose_response_{dataset}.png", config={"dataset": dataset}, seed=seed)
    return fig


def synthesis_tables(syn) -> list:
    """The mask synthesis report (`masksynth.report_table`), when masks were synthesised."""
    from difflung.data.masksynth import report_table

    return [report_table(syn.report)] if len(syn.report) else []


def run_real(exp: Experiment, run_dir) -> Results | None:
    """The same experiment on chapter 1's real-CT dataset (tag "real"); None when the run has none."""
    if exp.inputs.real_dataset is None:
        return None
    return A.run_experiment(exp.inputs.real_dataset, run_dir, tag="real", models=exp.inputs.real_models,
                            config=exp.config, seeds=exp.seeds, **exp.settings)[0]


def write_chapter_metrics(run_dir, results: list[Results], *, config: SegConfig, seed: int,
                          synthetic: dict[str, SyntheticSet] | None = None, extra: dict | None = None) -> Path:
    """metrics.csv (deterministic numbers only; intervals drawn from `seed`) + timings.json (wall times).
    `results` may hold None for a dataset the run skipped."""
    results = [r for r in results if r is not None]
    rng = np.random.default_rng(seed)
    path = write_metrics(run_dir, [row for r in results for row in A.metric_rows(r, generator=rng)])
    write_json_atomic(Path(run_dir) / "timings.json", A.timing_record(results, synthetic, config=config, seed=seed,
                                                                       extra=extra))
    return path


# ---------------------------------------------------------------------------------------------------------------
# tables and figures, from metrics.csv

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


def _summary(m: pd.DataFrame) -> pd.DataFrame:
    return m[m.seed == -1].pivot_table(index=["class", "model"], columns="metric", values="value", aggfunc="first",
                                       dropna=False)


def _arms(m: pd.DataFrame) -> list[str]:
    """The registry's arms in metrics.csv (the dose-response arms have their own figure)."""
    return sorted(set(m.loc[m.metric == "dice", "model"]) & set(ARMS), key=A.arm_order)


def table_results(run_dir, dataset: str = "phantom", classes=None, *, runs_root,
                  with_poster: bool | None = None) -> pd.DataFrame:
    """The poster's table from metrics.csv: per arm the mean Dice over training seeds, with its 95 % interval
    only from `stats.MIN_SEEDS` seeds; a class that is not measurable shows why instead of a number; for the
    phantom, the poster's reported rows beside ours, labelled as such."""
    m = _metrics(run_dir, dataset)
    classes, (measurable, _) = _classes(m, classes), A.validity(m, runs_root, dataset)
    agg, rows = _summary(m), []
    for arm in _arms(m):
        row = {"model": A.arm_label(arm), "source": "ours", "seeds": int(agg.loc[(classes[0], arm), "n_seeds"])}
        for c in classes:
            r = agg.loc[(c, arm)]
            row[_header(c)] = (f"not measurable: {measurable[c][1]}" if not measurable[c][0] else
                               sig(r.dice_mean) + (f" [{sig(r.dice_lo)}, {sig(r.dice_hi)}]"
                                                   if np.isfinite(r.dice_lo) else ""))
        rows.append(row)
    if _with_poster(classes, with_poster):
        for arm, vals in POSTER.items():
            rows.append({"model": ARM_NAMES[arm], "source": LABEL, "seeds": "not stated",
                         **{_header(c): f"{vals[c]:.2f}" if c in vals else "not reported" for c in classes}})
    return pd.DataFrame(rows).set_index(["model", "source"])


def _header(c: str) -> str:
    return f"Dice {'healthy' if c == 'lung' else 'GGO' if c == 'ggo' else c}"


def table_comparisons(run_dir, dataset: str = "phantom", classes=None, *, runs_root, seed: int = 0) -> pd.DataFrame:
    """The chapter's comparisons (`augment.comparison_triples`: every arm against ref, every synthetic arm against
    the oversampling control; the poster's own claims excluded, see `table_poster_claims`), judged with the book's
    one rule over training seeds (`augment.judge_arms`: Holm across this table)."""
    m = _metrics(run_dir, dataset)
    classes, (measurable, converged) = _classes(m, classes), A.validity(m, runs_root, dataset)
    exclude = POSTER_TRIPLES if dataset == "phantom" else ()
    t = A.judge_arms(A.seed_scores(m), A.comparison_triples(classes, _arms(m), exclude), measurable=measurable,
                     usable=converged, convergence=A.arm_convergence(runs_root, _arms(m), dataset))
    ok = ~t.verdict.str.startswith("not measurable")  # those show their reason, not numbers
    interval = [("n/a" if not k else f"[{sig(lo)}, {sig(hi)}]" if np.isfinite(lo) else
                 f"none (fewer than {stats.MIN_SEEDS} seeds)") for k, lo, hi in zip(ok, t.lo, t.hi)]
    return pd.DataFrame({"comparison": t.claim, "difference": t.estimate.where(ok), "95 % interval": interval,
                         "seeds": t.n, "p": t.p.where(ok), "p (Holm)": t["p (Holm)"], "verdict": t.verdict,
                         "why": t.note.where(ok, ""), "training notes (not a gate)": t.convergence})


def table_poster_claims(runs_root) -> pd.DataFrame:
    """The poster's segmentation claims as judged for the whole run -- the single call site in this chapter.

    `difflung.judging.claims.judge_run(runs_root)` judges every claim of `difflung.judging.reported.CLAIMS` once
    (Holm across the run's claims, `stats.verdict`) from this chapter's per-seed Dice rows and the criteria of
    chapters 1, 3 and 4; the results chapter shows the same rows, so chapters 5 and 6 cannot disagree. Imported
    lazily: the other sections of this chapter do not depend on it.
    """
    from difflung.judging import claims

    t = claims.judge_run(runs_root)
    return t[t["kind"] == "segmentation"].drop(columns="kind").reset_index(drop=True)


def _with_poster(classes, with_poster) -> bool:  # the poster's rows only where its classes are studied
    return bool({"emphysema", "fibrosis"} & set(classes)) if with_poster is None else with_poster


def _dots(ax, values: dict, order: list[str], hue: list[str], palette: dict, marker: str = "o", spans=None):
    """values[(class, arm)] = (per-seed values, mean, lo, hi); one dot per seed, a bar at the mean, the interval
    as an error bar where it exists."""
    w = 0.8 / max(len(hue), 1)
    for j, arm in enumerate(hue):
        for i, c in enumerate(order):
            if (c, arm) not in values:
                continue
            v, mean, lo, hi = values[(c, arm)]
            x = i - 0.4 + w * (j + 0.5)
            ax.scatter(x + np.linspace(-w / 5, w / 5, len(v)) if len(v) > 1 else [x] * len(v), v, s=16,
                       color=palette[arm], alpha=0.75, marker=marker, label=arm if i == 0 else None, zorder=3)
            ax.plot([x - w / 3, x + w / 3], [mean] * 2, color=palette[arm], lw=2, zorder=4)
            if np.isfinite(lo):
                ax.errorbar(x, mean, yerr=[[mean - lo], [hi - mean]], color=palette[arm], capsize=3, zorder=4)
    for i in [order.index(c) for c in (spans or ())]:
        ax.axvspan(i - 0.5, i + 0.5, color="0.88", zorder=0)
    ax.set_xticks(range(len(order)), [_header(c)[5:] + ("\n(not measurable)" if spans and c in spans else "")
                                      for c in order], fontsize=8)
    ax.set_xlim(-0.5, len(order) - 0.5)
    ax.set_ylim(-0.03, 1.03)
    ax.grid(axis="y", alpha=0.3)


def figure_dice(run_dir, dataset: str = "phantom", classes=None, *, runs_root, with_poster: bool | None = None,
                seed: int = 0):
    """Per class and arm: one dot per training seed, a bar at the mean and, from `stats.MIN_SEEDS` seeds, the 95 %
    interval; classes that are not measurable on a grey band. The poster's reported values in a second panel."""
    import seaborn as sns

    m = _metrics(run_dir, dataset)
    classes, (measurable, _) = _classes(m, classes), A.validity(m, runs_root, dataset)
    arms, agg, d = _arms(m), _summary(m), A.seed_scores(m)
    palette = dict(zip([A.arm_label(a) for a in ARMS], sns.color_palette("colorblind", len(ARMS))))
    values = {(c, A.arm_label(a)): (d[(d.model == a) & (d["class"] == c)].value.dropna().to_numpy(),
                                          *agg.loc[(c, a), ["dice_mean", "dice_lo", "dice_hi"]])
              for c in classes for a in arms}
    poster = _with_poster(classes, with_poster)
    fig, axes = plt.subplots(1, 2 if poster else 1, figsize=(10 if poster else 6.5, 3.8), sharey=True, squeeze=False,
                             gridspec_kw={"width_ratios": [len(classes), 3] if poster else [1]}, layout="constrained")
    hue = [A.arm_label(a) for a in arms]
    _dots(axes[0, 0], values, classes, hue, palette, spans={c for c in classes if not measurable[c][0]})
    n = int(d.seed.nunique())
    axes[0, 0].set_title(f"ours ({dataset}): {n} training seeds, one dot each; bar = mean"
                         + ("; 95 % interval" if n >= stats.MIN_SEEDS else
                            f"; no interval below {stats.MIN_SEEDS} seeds"), fontsize=9)
    axes[0, 0].set_ylabel("Dice (held-out test slices)")
    axes[0, 0].legend(loc="lower left", fontsize=7, frameon=False)
    if poster:
        rep = {(c, ARM_NAMES[a]): ([v], v, np.nan, np.nan) for a, dd in POSTER.items() for c, v in dd.items()}
        _dots(axes[0, 1], rep, ["lung", "emphysema", "fibrosis"], [ARM_NAMES[a] for a in POSTER], palette, "D")
        axes[0, 1].set_title(f"{LABEL}: no seeds or interval given", fontsize=9)
    save_figure(fig, Path(run_dir) / f"dice_{dataset}.png", config={"dataset": dataset, "classes": classes},
                seed=seed)
    return fig


def figure_examples(res: Results, run_dir, *, seed: int = 0):
    """The same test slices: image, truth, and each arm's prediction (first seed), lung window with overlays."""
    from difflung.data.dataset import unwindow

    k, arms = len(res.example_idx), list(res.examples)
    fig, axes = plt.subplots(k, 2 + len(arms), figsize=(2.1 * (2 + len(arms)) + 0.8, 2.2 * k), squeeze=False,
                             layout="constrained")
    truth = f"{res.tag} (truth)" if res.tag == "phantom" else "truth"
    for r, i in enumerate(res.example_idx):
        hu = unwindow(res.test.images[i])
        show_ct(axes[r, 0], hu, title=f"test slice {i}")
        show_ct(axes[r, 1], hu, res.test.labels[i], alpha=0.5, title=truth if r == 0 else None)
        for j, arm in enumerate(arms):
            show_ct(axes[r, 2 + j], hu, res.examples[arm][r], alpha=0.5,
                    title=A.arm_label(arm) if r == 0 else None)
    hu_colorbar(fig, axes)
    present = sorted(set(np.unique(res.test.labels[res.example_idx]).tolist()) - {L.BACKGROUND, L.BODY})
    fig.legend(handles=legend_handles(present), loc="outside lower center", ncol=max(len(present), 1), frameon=False)
    fig.suptitle(f"Predictions on the same {res.tag} test slices (training seed {res.seeds[0]}); {window_name()}",
                 fontsize=10)
    save_figure(fig, Path(run_dir) / f"examples_{res.tag}.png", config={"slices": res.example_idx.tolist()},
                seed=seed)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# the scope box and the nnU-Net export

def scope_lines(metrics: pd.DataFrame, runs_root, dataset: str, classes, exclude=()) -> tuple[list, list]:
    """(can, cannot) sentences for the chapter's scope box: per-seed values, the floor of seeds for an interval and
    a test (`stats.MIN_SEEDS`), classes not measurable and arms whose main model never learned its masks, each with
    its reason."""
    measurable, converged = A.validity(metrics, runs_root, dataset)  # converged: arm -> (usable, reason)
    n = int(A.seed_scores(metrics).seed.nunique())
    ok = [c for c in classes if measurable[c][0]]
    can = [f"Per-seed Dice of every arm on {', '.join(ok)}, on held-out test patients."] if ok else []
    cannot = []
    if n < stats.MIN_SEEDS:
        cannot.append(f"An interval or a test for any Dice or difference: {n} training seeds, fewer than the "
                      f"{stats.MIN_SEEDS} an interval and a test need; the page shows the per-seed values only, "
                      f"and no comparison can be more than inconclusive.")
    cannot += [f"Dice of {c}: not measurable ({measurable[c][1]})." for c in classes if not measurable[c][0]]
    cannot += [f"Whether {A.arm_label(a)}'s synthetic slices help: not measurable ({why})."
               for a, (good, why) in converged.items() if not good]
    return can, cannot


def scope(profile: str, run_dir, *, runs_root, dataset: str = "phantom") -> Scope:
    """The chapter's "What this run can and cannot show" box, from its own metrics and validity checks."""
    m = _metrics(run_dir, dataset)
    tot = m[m.model == "all"].set_index("metric")["value"]
    can, cannot = scope_lines(m, runs_root, dataset, _classes(m, None), exclude=POSTER_TRIPLES)
    return Scope(profile, can=can, cannot=cannot + smoke_caveat(profile), facts={
        "image size": f"{tot['image_size']:.0f} px",
        "training seeds per arm": str(A.seed_scores(m).seed.nunique()),
        "test patients": f"{tot['n_test_patients']:.0f}", "test slices": f"{tot['n_test_slices']:.0f}"})


def real_ct_tables(real: Results | None, run_dir, *, runs_root, seed: int = 0) -> list:
    """The real-CT section: its results and comparisons tables and the experiment's notes, or one line saying the
    run has no real-CT dataset."""
    from IPython.display import Markdown

    if real is None:
        return [Markdown("This run has no real-CT dataset; the section is skipped.")]
    return [table(table_results(run_dir, "real", runs_root=runs_root)),
            table(table_comparisons(run_dir, "real", runs_root=runs_root, seed=seed), hide_index=True),
            Markdown("\n".join(f"- {n}" for n in real.notes))]


def figure_dice_real(real: Results | None, run_dir, *, runs_root, seed: int = 0):
    """`figure_dice` of the real-CT dataset; None when the run has none."""
    return None if real is None else figure_dice(run_dir, "real", runs_root=runs_root, seed=seed)


def table_nnunet_export(exp: Experiment, syn, run_dir):
    """`export_nnunet_example` of the +difflung training set, as a table; None when the run has no such arm."""
    if "+difflung" not in syn.sets:
        return None
    return table(export_nnunet_example(exp.inputs.dataset, syn.sets["+difflung"], run_dir)[1])


def export_nnunet_example(dataset, synthetic: SyntheticSet, run_dir, *, dataset_id: int = 501,
                          name: str = "DiffLung") -> tuple[Path, pd.DataFrame]:
    """Write the +difflung training set (real train + synthetic) as an nnU-Net v2 raw dataset in the run folder."""
    from difflung.data.nnunet import export_nnunet

    ds = Dataset(dataset)
    folder = export_nnunet(Path(run_dir) / "nnUNet_raw", dataset_id, name, ds.split("train"),
                           (synthetic.images, synthetic.labels), ds.classes, overwrite=True, source=str(ds.root))
    meta = json.loads((folder / "dataset.json").read_text())
    summary = {"folder": folder.name, "training cases": meta["numTraining"],
               "synthetic cases": meta["difflung"]["n_synthetic"], "file ending": meta["file_ending"],
               "channels": ", ".join(map(str, meta["channel_names"].values())), "labels": ", ".join(meta["labels"])}
    return folder, pd.DataFrame({"value": summary}).rename_axis("nnU-Net dataset")
