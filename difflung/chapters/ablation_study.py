"""Chapter 2, mask ablation study: one model per ablation strategy, same data and budget, compared on image
quality, mask faithfulness (rare classes separately) and generation from partial masks.

Each function is one section of `notebooks/02_mask_ablation_study.py`:

    ch.table_probabilities(runs_root, steps=steps); ch.figure_schedules(runs_root, run_dir, steps=steps)
    ch.train_strategies(runs_root, run_dir, steps=..., batch_size=..., preset=..., lr=..., seed=seed)
    ch.figure_losses(run_dir)
    scored = ch.evaluate(runs_root, run_dir, judge_steps=..., n_test=..., sampler=..., sampler_steps=..., seeds=...)
    ch.table_judge(scored); ch.table_quality(scored); ch.figure_dice(scored, run_dir)
    ch.figure_partial(scored, run_dir); ch.figure_samples(scored, run_dir)

The profile's values come from profiles/*.yml. Models go to `<run_dir>/models/<strategy>/` (reused when finished
with the same config and data); generation and scoring follow `difflung.scoring` (judge, test subset, seeding,
schema); per-slice rows go to `<run_dir>/per_image.csv`, summaries to `metrics.csv`. Confidence intervals are
Student-t over test slices (per seed), and over seeds (of the per-seed means) when there are several; in
`metrics.csv` the across-seed rows carry seed -1.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import labels as L
from .. import runs, scoring
from ..dataset import Dataset
from ..diffusion import STRATEGIES, AblationSchedule, ablation_frequencies, to_hu, train_diffusion
from ..evaluation import summarize
from ..generators import diffusion_config, display_name, load_generator
from ..metrics import write_metrics
from ..plots import legend_handles, plt, save_figure, slice_grid
from ..provenance import resolve_device


def open_dataset(runs_root) -> Dataset:
    """The phantom dataset of chapter 1; a clear error if missing."""
    return Dataset(runs.phantom_dataset_dir(runs_root))


def rare_classes(classes) -> list[int]:
    """The pathology classes among `classes` (emphysema, GGO, fibrosis in the phantom)."""
    return [c for c in classes if c in L.PATHOLOGY_IDS]


# ---------------------------------------------------------------------------------------------------------------
# schedules

def table_probabilities(runs_root, *, steps: int, strategies=STRATEGIES) -> pd.DataFrame:
    """P_i at t = 0, T/2 and T per class (rows) and strategy (columns), with the f_i used."""
    ds = open_dataset(runs_root)
    freqs = ablation_frequencies(ds)
    cols = {("f_i", ""): list(freqs.values())}
    for s in strategies:
        sch = AblationSchedule(s, ds.classes, freqs, steps)
        for label, t in (("t=0", 0), ("t=T/2", steps // 2), ("t=T", steps)):
            cols[(s, label)] = sch.probabilities(t).tolist()
    return pd.DataFrame(cols, index=pd.Index(list(freqs), name="class"))


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
                     progress: bool = False) -> pd.DataFrame:
    """Train (or reuse) one model per strategy with the same data, budget and seed.

    Args:
        runs_root: folder of the profile's runs (holds chapter 1's dataset).
        run_dir: this chapter's folder; models go to `<run_dir>/models/<strategy>/`.
        steps, batch_size, preset, lr, warmup: `TrainConfig` fields shared by every strategy.
        seed: training seed (weights, data order, ablation and noise draws), the same for every strategy.
        strategies: which strategies to train (registry keys of `difflung.generators`).
        device: "auto", "cpu" or "cuda".

    Returns:
        One row per strategy: steps, batch, wall time, images/s, final loss, device, reused.
    """
    ds = open_dataset(runs_root)
    rows = []
    for s in strategies:
        cfg = diffusion_config(s, preset=preset, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, seed=seed,
                               checkpoint_every=max(steps // 2, 1))
        # a model of an earlier, different configuration in this chapter's folder is replaced
        r = train_diffusion(ds, cfg, runs.model_dir(run_dir, s), device=device, progress=progress, overwrite=True)
        loss = pd.read_csv(r.loss_csv)["loss"]
        rows.append({"strategy": s, "steps": r.steps, "batch": batch_size, "wall_s": round(r.wall_s, 1),
                     "images_per_s": round(r.images_per_s, 1), "final_loss (mean of last 10%)":
                     round(float(loss.tail(max(len(loss) // 10, 1)).mean()), 4), "device": r.device,
                     "reused": r.reused})
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
    """Generate and score the test masks with every strategy's model (`difflung.scoring.generate_and_score`).

    With `partial`, each non-background class is also withheld from the masks in turn (first seed only). Writes
    `<run_dir>/per_image.csv` and the chapter's `metrics.csv` (`metric_rows`).

    Args:
        runs_root, run_dir: as in `train_strategies` (run that section first).
        judge_steps: training steps of the run's judge segmenter (`difflung.scoring.judge`, trained once).
        n_test: test slices scored; sampler, sampler_steps: the diffusion sampler; seeds: sampling seeds.
        seed: the judge's training seed.
    """
    ds, dev = open_dataset(runs_root), resolve_device(device)
    seg = scoring.judge(ds, runs.judge_dir(runs_root), steps=judge_steps, seed=seed, device=dev, progress=progress)
    gens = [load_generator(runs.model_dir(run_dir, s), key=s, dataset=ds, device=dev, sampler=sampler,
                           sampler_steps=sampler_steps) for s in strategies]
    withheld = [c for c in ds.classes if c != L.BACKGROUND] if partial else []
    scored = scoring.generate_and_score(gens, ds, seg, n_test=n_test, seeds=list(seeds), withheld=withheld,
                                        batch_size=batch_size, progress=progress)
    scoring.write_per_image(runs.per_image_path(run_dir), scored.rows)
    write_metrics(runs.metrics_path(run_dir), metric_rows(scored.rows))
    return scored


def table_judge(scored: scoring.Scored) -> pd.DataFrame:
    """The judge's Dice per class on the real test slices: the ceiling for generated ones."""
    return scoring.judge_dice(scored.rows)


def _with_means(per_image: pd.DataFrame, classes_present) -> pd.DataFrame:
    """Add per-slice derived Dice rows: mean over all scored classes ('all') and over rare classes ('rare')."""
    d = per_image[per_image["metric"] == "dice"]
    rare = [L.BY_ID[c].name for c in rare_classes(classes_present)]
    keys = ["model", "condition", "seed", "slice"]
    extra = []
    for name, sel in (("all", d), ("rare", d[d["class"].isin(rare)])):
        m = sel.groupby(keys, sort=False)["value"].mean().reset_index()  # NaN (class absent) skipped
        extra.append(m.assign(metric="dice_mean", **{"class": name}))
    return pd.concat([per_image] + extra, ignore_index=True)


def summary(per_image: pd.DataFrame, over: str = "images") -> pd.DataFrame:
    """Mean and 95% CI per (model, condition, metric, class): over test slices per seed (`over="images"`),
    or over seeds of the per-seed means (`over="seeds"`)."""
    classes = [L.class_id(n) for n in per_image.loc[per_image["metric"] == "dice", "class"].unique()]
    df = _with_means(per_image, classes)
    by = ["model", "condition", "metric", "class"]
    if over == "images":
        return summarize(df, by + ["seed"])
    if over != "seeds":
        raise ValueError(f"over={over!r}: expected 'images' or 'seeds'")
    per_seed = df.groupby(by + ["seed"], sort=False)["value"].mean().reset_index()
    return summarize(per_seed, by)


def _fmt(m, lo, hi, digits=3) -> str:
    if np.isnan(m):
        return "n/a"
    return f"{m:.{digits}f}" if np.isnan(lo) else f"{m:.{digits}f} [{lo:.{digits}f}, {hi:.{digits}f}]"


def _order(models) -> list[str]:
    return [m for m in ["real", *STRATEGIES] if m in set(models)]


def table_quality(scored: scoring.Scored) -> pd.DataFrame:
    """Full masks: PSNR, SSIM, mean Dice and rare-class Dice per strategy, mean [95% CI]; the CI is over seeds
    when there are several, else over test slices."""
    full = scored.rows[scored.rows["condition"] == "full"]
    several = full[full["model"] != "real"].groupby("model")["seed"].nunique().max() > 1
    s = summary(full, "seeds" if several else "images")
    want = [("psnr", "all", "PSNR (dB)", 2), ("ssim", "all", "SSIM", 3), ("dice_mean", "all", "Dice, all classes", 3),
            ("dice_mean", "rare", "Dice, rare classes", 3)]
    want += [("dice", L.BY_ID[c].name, f"Dice {L.BY_ID[c].name}", 3)
             for c in rare_classes([L.class_id(n) for n in s.loc[s["metric"] == "dice", "class"].unique()])]
    table = {}
    for metric, cls, col, dg in want:
        sel = s[(s["metric"] == metric) & (s["class"] == cls)]
        table[col] = {r.model: _fmt(r.mean, r.lo, r.hi, dg) for r in sel.itertuples()}
    out = pd.DataFrame(table).fillna("-")  # the real slices have no PSNR/SSIM against themselves
    out = out.loc[:, (out != "n/a").any()]  # classes absent from every test mask
    out = out.loc[_order(out.index)]
    out.index.name = "model (CI over seeds)" if several else "model (CI over test slices)"
    return out


def figure_dice(scored: scoring.Scored, run_dir, *, seed: int = 0):
    """Mask faithfulness per class and strategy (full masks), mean and 95% CI over test slices of all seeds."""
    rows = scored.rows
    full = rows[(rows["condition"] == "full") & (rows["metric"] == "dice")]
    s = summarize(full, ["model", "class"])
    classes = [c for c in dict.fromkeys(full["class"]) if full.loc[full["class"] == c, "value"].notna().any()]
    models = _order(s["model"])
    fig, ax = plt.subplots(figsize=(1.3 * len(classes) + 2, 3.4))
    w = 0.8 / len(models)
    for j, m in enumerate(models):
        sel = s[s["model"] == m].set_index("class").reindex(classes)
        x = np.arange(len(classes)) + (j - (len(models) - 1) / 2) * w
        err = np.array([sel["mean"] - sel["lo"], sel["hi"] - sel["mean"]])
        ax.bar(x, sel["mean"], w, yerr=np.nan_to_num(err), capsize=2, label=display_name(m),
               color="0.6" if m == "real" else None)
    ax.set_xticks(np.arange(len(classes)), [f"{c}*" if L.BY_NAME[c].pathology else c for c in classes])
    ax.set_ylabel("Dice (judge on image vs mask)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, frameon=False, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    ax.set_title("Mask faithfulness per class, full masks (* rare pathology; classes absent from the test masks "
                 "omitted)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, Path(run_dir) / "ablation_dice.png", seed=seed)
    return fig


def figure_partial(scored: scoring.Scored, run_dir, *, seed: int = 0):
    """Generation from partial masks: PSNR and mean Dice of the classes still given, per strategy (rows) and
    removed class (columns); the 'full' column is the complete mask."""
    df = scored.rows[scored.rows["model"] != "real"]
    df = df[df["seed"] == df.loc[df["condition"] != "full", "seed"].min()] if (df["condition"] != "full").any() else df
    conds = list(dict.fromkeys(df["condition"]))
    models = [m for m in STRATEGIES if m in set(df["model"])]
    dice = df[df["metric"] == "dice"]
    kept = dice[dice["condition"].str.removeprefix("no ") != dice["class"]]  # Dice of the classes still in the mask
    mats = {
        "PSNR (dB)": df[df["metric"] == "psnr"].groupby(["model", "condition"])["value"].mean(),
        "Dice of the classes given": kept.groupby(["model", "condition", "slice"])["value"].mean()
        .groupby(["model", "condition"]).mean(),
    }
    fig, axes = plt.subplots(1, 2, figsize=(2 + 1.1 * len(conds), 0.5 * len(models) + 1.8))
    for ax, (title, ser) in zip(axes, mats.items()):
        mat = ser.unstack("condition").reindex(index=models, columns=conds)
        im = ax.imshow(mat.to_numpy(), cmap="viridis", aspect="auto")
        for (i, j), v in np.ndenumerate(mat.to_numpy()):
            ax.text(j, i, f"{v:.2f}" if not np.isnan(v) else "", ha="center", va="center", fontsize=7, color="w")
        ax.set_xticks(range(len(conds)), conds, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(len(models)), models, fontsize=8)
        ax.set_title(title, fontsize=9)
        fig.colorbar(im, ax=ax, shrink=0.8)
    fig.suptitle("Generation from partial masks (column: class withheld)", fontsize=10)
    fig.tight_layout()
    save_figure(fig, Path(run_dir) / "ablation_partial.png", seed=seed)
    return fig


def figure_samples(scored: scoring.Scored, run_dir, *, n: int = 4, seed: int | None = None):
    """The scored test slices richest in rare classes (with and without their mask) and each strategy's
    generation from the same masks (full masks, sampling seed `seed`, default the first): the images scored."""
    pos = scoring.rare_rich(scored.labels, n)
    real = to_hu(scored.real[pos])
    rows = [("mask", real, scored.labels[pos]), ("real", real, None)]
    models = [m for m in STRATEGIES if any(k[0] == m for k in scored.images)]
    rows += [(m, to_hu(scored.generated(m, seed=seed)[pos]), None) for m in models]
    fig = slice_grid(rows, np.unique(scored.labels).tolist(), cell=1.5)
    save_figure(fig, Path(run_dir) / "ablation_samples.png", config={"test_slices": scored.index[pos].tolist()},
                seed=seed)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# metrics

def metric_rows(per_image: pd.DataFrame) -> pd.DataFrame:
    """Tidy rows for metrics.csv: model (strategy or 'real'), metric, class, seed, value, plus condition and the
    95% CI (lo, hi) and n. Per-seed rows average test slices; rows with seed -1 average seeds (when several);
    the judge on the real slices ('real') is not sampled and also carries seed -1."""
    rows = summary(per_image, "images").rename(columns={"mean": "value"})
    n_seeds = per_image.groupby(["model", "condition"])["seed"].nunique()
    multi = summary(per_image, "seeds").rename(columns={"mean": "value"}).assign(seed=-1)
    keep = multi.apply(lambda r: n_seeds.get((r["model"], r["condition"]), 1) > 1, axis=1)
    return pd.concat([rows, multi[keep]], ignore_index=True)
