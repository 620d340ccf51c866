"""Chapter 3, CBMAT training: the profile's main Diff-Lung model (on a GPU when there is one), its loss curve,
samples for held-out masks rich in rare classes, generated versus real HU per class, and its cost.

Each function is one section of `notebooks/03_cbmat_training.py`:

    result = ch.train_main(runs_root, run_dir, steps=..., batch_size=..., preset=..., lr=..., seed=seed)
    ch.training_table(result, run_dir)
    ch.loss_figure(run_dir)
    ch.sample_grid(runs_root, run_dir, n=..., sampler=..., sampler_steps=..., seeds=(seed, seed + 1))
    gen = ch.generate_test(runs_root, run_dir, n_test=..., sampler=..., sampler_steps=..., seed=seed)
    ch.quality_table(gen); ch.hu_figure(gen, run_dir); ch.hu_table(gen)
    ch.write_metrics(run_dir, ch.metric_rows(result, gen)); ch.write_cost(result, run_dir)

Profile parameters (the notebook passes them from profiles/*.yml):
    smoke     size 32, preset "small", steps 600, batch_size 8, lr 2e-3, warmup 20; grid n 6, seeds [0, 1];
              n_test 16, sampler "dpm", sampler_steps 10. Measured on 2 CPU threads: ~43 s (training 38 s).
    standard  size 128, preset "base", steps ~30000, batch_size 16, lr 1e-4, sampler "dpm", sampler_steps 20
              (suggested; not measured here, no GPU).
    paper     size 256, preset "efficient" (~8 GFLOP per forward: DPM-Solver++ 20 steps = 163 GFLOP per
              image), steps ~100000, batch_size 16; `compile=True` on a GPU.

The model is saved to `<run_dir>/model/` (chapters 4 and 5 reuse it) and reused when finished with the same
configuration and data.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import labels as L
from ..diffusion import TrainConfig, TrainResult, load_model, sample, to_hu, train_diffusion
from ..diffusion.model import count_parameters
from ..evaluation import mean_ci, psnr_ssim
from ..metrics import write_metrics as _write_metrics
from ..plots import legend_handles, plt, save_figure, show_ct, slice_grid
from ..provenance import provenance, resolve_device, write_json_atomic
from .ablation_study import open_dataset, rare_rich, test_indices

MODEL = "difflung-cbmat"


def model_dir(run_dir) -> Path:
    return Path(run_dir) / "model"


def train_main(runs_root, run_dir, *, steps: int, batch_size: int, preset: str = "small", lr: float = 1e-4,
               warmup: int | None = None, seed: int = 0, device: str = "auto", checkpoint_every: int = 1000,
               compile: bool = False, progress: bool = False) -> TrainResult:
    """Train (or reuse) Diff-Lung with CBMAT on the training split: one-hot masks, cosine-annealed 1 - f_i.

    Args:
        runs_root: the profile's runs folder (holds 01_data_preparation/dataset).
        run_dir: this chapter's folder; the model goes to `<run_dir>/model/`.
        steps, batch_size, preset, lr, warmup: `TrainConfig` fields (the profile's).
        seed: training seed.
        device: "auto" (GPU when there is one), "cpu" or "cuda"; bf16 and channels_last on GPU.
        checkpoint_every: steps between resumable checkpoints (an interrupted run resumes).
        compile: torch.compile on GPU.
    """
    cfg = TrainConfig(preset=preset, mask_mode="onehot", strategy="cbmat", steps=steps, batch_size=batch_size,
                      lr=lr, warmup=warmup, seed=seed, checkpoint_every=checkpoint_every, compile=compile)
    return train_diffusion(open_dataset(runs_root), cfg, model_dir(run_dir), device=device, progress=progress,
                           overwrite=True)  # a model of another configuration in this folder is replaced


def training_table(result: TrainResult, run_dir) -> pd.DataFrame:
    """Device, steps, wall time, throughput, peak memory, parameters and final loss of the main run."""
    unet, meta = load_model(result.model_dir)
    loss = pd.read_csv(result.loss_csv)["loss"]
    tc = meta["train_config"]
    rows = {
        "device": result.device,
        "preset (parameters)": f"{tc['preset']} ({count_parameters(unet) / 1e6:.2f} M)",
        "image size": f"{meta['sample_size']} x {meta['sample_size']}",
        "steps x batch": f"{result.steps} x {tc['batch_size']}",
        "wall time (s)": f"{result.wall_s:.1f}" + (" (reused from an earlier run)" if result.reused else ""),
        "training images / s": f"{result.images_per_s:.1f}",
        "peak memory (MiB)": f"{result.peak_mem_bytes / 2**20:.0f}" + (" (GPU, allocated)" if "cuda" in result.device
                                                                       else " (process peak RSS)"),
        "final loss (mean of last 10% of steps)": f"{loss.tail(max(len(loss) // 10, 1)).mean():.4f}",
    }
    return pd.DataFrame({"value": rows})


def loss_figure(run_dir, *, smooth: int = 20, seed: int = 0):
    """Training loss (raw and running mean) with the learning rate."""
    df = pd.read_csv(model_dir(run_dir) / "loss.csv")
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


def sample_grid(runs_root, run_dir, *, n: int = 6, sampler: str = "ddim", sampler_steps: int = 50, seeds=(0, 1),
                device: str = "auto"):
    """For the `n` held-out (test) masks richest in rare classes: the mask over the real slice, the real slice,
    and one generation per seed."""
    ds = open_dataset(runs_root)
    dev = resolve_device(device)
    unet, meta = load_model(model_dir(run_dir), ds, device=dev)
    te = ds.split("test")
    idx = rare_rich(te.labels, n)
    rows = [("mask", to_hu(te.images[idx]), te.labels[idx]), ("real", to_hu(te.images[idx]), None)]
    for s in seeds:
        gen = sample(unet, meta, te.labels[idx], generator=torch.Generator().manual_seed(s), sampler=sampler,
                     steps=sampler_steps, device=dev)
        rows.append((f"seed {s}", to_hu(gen), None))
    fig = slice_grid(rows, ds.classes, cell=1.6)
    save_figure(fig, Path(run_dir) / "cbmat_samples.png",
                config={"test_slices": idx.tolist(), "sampler": sampler, "steps": sampler_steps}, seed=int(seeds[0]))
    return fig


@dataclass
class Generated:
    """Generations for test masks with the real slices of the same masks."""

    images: np.ndarray  # (N, S, S) generated, [-1, 1]
    real: np.ndarray  # (N, S, S) real, [-1, 1]
    labels: np.ndarray  # (N, S, S) project ids
    index: np.ndarray  # (N,) test-split indices
    seed: int
    sampler: str
    steps: int
    classes: list


def generate_test(runs_root, run_dir, *, n_test: int = 16, sampler: str = "ddim", sampler_steps: int = 50,
                  seed: int = 0, batch_size: int = 32, device: str = "auto") -> Generated:
    """Generate one image per test mask (`n_test` spread over the split) with the main model."""
    ds = open_dataset(runs_root)
    dev = resolve_device(device)
    unet, meta = load_model(model_dir(run_dir), ds, device=dev)
    te = ds.split("test")
    idx = test_indices(len(te), n_test)
    gen = sample(unet, meta, te.labels[idx], generator=torch.Generator().manual_seed(seed), sampler=sampler,
                 steps=sampler_steps, batch_size=batch_size, device=dev)
    return Generated(gen, te.images[idx], te.labels[idx], idx, seed, sampler, sampler_steps, ds.classes)


def quality_table(gen: Generated) -> pd.DataFrame:
    """PSNR and SSIM of the generations against the real slices of the same masks: mean [95% CI over slices]."""
    q = psnr_ssim(gen.images, gen.real)
    rows = {}
    for col, name, dg in (("psnr", "PSNR (dB)", 2), ("ssim", "SSIM", 3)):
        m, lo, hi = mean_ci(q[col])
        rows[name] = f"{m:.{dg}f} [{lo:.{dg}f}, {hi:.{dg}f}]"
    rows["test slices"] = str(len(q))
    rows["sampler"] = f"{gen.sampler}, {gen.steps} steps, seed {gen.seed}"
    return pd.DataFrame({"value": rows})


def hu_values(gen: Generated, per_class: int = 5000) -> pd.DataFrame:
    """Pixel HU per class in generated and real slices (long: class, source, hu), at most `per_class` per
    class and source, taken evenly (no randomness)."""
    parts = []
    hu_gen, hu_real = to_hu(gen.images), to_hu(gen.real)
    for c in gen.classes:
        if c == L.BACKGROUND:
            continue
        sel = gen.labels == c
        if not sel.any():
            continue
        for source, hu in (("real", hu_real), ("generated", hu_gen)):
            v = hu[sel]
            v = v[np.linspace(0, len(v) - 1, min(per_class, len(v))).astype(int)]
            parts.append(pd.DataFrame({"class": L.BY_ID[c].name, "source": source, "hu": v}))
    return pd.concat(parts, ignore_index=True)


def hu_table(gen: Generated, digits: int | None = 1) -> pd.DataFrame:
    """Mean and SD of HU per class, real versus generated, and the difference of means."""
    df = hu_values(gen, per_class=10**9)
    t = df.groupby(["class", "source"], sort=False)["hu"].agg(["mean", "std"]).unstack("source")
    t.columns = [f"{stat} HU ({src})" for stat, src in t.columns]
    t["mean difference (generated - real)"] = t["mean HU (generated)"] - t["mean HU (real)"]
    t = t.astype(np.float64)
    return t if digits is None else t.round(digits)


def hu_figure(gen: Generated, run_dir):
    """Histograms of HU per class: generated versus real pixels under the same masks (seaborn)."""
    import seaborn as sns

    df = hu_values(gen)
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
                config={"sampler": gen.sampler, "steps": gen.steps, "test_slices": gen.index.tolist()}, seed=gen.seed)
    return fig


def metric_rows(result: TrainResult, gen: Generated) -> list[dict]:
    """Tidy rows: steps and final loss, PSNR/SSIM (mean with 95% CI over test slices) and the per-class mean HU
    difference. Timings are not metrics (they differ between identical runs): see `write_cost`."""
    seed = int(load_model(result.model_dir)[1]["seed"])
    loss = pd.read_csv(result.loss_csv)["loss"]
    rows = [{"model": MODEL, "metric": m, "class": "all", "seed": seed, "value": float(v)} for m, v in
            (("train_steps", result.steps), ("final_loss", loss.tail(max(len(loss) // 10, 1)).mean()))]
    q = psnr_ssim(gen.images, gen.real)
    for col in ("psnr", "ssim"):
        m, lo, hi = mean_ci(q[col])
        rows.append({"model": MODEL, "metric": col, "class": "all", "seed": gen.seed, "value": m, "lo": lo, "hi": hi,
                     "n": len(q)})
    for name, r in hu_table(gen, digits=None).iterrows():
        rows.append({"model": MODEL, "metric": "hu_mean_difference", "class": name, "seed": gen.seed,
                     "value": float(r["mean difference (generated - real)"])})
    return rows


def write_cost(result: TrainResult, run_dir) -> Path:
    """Wall time, throughput, peak memory and device of the main run, with provenance, to `<run_dir>/cost.json`."""
    meta = load_model(result.model_dir)[1]
    return write_json_atomic(Path(run_dir) / "cost.json", {
        "device": result.device, "wall_s": result.wall_s, "images_per_s": result.images_per_s,
        "peak_mem_bytes": result.peak_mem_bytes, "steps": result.steps, "reused": result.reused,
        "provenance": provenance(config=meta["train_config"], seed=meta["seed"])})


def write_metrics(run_dir, rows) -> Path:
    """Write the chapter's tidy `metrics.csv` in `run_dir`."""
    return _write_metrics(run_dir, rows)
