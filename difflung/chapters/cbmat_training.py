"""Chapter 3, CBMAT training: the profile's main Diff-Lung model (on a GPU when there is one), its loss curve,
samples for held-out masks rich in rare classes, generated versus real HU per class, and its cost.

Each function is one section of `notebooks/03_cbmat_training.py`:

    result = ch.train_main(runs_root, steps=..., batch_size=..., preset=..., lr=..., seed=seed)
    ch.write_cost(result, run_dir); ch.table_training(result); ch.figure_loss(result, run_dir)
    scored = ch.evaluate(runs_root, run_dir, result, n_test=..., sampler=..., sampler_steps=..., seeds=...)
    ch.table_quality(scored); ch.figure_samples(scored, run_dir, n=...); ch.figure_hu(scored, run_dir)
    ch.table_hu(scored)

The profile's values come from profiles/*.yml. The model is saved to `<runs_root>/03_cbmat_training/model/`
(`difflung.runs.main_model_dir`; chapters 4 and 5 reuse it) and reused when finished with the same configuration
and data. Generation follows `difflung.scoring` (test subset, seeding, schema), so chapter 4 reports the same
PSNR for this model on the same test slices and seeds.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import labels as L
from .. import runs, scoring
from ..dataset import Dataset
from ..diffusion import TrainResult, to_hu, train_diffusion
from ..evaluation import mean_ci
from ..generators import diffusion_config, load_generator
from ..metrics import write_metrics
from ..plots import plt, save_figure, slice_grid
from ..provenance import provenance, resolve_device, write_json_atomic

MODEL = "difflung"


def train_main(runs_root, *, steps: int, batch_size: int, preset: str = "small", lr: float = 1e-4,
               warmup: int | None = None, seed: int = 0, device: str = "auto", checkpoint_every: int = 1000,
               compile: bool = False, progress: bool = False) -> TrainResult:
    """Train (or reuse) Diff-Lung with CBMAT on the training split: one-hot masks, cosine-annealed 1 - f_i.

    Args:
        runs_root: the profile's runs folder (holds chapter 1's dataset); the model goes to
            `runs.main_model_dir(runs_root)`.
        steps, batch_size, preset, lr, warmup: `TrainConfig` fields (the profile's).
        seed: training seed.
        device: "auto" (GPU when there is one), "cpu" or "cuda"; bf16 and channels_last on GPU.
        checkpoint_every: steps between resumable checkpoints (an interrupted run resumes).
        compile: torch.compile on GPU.
    """
    cfg = diffusion_config(MODEL, preset=preset, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
                           seed=seed, checkpoint_every=checkpoint_every, compile=compile)
    # a model of another configuration in this folder is replaced
    return train_diffusion(Dataset(runs.phantom_dataset_dir(runs_root)), cfg, runs.main_model_dir(runs_root),
                           device=device, progress=progress, overwrite=True)


def table_training(result: TrainResult) -> pd.DataFrame:
    """Device, steps, wall time, throughput, peak memory, parameters and final loss of the main run."""
    g = load_generator(result.model_dir)
    meta = g.config
    loss = pd.read_csv(result.loss_csv)["loss"]
    tc = meta["train_config"]
    rows = {
        "device": result.device,
        "preset (parameters)": f"{tc['preset']} ({g.params / 1e6:.2f} M)",
        "image size": f"{meta['sample_size']} x {meta['sample_size']}",
        "steps x batch": f"{result.steps} x {tc['batch_size']}",
        "wall time (s)": f"{result.wall_s:.1f}" + (" (reused from an earlier run)" if result.reused else ""),
        "training images / s": f"{result.images_per_s:.1f}",
        "peak memory (MiB)": f"{result.peak_mem_bytes / 2**20:.0f}" + (" (GPU, allocated)" if "cuda" in result.device
                                                                       else " (process peak RSS)"),
        "final loss (mean of last 10% of steps)": f"{loss.tail(max(len(loss) // 10, 1)).mean():.4f}",
    }
    return pd.DataFrame({"value": rows})


def figure_loss(result: TrainResult, run_dir, *, smooth: int = 20, seed: int = 0):
    """Training loss (raw and running mean) with the learning rate."""
    df = pd.read_csv(result.loss_csv)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(df["step"], df["loss"], color="0.75", lw=0.7, label="per step")
    ax.plot(df["step"], df["loss"].rolling(smooth, min_periods=1).mean(), color="C0", label=f"running mean ({smooth})")
    ax.set_yscale("log")
    ax.set_xlabel("training step")
    ax.set_ylabel("MSE(eps)")
    ax2 = ax.twinx()
    ax2.plot(df["step"], df["lr"], color="C1", lw=1, ls="--")
    ax2.set_ylabel("learning rate", color="C1")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    save_figure(fig, Path(run_dir) / "cbmat_loss.png", seed=seed)
    return fig


def evaluate(runs_root, run_dir, result: TrainResult, *, n_test: int, sampler: str, sampler_steps: int,
             seeds=(0,), batch_size: int = 32, device: str = "auto", progress: bool = False) -> scoring.Scored:
    """Generate the test subset's masks with the main model for every sampling seed and score PSNR and SSIM
    (`difflung.scoring.generate_and_score`); write `<run_dir>/per_image.csv` and the chapter's `metrics.csv`
    (steps, final loss, PSNR/SSIM per seed with 95% CI over test slices, mean HU difference per class)."""
    ds, dev = Dataset(runs.phantom_dataset_dir(runs_root)), resolve_device(device)
    g = load_generator(result.model_dir, key=MODEL, dataset=ds, device=dev, sampler=sampler,
                       sampler_steps=sampler_steps)
    scored = scoring.generate_and_score([g], ds, None, n_test=n_test, seeds=list(seeds), batch_size=batch_size,
                                        progress=progress)
    scoring.write_per_image(runs.per_image_path(run_dir), scored.rows)
    loss = pd.read_csv(result.loss_csv)["loss"]
    rows = [{"model": MODEL, "metric": m, "class": "all", "seed": g.train_seed, "value": float(v)} for m, v in
            (("train_steps", result.steps), ("final_loss", loss.tail(max(len(loss) // 10, 1)).mean()))]
    q = scored.rows[scored.rows["metric"].isin(["psnr", "ssim"])]
    for (metric, seed), x in q.groupby(["metric", "seed"]):
        m, lo, hi = mean_ci(x["value"])
        rows.append({"model": MODEL, "metric": metric, "class": "all", "seed": seed, "value": m, "lo": lo, "hi": hi,
                     "n": len(x)})
    for name, r in table_hu(scored, digits=None).iterrows():
        rows.append({"model": MODEL, "metric": "hu_mean_difference", "class": name, "seed": int(seeds[0]),
                     "value": float(r["mean difference (generated - real)"])})
    write_metrics(runs.metrics_path(run_dir), rows)
    return scored


def table_quality(scored: scoring.Scored) -> pd.DataFrame:
    """PSNR and SSIM of the generations against the real slices of the same masks: mean [95% CI over test
    slices, each slice averaged over the sampling seeds]."""
    q = scored.rows[scored.rows["model"] == MODEL]
    rows = {}
    for col, name, dg in (("psnr", "PSNR (dB)", 2), ("ssim", "SSIM", 3)):
        m, lo, hi = mean_ci(q[q["metric"] == col].groupby("slice")["value"].mean())
        rows[name] = f"{m:.{dg}f} [{lo:.{dg}f}, {hi:.{dg}f}]"
    rows["test slices"] = str(len(scored.index))
    rows["sampling seeds"] = ", ".join(str(s) for s in sorted(set(q["seed"])))
    return pd.DataFrame({"value": rows})


def figure_samples(scored: scoring.Scored, run_dir, *, n: int = 6):
    """For the `n` scored test masks richest in rare classes: the mask over the real slice, the real slice,
    and the scored generation of every sampling seed."""
    pos = scoring.rare_rich(scored.labels, n)
    real = to_hu(scored.real[pos])
    seeds = sorted({k[3] for k in scored.images if k[0] == MODEL})
    rows = [("mask", real, scored.labels[pos]), ("real", real, None)]
    rows += [(f"seed {s}", to_hu(scored.generated(MODEL, seed=s)[pos]), None) for s in seeds]
    fig = slice_grid(rows, np.unique(scored.labels).tolist(), cell=1.6)
    save_figure(fig, Path(run_dir) / "cbmat_samples.png", config={"test_slices": scored.index[pos].tolist()},
                seed=seeds[0])
    return fig


def hu_values(scored: scoring.Scored, per_class: int = 5000) -> pd.DataFrame:
    """Pixel HU per class in generated and real slices (long: class, source, hu), at most `per_class` per
    class and source, taken evenly (no randomness); the first sampling seed's generations."""
    parts = []
    hu_gen, hu_real = to_hu(scored.generated(MODEL)), to_hu(scored.real)
    for c in np.unique(scored.labels):
        if c == L.BACKGROUND:
            continue
        sel = scored.labels == c
        if not sel.any():
            continue
        for source, hu in (("real", hu_real), ("generated", hu_gen)):
            v = hu[sel]
            v = v[np.linspace(0, len(v) - 1, min(per_class, len(v))).astype(int)]
            parts.append(pd.DataFrame({"class": L.BY_ID[c].name, "source": source, "hu": v}))
    return pd.concat(parts, ignore_index=True)


def table_hu(scored: scoring.Scored, digits: int | None = 1) -> pd.DataFrame:
    """Mean and SD of HU per class, real versus generated, and the difference of means."""
    df = hu_values(scored, per_class=10**9)
    t = df.groupby(["class", "source"], sort=False)["hu"].agg(["mean", "std"]).unstack("source")
    t.columns = [f"{stat} HU ({src})" for stat, src in t.columns]
    t["mean difference (generated - real)"] = t["mean HU (generated)"] - t["mean HU (real)"]
    t = t.astype(np.float64)
    return t if digits is None else t.round(digits)


def figure_hu(scored: scoring.Scored, run_dir):
    """Histograms of HU per class: generated versus real pixels under the same masks (seaborn)."""
    import seaborn as sns

    df = hu_values(scored)
    names = list(dict.fromkeys(df["class"]))
    fig, axes = plt.subplots(1, len(names), figsize=(2.5 * len(names), 2.8))
    for ax, name in zip(np.atleast_1d(axes), names):
        sns.histplot(df[df["class"] == name], x="hu", hue="source", bins=40, binrange=(-1050, 450), stat="density",
                     element="step", common_norm=False, ax=ax, legend=ax is np.atleast_1d(axes)[-1],
                     palette={"real": "0.3", "generated": L.BY_NAME[name].color})
        if L.BY_NAME[name].hu_range:
            ax.axvspan(*L.BY_NAME[name].hu_range, color="grey", alpha=0.15, lw=0)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("HU")
        ax.set_yticks([])
        ax.set_ylabel("")
    fig.suptitle("HU per class: generated vs real under the same test masks (grey band: literature range)", y=1.03,
                 fontsize=10)
    fig.tight_layout()
    save_figure(fig, Path(run_dir) / "cbmat_hu_histograms.png",
                config={"test_slices": scored.index.tolist()})
    return fig




def write_cost(result: TrainResult, run_dir) -> Path:
    """Wall time, throughput, peak memory and device of the main run, with provenance, to `<run_dir>/cost.json`."""
    meta = load_generator(result.model_dir).config
    return write_json_atomic(Path(run_dir) / "cost.json", {
        "device": result.device, "wall_s": result.wall_s, "images_per_s": result.images_per_s,
        "peak_mem_bytes": result.peak_mem_bytes, "steps": result.steps, "reused": result.reused,
        "provenance": provenance(config=meta["train_config"], seed=meta["seed"])})
