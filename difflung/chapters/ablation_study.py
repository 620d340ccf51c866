"""Chapter 2, mask ablation study: one model per ablation strategy, same data and budget, compared on image
quality, mask faithfulness (rare classes separately) and generation from partial masks.

Each function is one section of `notebooks/02_mask_ablation_study.py`:

    ch.table_probabilities(runs_root, steps=steps); ch.figure_schedules(runs_root, run_dir, steps=steps)
    ch.train_strategies(runs_root, run_dir, steps=..., batch_size=..., preset=..., lr=..., seed=seed)
    ch.figure_losses(run_dir)
    scored = ch.evaluate(runs_root, run_dir, judge_steps=..., n_test=..., sampler=..., sampler_steps=..., seeds=...)
    measurable, results = ch.check(runs_root, run_dir, scored, sampler=..., steps=..., seed=seed)
    ch.table_quality(scored, measurable, results); ch.figure_dice(scored, measurable, run_dir)
    ch.comparisons(scored, measurable, results); ch.figure_partial(scored, measurable, run_dir)
    ch.figure_samples(scored, run_dir); ch.scope(profile, scored, measurable, results, n_comparisons)

Models go to `<run_dir>/models/<strategy>/` (reused when finished with the same config and data); generation and
scoring follow `difflung.judging.scoring`. The unit of every interval is the test patient (`difflung.judging.stats`);
classes the judge cannot read, or whose HU signature is lost at this size, and strategies that miss their convergence
criteria (`difflung.judging.criteria`, written to `criteria.json`) make their comparisons "not measurable".
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from difflung.judging import criteria, scoring, stats
from difflung.judging.claims import main_learned
from difflung.core import runs
from difflung import labels as L
from difflung.diffusion import STRATEGIES, AblationSchedule, ablation_frequencies, to_hu, train_diffusion
from difflung.generators import diffusion_config, display_name
from difflung.core.parallel import run_jobs
from difflung.plots import interval, legend_handles, plt, save_figure, sig, slice_grid, window_name
from difflung.core.provenance import resolve_device
from difflung.chapters import common, criteria_tables
from difflung.chapters.scope import Scope, glue_facts, smoke_caveat  # noqa: F401  (glue_facts: for the page)


open_dataset = common.open_dataset  # the phantom dataset of chapter 1; a clear error if missing


# ---------------------------------------------------------------------------------------------------------------
# schedules

def table_probabilities(runs_root, *, steps: int, strategies=STRATEGIES) -> pd.DataFrame:
    """P_i per class (columns) for each strategy at t = 0, T/2 and T (rows), below the class frequencies f used
    (first row)."""
    ds = open_dataset(runs_root)
    freqs = ablation_frequencies(ds)
    rows = {("frequency f", ""): list(freqs.values())}
    for s in strategies:
        sch = AblationSchedule(s, ds.classes, freqs, steps)
        for label, t in (("t=0", 0), ("t=T/2", steps // 2), ("t=T", steps)):
            rows[(s, label)] = sch.probabilities(t).tolist()
    index = pd.MultiIndex.from_tuples(list(rows), names=["strategy", "step"])
    return pd.DataFrame(list(rows.values()), index=index, columns=list(freqs))


def figure_schedules(runs_root, run_dir, *, steps: int, strategies=STRATEGIES, seed: int = 0):
    """Ablation probability of each class over training, one panel per strategy."""
    ds = open_dataset(runs_root)
    freqs = ablation_frequencies(ds)
    fig, axes = plt.subplots(1, len(strategies), figsize=(2.7 * len(strategies), 2.8), sharey=True)
    for ax, s in zip(np.atleast_1d(axes), strategies):
        tab = AblationSchedule(s, ds.classes, freqs, steps).table(101)
        for c in ds.classes:
            if c == L.BACKGROUND:
                continue
            part = tab[tab["class"] == L.BY_ID[c].name]
            ax.plot(part["step"], part["probability"], color=L.BY_ID[c].color, lw=2 if c in L.PATHOLOGY_IDS else 1,
                    ls="-" if c in L.PATHOLOGY_IDS else "--")
        ax.set_title(display_name(s), fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylim(-0.03, 1.03)
    np.atleast_1d(axes)[0].set_ylabel("P(class withheld)")
    fig.legend(handles=legend_handles([c for c in ds.classes if c != L.BACKGROUND]), loc="lower center",
               ncol=len(ds.classes) - 1, frameon=False)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    save_figure(fig, Path(run_dir) / "ablation_schedules.png", config={"steps": steps, "frequencies": freqs}, seed=seed)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# training

def train_strategies(runs_root, run_dir, *, steps: int, batch_size: int, preset: str = "small", lr: float = 1e-4,
                     warmup: int | None = None, seed: int = 0, strategies=STRATEGIES, device: str = "auto",
                     workers: int = 1, judge_steps: int = 300, n_val: int = 8, curve_evals: int = 4,
                     sampler: str = "dpm", sampler_steps: int = 10, low_res_share: float = 0.0,
                     mixed_precision: str = "auto") -> pd.DataFrame:
    """Train (or reuse) one model per strategy with the same data, budget and seed, each scored on the validation
    split `curve_evals` times while it trains (`difflung.training_curves`, one budget: whether it plateaued is
    shown, not acted on here; chapter 4 trains generators on).

    Args:
        runs_root: folder of the profile's runs (holds chapter 1's dataset).
        run_dir: this chapter's folder; models go to `<run_dir>/models/<strategy>/`.
        steps, batch_size, preset, lr, warmup, low_res_share, mixed_precision: `TrainConfig` fields shared by
            every strategy.
        seed: training seed (weights, data order, ablation and noise draws), the same for every strategy.
        strategies: which strategies to train (registry keys of `difflung.generators`).
        device: "auto", "cpu" or "cuda".
        workers: models trained at once on a CPU, one thread each (`difflung.core.parallel.run_jobs`).
        judge_steps, n_val, curve_evals, sampler, sampler_steps: how the training curves are scored.

    Returns:
        One row per strategy: steps, batch, wall time, images/s, final loss, validation score, device, reused.
    """
    from difflung.judging import plateau
    from difflung.training_curves import train_curve

    ds, dev = open_dataset(runs_root), resolve_device(device)
    cfgs = {s: diffusion_config(s, preset=preset, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
                                low_res_share=low_res_share, mixed_precision=mixed_precision, seed=seed)
            for s in strategies}
    curves = run_jobs(train_curve, [common.curve_job(
        runs_root, s, cfgs[s], runs.model_dir(run_dir, s), judge_steps=judge_steps, seed=seed, n_val=n_val,
        curve_evals=curve_evals, max_budgets=1, sampler=sampler, sampler_steps=sampler_steps, device=dev)
        for s in strategies], workers=workers, device=dev)
    rows = []
    for s, c in zip(strategies, curves):
        r = train_diffusion(ds, cfgs[s], c.folder, device=dev, progress=False)  # the finished model: reused
        loss = pd.read_csv(r.loss_csv)["loss"]
        last = c.points[-1]
        rows.append({"strategy": s, "steps": r.steps, "batch": batch_size,
                     "wall time (s)": sum(p["wall_s"] for p in c.points), "images / s": r.images_per_s,
                     "final loss (mean of last 10 % of steps)": float(loss.tail(max(len(loss) // 10, 1)).mean()),
                     "validation judge-Dice ratio": last["score"], "plateau": plateau.status(c.plateaued, 1, 1)
                     if c.plateaued else "still improving at the budget", "device": r.device,
                     "reused from an earlier run": c.reused})
    return pd.DataFrame(rows).set_index("strategy")


def figure_losses(run_dir, *, strategies=STRATEGIES, seed: int = 0, smooth: int = 20):
    """Training loss per strategy (running mean over `smooth` steps)."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for s in strategies:
        df = pd.read_csv(runs.model_dir(run_dir, s) / "loss.csv")
        ax.plot(df["step"], df["loss"].rolling(smooth, min_periods=1).mean(), label=display_name(s))
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"MSE(eps), running mean of {smooth}")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    save_figure(fig, Path(run_dir) / "ablation_losses.png", seed=seed)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# evaluation

def evaluate(runs_root, run_dir, *, judge_steps: int, n_test: int, sampler: str, sampler_steps: int, seeds=(0,),
             partial: bool = True, strategies=STRATEGIES, seed: int = 0, batch_size: int = 32,
             device: str = "auto", progress: bool = False) -> scoring.Scored:
    """Generate and score the test masks with every strategy's model (`difflung.judging.scoring.generate_and_score`).

    With `partial`, each non-background class is also withheld from the masks in turn (first seed only). Writes
    `<run_dir>/per_image.csv` and `metrics.csv`: per (model, condition, metric, class) the mean over test slices
    (each averaged over sampling seeds) with its patient-level interval, seed -1 (`stats.slice_intervals`).

    Args:
        runs_root, run_dir: as in `train_strategies` (run that section first).
        judge_steps: training steps of the run's judge segmenter (`difflung.judging.scoring.judge`, trained once).
        n_test: test slices scored; sampler, sampler_steps: the diffusion sampler; seeds: sampling seeds.
        seed: the judge's training seed and the bootstrap's.
    """
    ds = open_dataset(runs_root)

    def metric_rows(scored, _):
        s = stats.slice_intervals(scored.rows, ["model", "condition", "metric", "class"],
                                  generator=np.random.default_rng(seed))
        return s.rename(columns={"mean": "value", "patients": "n"}).drop(columns="slices").assign(seed=-1)

    withheld = [c for c in ds.classes if c != L.BACKGROUND] if partial else []
    return common.evaluate(runs_root, run_dir, [(s, runs.model_dir(run_dir, s)) for s in strategies],
                           judge_steps=judge_steps, n_test=n_test, sampler=sampler, sampler_steps=sampler_steps,
                           seeds=seeds, seed=seed, batch_size=batch_size, device=device, progress=progress,
                           dataset=ds, withheld=withheld, metric_rows=metric_rows).scored


def check(runs_root, run_dir, scored: scoring.Scored, *, sampler: str, steps: int, seed: int = 0):
    """Measurable classes (judge floors, chapter 1's HU signature) and each strategy's convergence criteria
    (`common.check`), written to `<run_dir>/criteria.json`. Returns (measurable, results)."""
    ds = open_dataset(runs_root)
    return common.check(runs_root, run_dir, scored, _order(scored.rows["model"], real=False), seed=seed, dataset=ds,
                        size=ds.size, sampler=sampler, test_patients=len(set(scored.patient)), steps=steps)


def page_facts() -> dict:
    """Values the page's prose quotes before any run (glued): the display window."""
    return {"lung_window": window_name()}


def table_measurable(scored: scoring.Scored, measurable) -> pd.DataFrame:
    """Per class scored: the judge's Dice on the real test slices, its floor, measurable or why not."""
    return criteria_tables.measurable_table(scored, measurable)


def table_criteria(results) -> pd.DataFrame:
    """Each strategy's convergence criteria side by side (value, met or missed), and whether it converged."""
    return criteria_tables.wide_table(results, {k: display_name(k) for k in results})


def run_facts(scored: scoring.Scored) -> dict:
    """The evaluation's facts for the prose: test slices, test patients, sampling seeds, the interval's level and
    the verdict's alpha (`difflung.judging.stats`)."""
    return {"n_test_slices": len(scored.index), "n_test_patients": len(set(scored.patient)),
            "n_seeds": len({k[3] for k in scored.images if k[2] == "full"}),
            "confidence": f"{stats.CONFIDENCE:.0%}", "alpha": stats.ALPHA}


def claim_facts(claims: pd.DataFrame) -> dict:
    """How many comparisons the chapter makes, and the fewest test patients Holm's correction over them needs."""
    return {"n_claims": len(claims), "min_patients": stats.min_units(len(claims))}


def _order(models, real: bool = True) -> list[str]:
    return [m for m in (["real"] if real else []) + list(STRATEGIES) if m in set(models)]


def _names(results) -> dict[str, str]:
    return {m: display_name(m) + ("" if r["converged"] else " (not converged)") for m, r in results.items()}


def table_quality(scored: scoring.Scored, measurable, results, *, seed: int = 0) -> pd.DataFrame:
    """Full masks: PSNR, SSIM and the judge's Dice per class (rows) for each strategy (columns), "mean [95 %
    interval]" over test slices (each averaged over sampling seeds; interval by patient), below whether the
    strategy converged. A class the run cannot measure reads "not measurable", its reason in the last column;
    the column `real slices` is the judge on the real test slices (its ceiling)."""
    full = scored.rows[scored.rows["condition"] == "full"]
    s = stats.slice_intervals(full, ["model", "metric", "class"], generator=np.random.default_rng(seed))
    s["cell"] = [interval(*v) for v in zip(s["mean"], s["lo"], s["hi"])]
    models = _order(s["model"])
    out = {"converged": {m: ("yes" if results[m]["converged"] else "no") if m in results else "-" for m in models}}
    why = {"converged": ""}
    present = sorted(set(s.loc[(s["metric"] == "dice") & s["mean"].notna(), "class"]), key=L.class_id)
    for metric, cls in [("psnr", "all"), ("ssim", "all")] + [("dice", c) for c in present]:
        name = {"psnr": "PSNR (dB)", "ssim": "SSIM"}.get(metric, f"Dice {cls}")
        ok, why[name] = (True, "") if metric != "dice" else measurable.get(cls, (False, "absent from the test truth"))
        cells = s[(s.metric == metric) & (s["class"] == cls)].set_index("model")["cell"]
        out[name] = {m: cells.get(m, "-") if ok else "not measurable" for m in models}
    t = pd.DataFrame(out).T.rename(columns=display_name).rename_axis("metric")
    return t.assign(**{"why not measurable": pd.Series(why)})


def figure_dice(scored: scoring.Scored, measurable, run_dir, *, seed: int = 0):
    """Mask faithfulness per measurable class and strategy (full masks): mean and patient-level 95 % interval
    over test slices averaged over sampling seeds; classes not measurable are left out and named in the title."""
    full = scored.rows[(scored.rows["condition"] == "full") & (scored.rows["metric"] == "dice")]
    classes = [c for c in dict.fromkeys(full["class"]) if measurable.get(c, (False, ""))[0]]
    s = stats.slice_intervals(full[full["class"].isin(classes)], ["model", "class"],
                              generator=np.random.default_rng(seed))
    models = _order(s["model"])
    fig, ax = plt.subplots(figsize=(1.3 * max(len(classes), 1) + 2, 3.4))
    w = 0.8 / max(len(models), 1)
    for j, m in enumerate(models):
        sel = s[s["model"] == m].set_index("class").reindex(classes)
        x = np.arange(len(classes)) + (j - (len(models) - 1) / 2) * w
        err = np.array([sel["mean"] - sel["lo"], sel["hi"] - sel["mean"]])
        ax.bar(x, sel["mean"], w, yerr=np.nan_to_num(err), capsize=2, label=display_name(m),
               color="0.6" if m == "real" else None)
    ax.set_xticks(np.arange(len(classes)), classes)
    ax.set(ylabel="Dice (judge on image vs mask)", ylim=(0, 1))
    if classes:
        ax.legend(fontsize=7, frameon=False, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.12))
    lost = [c for c in dict.fromkeys(full["class"]) if c not in classes]
    ax.set_title("Not measurable, left out: " + (", ".join(lost) if lost else "none"), fontsize=8)
    fig.tight_layout()
    save_figure(fig, Path(run_dir) / "ablation_dice.png", seed=seed)
    return fig


def comparisons(scored: scoring.Scored, measurable, results, *, seed: int = 0, ref: str = "cbmat") -> pd.DataFrame:
    """CBMAT against every other strategy on PSNR and on each rare class's Dice (full masks): paired by sampling
    seed and slice, patient-level interval and sign-flip test (`stats.compare_slices`), Holm's correction over
    all of them and the book's one verdict rule (`stats.judge_claims`); validity from `criteria.validity` (a missed
    convergence criterion is a note) and `claims.main_learned` (CBMAT never learned its masks: not measurable)."""
    rows = scored.rows
    rare = [L.BY_ID[c].name for c in L.PATHOLOGY_IDS if (scored.labels == c).any()]
    converged = {m: r["converged"] for m, r in results.items()}
    learned = main_learned({ref: results.get(ref, {})}, ref)  # the gate: convergence itself is only a note
    gate = {} if learned[0] else {"measurable": False, "reason": learned[1]}
    gen, cmps = np.random.default_rng(seed), []
    for b in [m for m in _order(rows["model"], real=False) if m != ref]:
        for metric, cls in [("psnr", "all")] + [("dice", c) for c in rare]:
            p = scoring.paired(rows, ref, b, metric, cls)
            what = "PSNR" if metric == "psnr" else f"{cls} Dice"
            cmps.append(stats.compare_slices(p["a"], p["b"], p["slice"], p["patient"], generator=gen,
                                             claim=f"{what}: {display_name(ref)} > {display_name(b)}",
                                             **{**criteria.validity([cls], measurable, converged, [ref, b]),
                                                **gate}))
    out = stats.judge_claims(cmps).drop(columns=["reported", "magnitude", "unit"])
    return out.assign(note=out["note"].where(~out["verdict"].str.startswith("not measurable"), ""))


def figure_partial(scored: scoring.Scored, measurable, run_dir, *, seed: int = 0):
    """Generation from partial masks: PSNR and mean Dice of the measurable classes still given, per strategy
    (rows) and withheld class (columns); the 'full' column is the complete mask."""
    df = scored.rows[scored.rows["model"] != "real"]
    df = df[df["seed"] == df.loc[df["condition"] != "full", "seed"].min()] if (df["condition"] != "full").any() else df
    conds, models = list(dict.fromkeys(df["condition"])), _order(df["model"], real=False)
    dice = df[(df["metric"] == "dice") & df["class"].map(lambda c: measurable.get(c, (False,))[0])]
    kept = dice[dice["condition"].str.removeprefix("no ") != dice["class"]]  # Dice of the classes still in the mask
    mats = {"PSNR (dB)": df[df["metric"] == "psnr"].groupby(["model", "condition"])["value"].mean(),
            "Dice of the measurable classes given": kept.groupby(["model", "condition", "slice"])["value"].mean()
            .groupby(["model", "condition"]).mean()}
    fig, axes = plt.subplots(1, 2, figsize=(2 + 1.1 * len(conds), 0.5 * len(models) + 1.8))
    for ax, (title, ser) in zip(axes, mats.items()):
        mat = ser.unstack("condition").reindex(index=models, columns=conds) if len(ser) else \
            pd.DataFrame(np.nan, index=models, columns=conds)
        im = ax.imshow(mat.to_numpy(dtype=float), cmap="viridis", aspect="auto")
        for (i, j), v in np.ndenumerate(mat.to_numpy(dtype=float)):
            ax.text(j, i, sig(v) if np.isfinite(v) else "", ha="center", va="center", fontsize=7, color="w")
        ax.set_xticks(range(len(conds)), conds, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(models)), [display_name(m) for m in models], fontsize=8)
        ax.set_title(title, fontsize=9)
        if np.isfinite(mat.to_numpy(dtype=float)).any():
            fig.colorbar(im, ax=ax, shrink=0.8)
        else:
            ax.text(0.5, 0.5, "not measurable:\nno class is measurable", transform=ax.transAxes, ha="center")
    fig.tight_layout()
    save_figure(fig, Path(run_dir) / "ablation_partial.png", seed=seed)
    return fig


def figure_samples(scored: scoring.Scored, run_dir, *, n: int = 4, seed: int | None = None):
    """The scored test slices richest in rare classes (with and without their mask) and each strategy's
    generation from the same masks (full masks, sampling seed `seed`, default the first), lung window."""
    pos = scoring.rare_rich(scored.labels, n)
    real = to_hu(scored.real[pos])
    rows = [("mask", real, scored.labels[pos]), ("phantom (truth)", real, None)]
    rows += [(display_name(m), to_hu(scored.generated(m, seed=seed)[pos]), None)
             for m in _order([k[0] for k in scored.images])]
    fig = slice_grid(rows, np.unique(scored.labels).tolist(), cell=1.5)
    save_figure(fig, Path(run_dir) / "ablation_samples.png", config={"test_slices": scored.index[pos].tolist()},
                seed=seed)
    return fig


def scope(profile: str, scored: scoring.Scored, measurable, results, n_comparisons: int) -> Scope:
    """The chapter's "What this run can and cannot show" box, from its own numbers."""
    seeds = sorted({k[3] for k in scored.images if k[2] == "full"})
    s = Scope(profile, facts={"image size": f"{scored.real.shape[-1]} px", "strategies": str(len(results)),
                              "test patients": str(len(set(scored.patient))), "test slices": str(len(scored.index)),
                              "sampling seeds": ", ".join(map(str, seeds)), "training seeds per strategy": "1"})
    s.can.append(f"Image quality and faithfulness of each strategy with patient-level intervals, and "
                 f"{n_comparisons} comparisons against CBMAT under Holm's correction, where they are measurable.")
    s.cannot += criteria_tables.cannot_show(measurable, results, _names(results))
    s.cannot.append("Variation over training seeds: one model per strategy.")
    s.cannot += smoke_caveat(profile)
    return s
