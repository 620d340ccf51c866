"""Chapter 4, baseline comparison: Pix2Pix, SPADE, Seg-Guided Diffusion and Diff-Lung (CBMAT) on the same data.

Each function is one section of `notebooks/04_baseline_comparison.py`:

    cmp = ch.open_comparison(runs_root, run_dir, seed=seed, n_seeds=n_seeds, min_seeds=min_seeds, gan_size=gan_size)
    ch.diffusion_models(cmp, preset=preset, train_steps=train_steps, batch_size=batch_size)   # reuse or train
    ch.gan_baselines(cmp)                    # Pix2Pix and SPADE with the diffusion models' steps x batch
    ch.figure_gan_losses(cmp)
    scored = ch.evaluate(cmp, judge_steps=..., n_test=..., sampler=..., sampler_steps=..., seeds=..., ...)
    ch.table_judge(scored); ch.table_comparison(run_dir); ch.table_faithfulness(run_dir)
    ch.figure_samples(cmp, scored); ch.figure_quality_cost(run_dir)

The profile's values come from profiles/*.yml. Diff-Lung (CBMAT) of the main seed is chapter 3's model
(`difflung.runs.main_model_dir`) when it was trained on this dataset with CBMAT, one-hot masks and this seed;
other seeds are trained here with its configuration. Seg-Guided (uniform ablation p = 0.5, the single k/255 mask
channel of the original) gets the same network and budget; its main-seed model is saved to
`<run_dir>/models/segguided` for chapter 5. Every model folder is reused when it already holds a finished model of
the same configuration.

Generation and scoring follow `difflung.scoring` (judge, test subset, common random numbers, schema), so the
PSNR of Diff-Lung here equals chapter 3's for the same slices and seeds. `metrics.csv` holds the long-form rows
(model keys; cost rows carry slice -1), `metrics.json` the settings, timings and provenance. Image quality is
measured in the model window HU [-1000, 400] mapped to [-1, 1] (data range 2.0), PSNR and SSIM by scikit-image.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import labels as L
from .. import runs, scoring
from ..baselines import read_loss_log, train_gan
from ..dataset import Dataset, unwindow
from ..diffusion import train_diffusion
from ..evaluation import DATA_RANGE, mean_ci, time_per_image
from ..generators import diffusion_config, display_name, gan_config, load_generator
from ..metrics import read_metrics, write_metrics
from ..plots import legend_handles, plt, save_figure, show_ct
from ..provenance import device_description, provenance, resolve_device, write_json_atomic
from ..reported import IMAGE_QUALITY, LABEL as REPORTED_LABEL

MODELS = ("pix2pix", "spade", "segguided", "difflung")


@dataclass
class Comparison:
    """State shared by the chapter's sections: inputs, seeds, device and the model folders found or trained."""

    dataset: Dataset
    runs_root: Path
    run_dir: Path
    seeds: list[int]
    gan_size: str
    device: str
    models: dict = field(default_factory=dict)  # key -> {seed: folder}
    budget: dict = field(default_factory=dict)  # steps, batch_size shared by all models
    notes: dict = field(default_factory=dict)  # key -> how the model was obtained

    @property
    def seed(self) -> int:
        return self.seeds[0]

    def model_dir(self, key: str, seed: int) -> Path:
        """`<run_dir>/models/<key>` for the main seed, `<key>-seed<k>` for the others."""
        return runs.model_dir(self.run_dir, key, None if seed == self.seed else seed)


def open_comparison(runs_root, run_dir, *, seed: int, n_seeds: int = 1, min_seeds: int = 1, gan_size: str = "S",
                    device: str = "auto") -> Comparison:
    """Open the phantom dataset of chapter 1 and fix the seeds, GAN size and device of the chapter.

    Args:
        runs_root: the run's root (`runs/<profile>`).
        run_dir: this chapter's folder.
        seed, n_seeds: training seeds seed, seed + 1, ..., seed + n_seeds - 1.
        min_seeds: the fewest training seeds the profile accepts (its CIs over seeds need them).
        gan_size: registry size of Pix2Pix and SPADE (`difflung.baselines.registry.BASELINES`: T, S, B, L).
        device: "auto", "cpu" or "cuda".
    """
    if n_seeds < min_seeds:
        raise ValueError(f"n_seeds={n_seeds}: this profile reports CIs over training seeds and needs at least "
                         f"{min_seeds}")
    runs_root, run_dir = Path(runs_root), Path(run_dir)
    ds = Dataset(runs.phantom_dataset_dir(runs_root))
    gan_config("pix2pix", gan_size)  # a clear error for an unknown size, before any training
    run_dir.mkdir(parents=True, exist_ok=True)
    return Comparison(ds, runs_root, run_dir, list(range(seed, seed + n_seeds)), gan_size, resolve_device(device))


# ---------------------------------------------------------------------------------------------------------------
# models

def _main_model(cmp: Comparison):
    """Chapter 3's Diff-Lung folder and TrainConfig when it fits this dataset and seed, else (None, None)."""
    from ..diffusion import TrainConfig

    ch3 = runs.main_model_dir(cmp.runs_root)
    if not (ch3 / "difflung_config.json").is_file():
        return None, None
    meta = json.loads((ch3 / "difflung_config.json").read_text())
    tc = meta.get("train_config", {})
    fits = (tc.get("strategy") == "cbmat" and tc.get("mask_mode") == "onehot" and tc.get("seed") == cmp.seed
            and meta.get("dataset", {}).get("sha256") == cmp.dataset.manifest["splits"]["train"]["sha256"])
    return (ch3, TrainConfig(**tc)) if fits else (None, None)


def diffusion_models(cmp: Comparison, *, preset: str = "small", train_steps: int = 300, batch_size: int = 8,
                     progress: bool = True) -> pd.DataFrame:
    """Find or train Diff-Lung (CBMAT) and Seg-Guided for every seed; fix the training budget of the chapter.

    Diff-Lung's configuration is chapter 3's when its model fits this dataset (then `preset`, `train_steps` and
    `batch_size` are unused); Seg-Guided uses the same configuration with its registry settings. Returns one row
    per model and seed: where it comes from, steps, batch, images seen.
    """
    ds = cmp.dataset
    reused, base = _main_model(cmp)
    base = asdict(base) if base else dict(preset=preset, steps=train_steps, batch_size=batch_size, seed=cmp.seed)
    for k in ("mask_mode", "strategy"):
        base.pop(k, None)
    cmp.notes["difflung"] = ("chapter 3's model for the main seed" if reused else
                             "trained here (no chapter 3 model for this dataset and seed)")
    cmp.notes["segguided"] = "trained here: Diff-Lung's network and budget, single k/255 mask channel, uniform p=0.5"
    cmp.budget = {"steps": base["steps"], "batch_size": base["batch_size"]}
    rows = []
    for key in ("difflung", "segguided"):
        cmp.models[key] = {}
        for s in cmp.seeds:
            cfg = diffusion_config(key, **{**base, "seed": s})
            folder = reused if (key == "difflung" and s == cmp.seed and reused) else cmp.model_dir(key, s)
            r = train_diffusion(ds, cfg, folder, device=cmp.device, progress=progress)  # reused when finished
            g = load_generator(folder, key=key, dataset=ds)
            cmp.models[key][s] = folder
            rows.append({"model": display_name(key), "seed": s, "source": "reused" if folder == reused else
                         "this chapter", "mask": cfg.mask_mode, "ablation": cfg.strategy, "preset": cfg.preset,
                         "steps": cfg.steps, "batch": cfg.batch_size, "images seen": cfg.steps * cfg.batch_size,
                         "params (M)": round(g.params / 1e6, 3), "train s": round(r.wall_s, 1), "folder": str(folder)})
    return pd.DataFrame(rows)


def gan_baselines(cmp: Comparison, *, steps: int | None = None, batch_size: int | None = None,
                  progress: bool = True) -> pd.DataFrame:
    """Train (or reuse) Pix2Pix and SPADE for every seed with the diffusion models' budget (steps x batch).

    One GAN step updates the discriminator and the generator once each, as in the originals.
    """
    steps = steps or cmp.budget.get("steps")
    batch_size = batch_size or cmp.budget.get("batch_size")
    if not steps or not batch_size:
        raise ValueError("no training budget: run diffusion_models(cmp) first or pass steps and batch_size")
    rows = []
    for key in ("pix2pix", "spade"):
        cmp.models[key] = {}
        for s in cmp.seeds:
            cfg = gan_config(key, cmp.gan_size, steps=steps, batch_size=batch_size, seed=s, device=cmp.device,
                             checkpoint_every=max(1, steps // 2), log_every=max(1, steps // 50))
            meta = json.loads((train_gan(cmp.dataset, cfg, cmp.model_dir(key, s), progress=progress)
                               / "config.json").read_text())
            cmp.models[key][s] = cmp.model_dir(key, s)
            rows.append({"model": display_name(key), "seed": s, "source": "this chapter", "registry": cfg.model,
                         "steps": steps, "batch": batch_size, "images seen": meta["images_seen"],
                         "params (M)": round(meta["params_generator"] / 1e6, 3),
                         "train s": meta["train_seconds_last_session"], "folder": str(cmp.model_dir(key, s))})
        cmp.notes[key] = f"trained here ({cfg.model}), same steps x batch as the diffusion models"
    return pd.DataFrame(rows)


def figure_gan_losses(cmp: Comparison):
    """Training losses of Pix2Pix and SPADE (main seed): discriminator on real/fake, generator terms."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, key in zip(axes, ("pix2pix", "spade")):
        log = read_loss_log(cmp.models[key][cmp.seed])
        for col in [c for c in log.columns if c.startswith(("d_", "g_"))]:
            ax.plot(log["step"], log[col], label=col, lw=1)
        ax.set(title=f"{display_name(key)} (seed {cmp.seed})", xlabel="step", ylabel="loss")
        ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    save_figure(fig, cmp.run_dir / "gan_losses.png", seed=cmp.seed,
                config={"models": {k: str(cmp.models[k][cmp.seed]) for k in ("pix2pix", "spade")}})
    return fig


# ---------------------------------------------------------------------------------------------------------------
# evaluation

def _cost_rows(g, labels, device, timing_batch: int, timing_repeats: int) -> tuple[list[dict], dict]:
    """GFLOPs per image and parameters (metrics.csv rows) and seconds per image (wall clock: metrics.json)."""
    tgen = scoring.slice_generator(0, 0)
    spi = time_per_image(lambda b: g.sample(labels[:b], generator=tgen, batch_size=b), timing_batch, timing_batch,
                         device, repeats=timing_repeats)
    keys = {"model": g.key, "train_seed": g.train_seed, "condition": "full", "seed": -1, "slice": -1,
            "patient": "all", "class": "all"}
    rows = [{**keys, "metric": m, "value": float(v)} for m, v in
            (("gflops_per_image", g.gflops_per_image()), ("params", g.params))]
    return rows, {"s_per_image": spi, "batch_size": timing_batch}


def evaluate(cmp: Comparison, *, judge_steps: int, n_test: int, sampler: str, sampler_steps: int, seeds=(0,),
             timing_batch: int = 8, timing_repeats: int = 2, batch_size: int = 16) -> scoring.Scored:
    """Generate and score the test masks with every model and training seed (`difflung.scoring`); write
    metrics.csv (per-slice scores, and per model of the main seed: GFLOPs per image counting every sampling
    step, and parameters) and metrics.json (settings, seconds per image on the chapter's device at batch
    `timing_batch`, median of `timing_repeats` after a warm-up batch, and provenance).

    Args:
        judge_steps: training steps of the run's judge segmenter (`difflung.scoring.judge`, trained once).
        n_test: test slices scored; sampler, sampler_steps: the diffusion models' solver; seeds: sampling seeds.
        timing_batch, timing_repeats: the s/image measurement.
        batch_size: batch for generation.
    """
    missing = [k for k in MODELS if k not in cmp.models]
    if missing:
        raise ValueError(f"models {missing} are not trained yet: run diffusion_models(cmp) and gan_baselines(cmp)")
    ds = cmp.dataset
    seg = scoring.judge(ds, runs.judge_dir(cmp.runs_root), steps=judge_steps, seed=cmp.seed, device=cmp.device)
    gens = [load_generator(folder, key=k, dataset=ds, device=cmp.device, sampler=sampler, sampler_steps=sampler_steps)
            for k in MODELS for folder in cmp.models[k].values()]
    scored = scoring.generate_and_score(gens, ds, seg, n_test=n_test, seeds=list(seeds), batch_size=batch_size)
    rows, timings = [scored.rows], {}
    for g in gens:
        if g.train_seed == cmp.seed:
            cost, timings[g.key] = _cost_rows(g, scored.labels, cmp.device, timing_batch, timing_repeats)
            rows.append(pd.DataFrame(cost))
    path = write_metrics(runs.metrics_path(cmp.run_dir), pd.concat(rows, ignore_index=True))
    settings = {"n_test": int(len(scored.index)), "sampler": sampler, "sampler_steps": sampler_steps,
                "sample_seeds": list(seeds), "timing_batch": timing_batch, "timing_repeats": timing_repeats}
    write_json_atomic(cmp.run_dir / "metrics.json", {
        "metrics_csv": path.name, "window_hu": list(L.MODEL_WINDOW), "data_range": DATA_RANGE,
        "test_slices": scored.index.tolist(), "seeds": cmp.seeds, **settings,
        "device": device_description(cmp.device), "budget": cmp.budget, "notes": cmp.notes,
        "models": {k: {str(s): str(p) for s, p in v.items()} for k, v in cmp.models.items()}, "timings": timings,
        "provenance": provenance(config={"gan_size": cmp.gan_size, **settings}, seed=cmp.seed, device=cmp.device),
    })
    return scored


def table_judge(scored: scoring.Scored) -> pd.DataFrame:
    """The judge's Dice per class on the real test slices: the ceiling for generated ones."""
    return scoring.judge_dice(scored.rows)


# ---------------------------------------------------------------------------------------------------------------
# tables

def _ci_text(lo: float, hi: float) -> str:
    return "n/a" if np.isnan(lo) else f"[{lo:.3g}, {hi:.3g}]"


def summary(run_dir) -> pd.DataFrame:
    """Means and 95% t-intervals from metrics.csv, one row per (model, metric, class).

    `lo_slices, hi_slices`: over test slices (each slice's value averaged over sampling and training seeds
    first); `lo_seeds, hi_seeds`: over training seeds (each seed's mean over slices first); NaN with one seed.
    """
    df = read_metrics(run_dir)
    rows = []
    for (model, metric, cls), g in df.groupby(["model", "metric", "class"], sort=False):
        per_slice = g.groupby("slice")["value"].mean()
        per_seed = g.groupby("train_seed")["value"].mean()
        m, lo, hi = mean_ci(per_slice)
        _, slo, shi = mean_ci(per_seed)
        rows.append({"model": model, "metric": metric, "class": cls, "mean": m, "lo_slices": lo, "hi_slices": hi,
                     "lo_seeds": slo, "hi_seeds": shi, "n_slices": int(per_slice.notna().sum()),
                     "n_seeds": int(per_seed.notna().sum())})
    return pd.DataFrame(rows)


def table_comparison(run_dir) -> pd.DataFrame:
    """The poster's table rebuilt from metrics.csv: PSNR, SSIM, GFLOPs per image, parameters and s/image of each
    model, ours (mean, 95% CI over test slices and over seeds) with the poster's reported row beneath."""
    s = summary(run_dir).set_index(["model", "metric", "class"])
    meta = json.loads((Path(run_dir) / "metrics.json").read_text())
    rows = []
    for key in MODELS:
        name = display_name(key)

        def val(metric, cls="all"):
            return s.loc[(key, metric, cls)] if (key, metric, cls) in s.index else None

        psnr, ssim = val("psnr"), val("ssim")
        rows.append({
            "model": name, "source": f"ours ({len(meta['seeds'])} seed{'s' * (len(meta['seeds']) > 1)})",
            "PSNR (dB)": f"{psnr['mean']:.2f}", "PSNR CI slices": _ci_text(psnr["lo_slices"], psnr["hi_slices"]),
            "PSNR CI seeds": _ci_text(psnr["lo_seeds"], psnr["hi_seeds"]),
            "SSIM": f"{ssim['mean']:.3f}", "SSIM CI slices": _ci_text(ssim["lo_slices"], ssim["hi_slices"]),
            "SSIM CI seeds": _ci_text(ssim["lo_seeds"], ssim["hi_seeds"]),
            "GFLOPs/image": f"{val('gflops_per_image')['mean']:.3g}",
            "params (M)": f"{val('params')['mean'] / 1e6:.2f}",
            "s/image": f"{meta.get('timings', {}).get(key, {}).get('s_per_image', float('nan')):.3g}",
        })
        r = IMAGE_QUALITY[key]
        rows.append({"model": name, "source": REPORTED_LABEL, "PSNR (dB)": f"{r['psnr']:.2f}", "PSNR CI slices": "",
                     "PSNR CI seeds": "", "SSIM": f"{r['ssim']:.2f}", "SSIM CI slices": "", "SSIM CI seeds": "",
                     "GFLOPs/image": f"{r['gflops_per_image']:g}", "params (M)": "",
                     "s/image": f"{r['s_per_image']:g}"})
    table = pd.DataFrame(rows).set_index(["model", "source"])
    table.attrs["caption"] = (
        f"Ours: {meta['n_test']} test slices, training seeds {meta['seeds']}, sampling seeds {meta['sample_seeds']}, "
        f"diffusion sampled with {meta['sampler']} {meta['sampler_steps']} steps; PSNR/SSIM on HU [-1000, 400] "
        f"(data range {meta['data_range']} in [-1, 1]); "
        f"GFLOPs count every sampling step; s/image at batch {meta['timing_batch']} on {meta['device']}. "
        f"Poster rows are reported values (their image size and device are not stated).")
    write_json_atomic(Path(run_dir) / "comparison_table.json", {"table": table.reset_index().to_dict("records"),
                                                                "caption": table.attrs["caption"]})
    return table


def table_faithfulness(run_dir) -> pd.DataFrame:
    """Mask faithfulness: Dice per class of the segmenter on each model's slices, mean [95% CI over slices]."""
    s = summary(run_dir)
    s = s[s.metric == "dice"]
    s = s.assign(text=[f"{m:.3f} {_ci_text(lo, hi)}" if not np.isnan(m) else "n/a"
                       for m, lo, hi in zip(s["mean"], s.lo_slices, s.hi_slices)])
    table = s.pivot(index="model", columns="class", values="text").reindex([*MODELS, "real"])
    table.index = [display_name(k) for k in table.index]
    return table[[c for c in L.names(range(L.NUM_IDS)) if c in table.columns]]


# ---------------------------------------------------------------------------------------------------------------
# figures

def _rare_picks(ds: Dataset, labels: np.ndarray, n: int) -> list[tuple[int, int]]:
    """Up to n (row in `labels`, class id) pairs: the rarest pathologies first, the slice holding most of each."""
    freq = ds.frequencies("train", within="all")
    present = [c for c in ds.classes if L.BY_ID[c].pathology and (labels == c).any()]
    present.sort(key=lambda c: freq.get(L.BY_ID[c].name, 0.0))
    picks = []
    for c in present[:n]:
        area = (labels == c).sum((1, 2))
        picks.append((int(area.argmax()), c))
    if not picks:  # no pathology in the subset: show the first slices
        picks = [(i, L.LUNG) for i in range(min(n, len(labels)))]
    return picks


def _box(mask: np.ndarray, min_side: int) -> tuple[int, int, int, int]:
    ys, xs = np.nonzero(mask)
    s = mask.shape[0]
    cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
    half = max(min_side, int(np.ptp(ys)) + 4, int(np.ptp(xs)) + 4) // 2
    y0, x0 = int(np.clip(cy - half, 0, s - 2 * half)), int(np.clip(cx - half, 0, s - 2 * half))
    return y0, y0 + 2 * half, x0, x0 + 2 * half


def figure_samples(cmp: Comparison, scored: scoring.Scored, n_masks: int = 3):
    """The same test masks through the four models (main training seed, first sampling seed: the images scored)
    beside the real slice, lung window, each row followed by a zoom on its rare class."""
    from matplotlib.patches import Rectangle

    idx, labels, real = scored.index, scored.labels, scored.real
    picks = _rare_picks(cmp.dataset, labels, n_masks)
    cols = [("mask", None), ("real", real)] + [(display_name(k), scored.generated(k, train_seed=cmp.seed))
                                               for k in MODELS]
    fig, axes = plt.subplots(2 * len(picks), len(cols), figsize=(1.7 * len(cols), 3.4 * len(picks)), squeeze=False)
    for r, (i, c) in enumerate(picks):
        y0, y1, x0, x1 = _box(labels[i] == c, max(8, cmp.dataset.size // 4))
        for j, (title, imgs) in enumerate(cols):
            hu = unwindow(real[i] if imgs is None else imgs[i])
            lab = labels[i] if imgs is None else None
            show_ct(axes[2 * r, j], hu, lab, alpha=0.6, title=title if r == 0 else None)
            axes[2 * r, j].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="#f1c40f", lw=0.8))
            show_ct(axes[2 * r + 1, j], hu[y0:y1, x0:x1], None if lab is None else lab[y0:y1, x0:x1], alpha=0.6)
        axes[2 * r, 0].text(-0.1, 0.5, f"test slice {int(idx[i])}\nzoom: {L.BY_ID[c].name}", rotation=90,
                            transform=axes[2 * r, 0].transAxes, ha="right", va="center", fontsize=8)
    present = sorted(set(np.unique(labels[[i for i, _ in picks]]).tolist()) - {L.BACKGROUND, L.BODY})
    fig.legend(handles=legend_handles(present), loc="lower center", ncol=max(1, len(present)), frameon=False)
    fig.suptitle(f"Same masks through each model (seed {cmp.seed}), lung window W1500/L-600; "
                 f"odd rows: slice, even rows: zoom on the boxed rare class", fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97))
    save_figure(fig, cmp.run_dir / "samples.png", config={"test_slices": [int(idx[i]) for i, _ in picks],
                                                           "classes": [c for _, c in picks]}, seed=cmp.seed)
    return fig


def figure_quality_cost(run_dir):
    """PSNR against GFLOPs per generated image (log x): ours with 95% CIs over test slices, the poster's points
    as hollow markers."""
    s = summary(run_dir).set_index(["model", "metric", "class"])
    colors = dict(zip(MODELS, ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")))
    fig, ax = plt.subplots(figsize=(6.2, 4))
    for key in MODELS:
        name = display_name(key)
        p, g = s.loc[(key, "psnr", "all")], s.loc[(key, "gflops_per_image", "all")]["mean"]
        err = [[p["mean"] - p["lo_slices"]], [p["hi_slices"] - p["mean"]]] if not np.isnan(p["lo_slices"]) else None
        ax.errorbar(g, p["mean"], yerr=err, fmt="o", color=colors[key], capsize=3, label=f"{name}, ours")
        r = IMAGE_QUALITY[key]
        ax.scatter(r["gflops_per_image"], r["psnr"], s=60, facecolors="none", edgecolors=colors[key], marker="s",
                   label=f"{name}, {REPORTED_LABEL}")
    ax.set_xscale("log")
    ax.set(xlabel="GFLOPs per generated image (log; every sampling step counted)", ylabel="PSNR (dB), HU [-1000, 400]",
           title="Quality vs cost")
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    save_figure(fig, Path(run_dir) / "quality_vs_cost.png", config={"source": "metrics.csv + reported (poster)"})
    return fig
