"""Chapter 2, mask ablation study: one model per ablation strategy, same data and budget, compared on image
quality, mask faithfulness (rare classes separately) and generation from partial masks.

Each function is one section of `notebooks/02_ablation_study.py`:

    ch.schedule_figure(runs_root, run_dir, steps=steps)                  # P_i(t) per class and strategy
    ch.probability_table(runs_root, steps=steps)
    ch.train_strategies(runs_root, run_dir, steps=..., batch_size=..., preset=..., lr=..., seed=seed)
    ch.loss_figure(run_dir)
    ch.reference_segmenter(runs_root, run_dir, steps=seg_steps, seed=seed)   # trained on real training slices
    per_image = ch.evaluate_strategies(runs_root, run_dir, n_test=..., sampler=..., sampler_steps=..., seeds=...)
    ch.quality_table(per_image); ch.dice_figure(per_image, run_dir); ch.partial_figure(per_image, run_dir)
    ch.sample_figure(runs_root, run_dir, ...)
    ch.write_metrics(run_dir, ch.metric_rows(per_image))

Profile parameters (the notebook passes them from profiles/*.yml):
    smoke     size 32, preset "small", steps 200, batch_size 8, lr 2e-3, warmup 20; seg_steps 300 (segmenter
              channels (16, 32, 64)); n_test 16, sampler "dpm", sampler_steps 10, seeds [0, 1]. Measured on
              2 CPU threads, phantom of 10 patients: ~100 s for all five strategies including evaluation
              (250 steps: 118 s; per step ~0.065 s).
    standard  size 128, preset "base", steps ~10000, batch_size 16, lr 1e-4; seg_steps 2000; n_test 64,
              sampler "dpm", sampler_steps 20, seeds [0, 1, 2] (suggested; not measured here, no GPU).
    paper     size 256, preset "efficient" (or "paper" for the parent's UNet), as standard with more steps.

Models go to `<run_dir>/models/<strategy>/` (reused when finished with the same config and data), the
segmenter to `<run_dir>/segmenter/`, per-image results to `<run_dir>/per_image.csv`, figures beside them.
Confidence intervals are Student-t over test slices (per seed), and over seeds (of the per-seed means) when
there are several; in `metrics.csv` the across-seed rows carry seed -1.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import labels as L
from ..dataset import Dataset
from ..diffusion import STRATEGIES, AblationSchedule, TrainConfig, ablation_frequencies, load_model, sample, train_diffusion
from ..diffusion.sample import remove_classes
from ..evaluation import dice_per_class, psnr_ssim, summarize
from ..metrics import write_metrics as _write_metrics
from ..plots import legend_handles, plt, save_figure, show_ct, slice_grid
from ..provenance import atomic_path, resolve_device
from . import phantom_dataset_dir

STRATEGY_LABELS = {"none": "none", "uniform": "uniform p=0.5 (Seg-Guided)", "cbmat": "CBMAT (Diff-Lung)",
                   "cbmat-constant": "CBMAT, not annealed", "cbmat-inverse": "inverse CBMAT (P=f)"}


def open_dataset(runs_root) -> Dataset:
    """The phantom dataset of chapter 1 (`<runs_root>/01_data_preparation/dataset`); a clear error if missing."""
    return Dataset(phantom_dataset_dir(runs_root))



def rare_classes(classes) -> list[int]:
    """The pathology classes among `classes` (emphysema, GGO, fibrosis in the phantom)."""
    return [c for c in classes if c in L.PATHOLOGY_IDS]


# ---------------------------------------------------------------------------------------------------------------
# schedules

def probability_table(runs_root, *, steps: int, strategies=STRATEGIES) -> pd.DataFrame:
    """P_i at t = 0, T/2 and T per class (rows) and strategy (columns), with the f_i used."""
    ds = open_dataset(runs_root)
    freqs = ablation_frequencies(ds)
    cols = {("f_i", ""): list(freqs.values())}
    for s in strategies:
        sch = AblationSchedule(s, ds.classes, freqs, steps)
        for label, t in (("t=0", 0), ("t=T/2", steps // 2), ("t=T", steps)):
            cols[(s, label)] = sch.probabilities(t).tolist()
    out = pd.DataFrame(cols, index=pd.Index(list(freqs), name="class"))
    return out


def schedule_figure(runs_root, run_dir, *, steps: int, strategies=STRATEGIES, seed: int = 0):
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
        ax.set_title(STRATEGY_LABELS.get(s, s), fontsize=9)
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

def strategy_config(strategy: str, *, steps: int, batch_size: int, preset: str, lr: float, warmup: int | None,
                    mask_mode: str, seed: int) -> TrainConfig:
    return TrainConfig(preset=preset, mask_mode=mask_mode, strategy=strategy, steps=steps, batch_size=batch_size,
                       lr=lr, warmup=warmup, seed=seed, checkpoint_every=max(steps // 2, 1))


def train_strategies(runs_root, run_dir, *, steps: int, batch_size: int, preset: str = "small", lr: float = 1e-4,
                     warmup: int | None = None, mask_mode: str = "onehot", seed: int = 0, strategies=STRATEGIES,
                     device: str = "auto", progress: bool = False) -> pd.DataFrame:
    """Train (or reuse) one model per strategy with the same data, budget and seed.

    Args:
        runs_root: folder of the profile's runs (holds 01_data_preparation/dataset).
        run_dir: this chapter's folder; models go to `<run_dir>/models/<strategy>/`.
        steps, batch_size, preset, lr, warmup, mask_mode: `TrainConfig` fields shared by every strategy.
        seed: training seed (weights, data order, ablation and noise draws), the same for every strategy.
        strategies: which strategies to train.
        device: "auto", "cpu" or "cuda".

    Returns:
        One row per strategy: steps, batch, wall time, images/s, final loss, device, reused.
    """
    ds = open_dataset(runs_root)
    rows = []
    for s in strategies:
        cfg = strategy_config(s, steps=steps, batch_size=batch_size, preset=preset, lr=lr, warmup=warmup,
                              mask_mode=mask_mode, seed=seed)
        # a model of an earlier, different configuration in this chapter's folder is replaced
        r = train_diffusion(ds, cfg, Path(run_dir) / "models" / s, device=device, progress=progress, overwrite=True)
        loss = pd.read_csv(r.loss_csv)["loss"]
        rows.append({"strategy": s, "steps": r.steps, "batch": batch_size, "wall_s": round(r.wall_s, 1),
                     "images_per_s": round(r.images_per_s, 1), "final_loss (mean of last 10%)":
                     round(float(loss.tail(max(len(loss) // 10, 1)).mean()), 4), "device": r.device,
                     "reused": r.reused})
    return pd.DataFrame(rows).set_index("strategy")


def loss_figure(run_dir, *, strategies=STRATEGIES, seed: int = 0, smooth: int = 20):
    """Training loss per strategy (running mean over `smooth` steps)."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for s in strategies:
        df = pd.read_csv(Path(run_dir) / "models" / s / "loss.csv")
        ax.plot(df["step"], df["loss"].rolling(smooth, min_periods=1).mean(), label=STRATEGY_LABELS.get(s, s))
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel(f"MSE(eps), running mean of {smooth}")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    save_figure(fig, Path(run_dir) / "ablation_losses.png", seed=seed)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# evaluation

def reference_segmenter(runs_root, run_dir, *, steps: int, batch_size: int = 16, channels=(16, 32, 64),
                        seed: int = 0, device: str = "auto", progress: bool = False):
    """The faithfulness judge: a MONAI UNet trained on the real training slices only, saved once in
    `<run_dir>/segmenter/` and reused while data, config and seed are unchanged.

    Returns:
        (Segmenter, per-class Dice of its predictions on the real test slices: the ceiling for generated images).
    """
    from ..segmentation import SegConfig, Segmenter, train_segmenter

    ds = open_dataset(runs_root)
    channels = tuple(channels)
    cfg = SegConfig(channels=channels, strides=(2,) * (len(channels) - 1), steps=steps, batch_size=batch_size)
    key = {"dataset_sha256": ds.manifest["splits"]["train"]["sha256"], "seed": seed,  # as stored in JSON
           "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()}}
    folder, dev = Path(run_dir) / "segmenter", resolve_device(device)
    seg = None
    if (folder / "segmenter.json").is_file():
        seg = Segmenter.load(folder, device=dev)
        if seg.info.get("difflung_key") != key:
            seg = None
    if seg is None:
        tr = ds.split("train")
        seg = train_segmenter(tr.images, tr.labels, ds.classes, cfg, torch.Generator().manual_seed(seed),
                              device=dev, progress=progress)
        seg.info["difflung_key"] = key
        seg.save(folder)
    te = ds.split("test")
    d = dice_per_class(seg.predict(te.images), te.labels, [c for c in ds.classes if c != L.BACKGROUND])
    table = d.groupby("class", sort=False)["dice"].agg(["mean", "count"]).rename(columns={"count": "slices with class"})
    return seg, table


def test_indices(n_slices: int, n_test: int) -> np.ndarray:
    """`n_test` test slices spread evenly over the test split (all of them when n_test >= n_slices)."""
    if n_test >= n_slices:
        return np.arange(n_slices)
    return np.unique(np.linspace(0, n_slices - 1, n_test).round().astype(int))


def _score(model: str, condition: str, seed: int, gen, real, lab, seg, classes) -> list[pd.DataFrame]:
    d = dice_per_class(seg.predict(gen), lab, classes).rename(columns={"dice": "value"}).assign(metric="dice")
    parts = [d[["image", "metric", "class", "value"]]]
    if model != "real":  # the real slices against themselves have no PSNR
        parts.append(psnr_ssim(gen, real).melt(id_vars="image", var_name="metric", value_name="value")
                     .assign(**{"class": "all"}))
    return [p.assign(model=model, condition=condition, seed=seed) for p in parts]


def evaluate_strategies(runs_root, run_dir, *, strategies=STRATEGIES, n_test: int = 16, sampler: str = "ddim",
                        sampler_steps: int = 50, seeds=(0,), partial: bool = True, partial_seeds=None,
                        batch_size: int = 32, device: str = "auto", progress: bool = False) -> pd.DataFrame:
    """Generate from the test masks with every strategy's model and score each image.

    Scores per image: PSNR and SSIM against the real slice of the same mask; Dice per class between the
    reference segmenter's prediction on the generated image and the conditioning (full) mask. With `partial`,
    each non-background class is removed from the masks in turn (its pixels left to the model) and the same
    scores are computed for those generations. The segmenter on the real test slices is included as model "real".

    Args:
        runs_root, run_dir: as in `train_strategies` (models and segmenter must exist: run those sections first).
        strategies: models to evaluate.
        n_test: test slices used (spread evenly over the split).
        sampler, sampler_steps: as in `difflung.diffusion.sample`.
        seeds: generation seeds (one torch.Generator each); the same initial noise serves every strategy and
            every condition of a slice.
        partial: also generate from partial masks; partial_seeds: seeds for those (default: the first seed).
        batch_size: masks per UNet batch.
        device: "auto", "cpu" or "cuda".

    Returns:
        Per-image long table (model, condition, seed, image, metric, class, value), also written to
        `<run_dir>/per_image.csv`.
    """
    from ..segmentation import Segmenter

    ds = open_dataset(runs_root)
    dev = resolve_device(device)
    seg_dir = Path(run_dir) / "segmenter"
    if not (seg_dir / "segmenter.json").is_file():
        raise FileNotFoundError(f"{seg_dir}: no segmenter; run reference_segmenter(...) first")
    seg = Segmenter.load(seg_dir, device=dev)
    te = ds.split("test")
    idx = test_indices(len(te), n_test)
    real, lab = te.images[idx], te.labels[idx]
    scored = [c for c in ds.classes if c != L.BACKGROUND]
    partial_seeds = tuple(seeds[:1] if partial_seeds is None else partial_seeds)
    conditions = [("full", None)] + ([(f"no {L.BY_ID[c].name}", c) for c in scored] if partial else [])
    parts = _score("real", "full", int(seg.info.get("difflung_key", {}).get("seed", 0)), real, real, lab, seg, scored)
    for s in strategies:
        unet, meta = load_model(Path(run_dir) / "models" / s, ds, device=dev)
        for seed in sorted(set(seeds) | set(partial_seeds)):
            for cond, removed in conditions:
                if (cond == "full" and seed not in seeds) or (cond != "full" and seed not in partial_seeds):
                    continue
                masks = lab if removed is None else remove_classes(lab, [removed])
                gen = sample(unet, meta, masks, generator=torch.Generator().manual_seed(seed), sampler=sampler,
                             steps=sampler_steps, batch_size=batch_size, device=dev, progress=progress)
                parts += _score(s, cond, seed, gen, real, lab, seg, scored)
    out = pd.concat(parts, ignore_index=True)
    out["image"] = idx[out["image"].to_numpy()]  # index within the test split
    out = out[["model", "condition", "seed", "image", "metric", "class", "value"]]
    with atomic_path(Path(run_dir) / "per_image.csv") as tmp:
        out.to_csv(tmp, index=False, float_format="%.6g")
    return out


def _with_means(per_image: pd.DataFrame, classes_present) -> pd.DataFrame:
    """Add per-image derived Dice rows: mean over all scored classes ('all') and over rare classes ('rare')."""
    d = per_image[per_image["metric"] == "dice"]
    rare = [L.BY_ID[c].name for c in rare_classes(classes_present)]
    keys = ["model", "condition", "seed", "image"]
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


def quality_table(per_image: pd.DataFrame) -> pd.DataFrame:
    """Full masks: PSNR, SSIM, mean Dice and rare-class Dice per strategy, mean [95% CI]; the CI is over seeds
    when there are several, else over test slices."""
    full = per_image[per_image["condition"] == "full"]
    several = full.groupby("model")["seed"].nunique().max() > 1
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
    order = [m for m in ["real", *STRATEGIES] if m in out.index]
    out = out.loc[order]
    out.index.name = "model (CI over seeds)" if several else "model (CI over test slices)"
    return out


def dice_figure(per_image: pd.DataFrame, run_dir, *, seed: int = 0):
    """Mask faithfulness per class and strategy (full masks), mean and 95% CI over test slices of all seeds."""
    full = per_image[(per_image["condition"] == "full") & (per_image["metric"] == "dice")]
    s = summarize(full, ["model", "class"])
    classes = [c for c in dict.fromkeys(full["class"]) if full.loc[full["class"] == c, "value"].notna().any()]
    models = [m for m in ["real", *STRATEGIES] if m in set(s["model"])]
    fig, ax = plt.subplots(figsize=(1.3 * len(classes) + 2, 3.4))
    w = 0.8 / len(models)
    for j, m in enumerate(models):
        sel = s[s["model"] == m].set_index("class").reindex(classes)
        x = np.arange(len(classes)) + (j - (len(models) - 1) / 2) * w
        err = np.array([sel["mean"] - sel["lo"], sel["hi"] - sel["mean"]])
        ax.bar(x, sel["mean"], w, yerr=np.nan_to_num(err), capsize=2, label=STRATEGY_LABELS.get(m, "real slices"),
               color="0.6" if m == "real" else None)
    ax.set_xticks(np.arange(len(classes)), [f"{c}*" if L.BY_NAME[c].pathology else c for c in classes])
    ax.set_ylabel("Dice (segmenter on image vs mask)")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, frameon=False, ncol=3, loc="upper center", bbox_to_anchor=(0.5, -0.18))
    ax.set_title("Mask faithfulness per class, full masks (* rare pathology; classes absent from the test masks "
                 "omitted)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, Path(run_dir) / "ablation_dice.png", seed=seed)
    return fig


def partial_figure(per_image: pd.DataFrame, run_dir, *, seed: int = 0):
    """Generation from partial masks: PSNR and mean Dice of the classes still given, per strategy (rows) and
    removed class (columns); the 'full' column is the complete mask."""
    df = per_image[per_image["model"] != "real"]
    conds = list(dict.fromkeys(df["condition"]))
    models = [m for m in STRATEGIES if m in set(df["model"])]
    dice = df[df["metric"] == "dice"]
    kept = dice[dice["condition"].str.removeprefix("no ") != dice["class"]]  # Dice of the classes still in the mask
    mats = {
        "PSNR (dB)": df[df["metric"] == "psnr"].groupby(["model", "condition"])["value"].mean(),
        "Dice of the classes given": kept.groupby(["model", "condition", "image", "seed"])["value"].mean()
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


def rare_rich(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of the `n` label maps with the most rare-class pixels (ties: lower index first)."""
    count = np.isin(labels, L.PATHOLOGY_IDS).reshape(len(labels), -1).sum(1)
    return np.argsort(-count, kind="stable")[:n]


def sample_figure(runs_root, run_dir, *, strategies=STRATEGIES, n: int = 4, sampler: str = "ddim",
                  sampler_steps: int = 50, seed: int = 0, device: str = "auto"):
    """Real test slices (with and without their mask) and each strategy's generation from the same masks,
    for the `n` test masks richest in rare classes."""
    from ..diffusion import to_hu

    ds = open_dataset(runs_root)
    dev = resolve_device(device)
    te = ds.split("test")
    idx = rare_rich(te.labels, n)
    rows = [("mask", to_hu(te.images[idx]), te.labels[idx]), ("real", to_hu(te.images[idx]), None)]
    for s in strategies:
        unet, meta = load_model(Path(run_dir) / "models" / s, ds, device=dev)
        gen = sample(unet, meta, te.labels[idx], generator=torch.Generator().manual_seed(seed), sampler=sampler,
                     steps=sampler_steps, device=dev)
        rows.append((s, to_hu(gen), None))
    fig = slice_grid(rows, ds.classes, cell=1.5)
    save_figure(fig, Path(run_dir) / "ablation_samples.png",
                config={"test_slices": idx.tolist(), "sampler": sampler, "steps": sampler_steps}, seed=seed)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# metrics

def metric_rows(per_image: pd.DataFrame) -> pd.DataFrame:
    """Tidy rows for metrics.csv: model (strategy or 'real'), metric, class, seed, value, plus condition and the
    95% CI (lo, hi) and n. Per-seed rows average test slices; rows with seed -1 average seeds (when several)."""
    rows = summary(per_image, "images").rename(columns={"mean": "value"})
    n_seeds = per_image.groupby(["model", "condition"])["seed"].nunique()
    multi = summary(per_image, "seeds").rename(columns={"mean": "value"}).assign(seed=-1)
    keep = multi.apply(lambda r: n_seeds.get((r["model"], r["condition"]), 1) > 1, axis=1)
    return pd.concat([rows, multi[keep]], ignore_index=True)


def write_metrics(run_dir, rows) -> Path:
    """Write the chapter's tidy `metrics.csv` (model = strategy) in `run_dir`."""
    return _write_metrics(run_dir, rows)
