"""Chapter 4, baseline comparison: Pix2Pix, SPADE, Seg-Guided Diffusion and Diff-Lung (CBMAT) on the same data.

Each function is one section of `notebooks/04_baseline_comparison.py`:

    cmp = open_comparison(runs_root, run_dir, profile=profile, seed=seed, n_seeds=n_seeds, device=device)
    diffusion_models(cmp, preset=preset, train_steps=train_steps, batch_size=batch_size)   # reuse or train
    gan_baselines(cmp)                       # Pix2Pix and SPADE with the diffusion models' steps x batch
    figure_gan_losses(cmp)
    faithfulness_segmenter(cmp, steps=seg_steps)
    evaluate(cmp, n_test=n_test, sampler=sampler, sampling_steps=sampling_steps, timing_batch=timing_batch)
    comparison_table(run_dir); faithfulness_table(run_dir)
    figure_samples(cmp); figure_quality_cost(run_dir)

Reuse: Diff-Lung (CBMAT) of the main seed is chapter 3's model (`<runs_root>/03_cbmat_training/model`) when it
was trained on this dataset with CBMAT and one-hot masks; other seeds are trained here with its configuration.
Seg-Guided (uniform ablation p = 0.5, the single k/255 mask channel of the original) gets the same network and
budget; its main-seed model is saved to `<run_dir>/models/segguided` for chapter 5. Every model folder is
reused when it already holds a finished model of the same configuration.

Metrics go to `<run_dir>/metrics.csv` (tidy; column `slice` is the test-slice index, -1 for per-model rows),
with `metrics.json` beside it (settings, device, provenance). Image quality is measured in the model window
HU [-1000, 400] mapped to [-1, 1] (data range 2.0), PSNR and SSIM by scikit-image.
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import labels as L
from ..baselines import GanTrainConfig, baseline_name, generate, load_generator, read_loss_log, train_gan
from ..dataset import Dataset, unwindow
from ..evaluation import DATA_RANGE, count_params, dice_per_class, gflops_per_call, mean_ci, psnr_ssim, time_per_image
from ..metrics import read_metrics, write_metrics
from ..plots import legend_handles, plt, save_figure, show_ct
from ..provenance import atomic_path, device_description, provenance, resolve_device, write_json_atomic
from . import phantom_dataset_dir
from ..reported import IMAGE_QUALITY, LABEL

MODELS = {"pix2pix": "Pix2Pix", "spade": "SPADE", "segguided": "Seg-Guided", "difflung": "Diff-Lung (CBMAT)"}
# The poster's table (difflung.reported): shown beside ours, labelled as reported, never used as ours.
REPORTED = {MODELS[k]: v for k, v in IMAGE_QUALITY.items()}
REPORTED_LABEL = LABEL
MIN_SEEDS = {"standard": 3, "paper": 3}


@dataclass
class Comparison:
    """State shared by the chapter's sections: inputs, seeds, device and the model folders found or trained."""

    dataset: Dataset
    runs_root: Path
    run_dir: Path
    profile: str
    seeds: list[int]
    device: str
    models: dict = field(default_factory=dict)  # key -> {seed: folder}
    budget: dict = field(default_factory=dict)  # steps, batch_size shared by all models
    notes: dict = field(default_factory=dict)  # key -> how the model was obtained
    segmenter: object = None

    @property
    def seed(self) -> int:
        return self.seeds[0]

    def model_dir(self, key: str, seed: int) -> Path:
        """`<run_dir>/models/<key>` for the main seed, `<key>-seed<k>` for the others."""
        return self.run_dir / "models" / (key if seed == self.seed else f"{key}-seed{seed}")



def open_comparison(runs_root, run_dir, *, profile: str, seed: int, n_seeds: int = 1, device: str = "auto") -> Comparison:
    """Open the phantom dataset of chapter 1 and fix the seeds and device of the chapter.

    Args:
        runs_root: the run's root (`runs/<profile>`); the dataset is `<runs_root>/01_data_preparation/dataset`.
        run_dir: this chapter's folder.
        profile: smoke, standard or paper (sets the GAN sizes; standard and paper need >= 3 seeds).
        seed, n_seeds: training seeds seed, seed + 1, ..., seed + n_seeds - 1.
        device: "auto", "cpu" or "cuda".
    """
    if n_seeds < MIN_SEEDS.get(profile, 1):
        raise ValueError(f"profile {profile!r} reports CIs over training seeds: n_seeds={n_seeds}, "
                         f"need at least {MIN_SEEDS[profile]}")
    runs_root, run_dir = Path(runs_root), Path(run_dir)
    ds = Dataset(phantom_dataset_dir(runs_root))
    baseline_name("pix2pix", profile)  # clear error for a profile without GAN sizes
    run_dir.mkdir(parents=True, exist_ok=True)
    return Comparison(ds, runs_root, run_dir, profile, list(range(seed, seed + n_seeds)), resolve_device(device))


# ---------------------------------------------------------------------------------------------------------------
# models

def _same_training(meta: dict, config, ds: Dataset) -> bool:
    saved = type(config)(**meta.get("train_config", {})).result_key()
    return saved == config.result_key() and meta.get("dataset", {}).get("sha256") == \
        ds.manifest["splits"][config.split]["sha256"]


def diffusion_models(cmp: Comparison, *, preset: str = "small", train_steps: int = 300, batch_size: int = 8,
                     progress: bool = True) -> pd.DataFrame:
    """Find or train Diff-Lung (CBMAT) and Seg-Guided for every seed; fix the training budget of the chapter.

    Diff-Lung's configuration is chapter 3's when its model fits this dataset (then `preset`, `train_steps` and
    `batch_size` are unused); Seg-Guided uses the same configuration with `mask_mode="single"` and
    `strategy="uniform"`. Returns one row per model and seed: where it comes from, steps, batch, images seen.
    """
    from ..diffusion import TrainConfig, load_model, train_diffusion

    ds = cmp.dataset
    ch3 = cmp.runs_root / "03_cbmat_training" / "model"
    base = TrainConfig(preset=preset, mask_mode="onehot", strategy="cbmat", steps=train_steps,
                       batch_size=batch_size, seed=cmp.seed)
    reused = None
    if (ch3 / "difflung_config.json").is_file():
        meta = json.loads((ch3 / "difflung_config.json").read_text())
        tc = meta.get("train_config", {})
        fits = (tc.get("strategy") == "cbmat" and tc.get("mask_mode") == "onehot" and tc.get("seed") == cmp.seed
                and meta.get("dataset", {}).get("sha256") == ds.manifest["splits"]["train"]["sha256"])
        if fits:
            base, reused = TrainConfig(**tc), ch3
    cmp.notes["difflung"] = ("chapter 3's model (03_cbmat_training/model) for the main seed" if reused else
                             "trained here (no chapter 3 model for this dataset and seed)")
    cmp.notes["segguided"] = "trained here: Diff-Lung's network and budget, single k/255 mask channel, uniform p=0.5"
    cmp.budget = {"steps": base.steps, "batch_size": base.batch_size}
    rows = []
    for key, change in (("difflung", {}), ("segguided", {"mask_mode": "single", "strategy": "uniform"})):
        cmp.models[key] = {}
        for s in cmp.seeds:
            cfg = TrainConfig(**{**asdict(base), **change, "seed": s})
            folder = reused if (key == "difflung" and s == cmp.seed and reused) else cmp.model_dir(key, s)
            if folder is not reused:
                train_diffusion(ds, cfg, folder, device=cmp.device, progress=progress)
            unet, meta = load_model(folder, ds)
            if not _same_training(meta, cfg, ds):
                raise ValueError(f"{folder}: holds a model of another configuration than {key} seed {s} needs")
            cmp.models[key][s] = folder
            rows.append({"model": MODELS[key], "seed": s, "source": "reused" if folder == reused else "this chapter",
                         "mask": cfg.mask_mode, "ablation": cfg.strategy, "preset": cfg.preset, "steps": cfg.steps,
                         "batch": cfg.batch_size, "images seen": cfg.steps * cfg.batch_size,
                         "params (M)": round(count_params(unet) / 1e6, 3),
                         "train s": round(meta["training"]["wall_s"], 1), "folder": str(folder)})
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
    for kind in ("pix2pix", "spade"):
        cmp.models[kind] = {}
        for s in cmp.seeds:
            cfg = GanTrainConfig(model=baseline_name(kind, cmp.profile), steps=steps, batch_size=batch_size, seed=s,
                                 checkpoint_every=max(1, steps // 2), log_every=max(1, steps // 50), device=cmp.device)
            gen_dir = train_gan(cmp.dataset, cfg, cmp.model_dir(kind, s), progress=progress)
            meta = json.loads((gen_dir / "config.json").read_text())
            cmp.models[kind][s] = gen_dir
            rows.append({"model": MODELS[kind], "seed": s, "source": "this chapter", "registry": cfg.model,
                         "steps": steps, "batch": batch_size, "images seen": meta["images_seen"],
                         "params (M)": round(meta["params_generator"] / 1e6, 3),
                         "train s": meta["train_seconds_last_session"], "folder": str(gen_dir)})
        cmp.notes[kind] = f"trained here ({baseline_name(kind, cmp.profile)}), same steps x batch as the diffusion models"
    return pd.DataFrame(rows)


def figure_gan_losses(cmp: Comparison):
    """Training losses of Pix2Pix and SPADE (main seed): discriminator on real/fake, generator terms."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2))
    for ax, kind in zip(axes, ("pix2pix", "spade")):
        log = read_loss_log(cmp.models[kind][cmp.seed].parent)
        for col in [c for c in log.columns if c.startswith(("d_", "g_"))]:
            ax.plot(log["step"], log[col], label=col, lw=1)
        ax.set(title=f"{MODELS[kind]} (seed {cmp.seed})", xlabel="step", ylabel="loss")
        ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    save_figure(fig, cmp.run_dir / "gan_losses.png", config={"models": {k: str(v[cmp.seed]) for k, v in cmp.models.items()
                                                                        if k in ("pix2pix", "spade")}}, seed=cmp.seed)
    return fig


def faithfulness_segmenter(cmp: Comparison, *, steps: int = 200, batch_size: int = 16, progress: bool = True) -> pd.DataFrame:
    """Train a MONAI UNet on the real training slices (or reuse `<run_dir>/segmenter`); it segments generated
    slices to measure how faithfully they follow their mask. Returns its Dice per class on the real test
    slices, the ceiling for the generated ones."""
    from ..segmentation import SegConfig, Segmenter, train_segmenter

    ds, folder = cmp.dataset, cmp.run_dir / "segmenter"
    config = SegConfig(steps=steps, batch_size=batch_size, strides=(2, 2, 2) if ds.size >= 32 else (2, 2),
                       channels=(16, 32, 64, 128) if ds.size >= 32 else (16, 32, 64))
    key = {"config": asdict(config), "seed": cmp.seed, "dataset_sha256": ds.manifest["splits"]["train"]["sha256"]}
    seg = None
    if (folder / "segmenter.json").is_file():
        seg = Segmenter.load(folder, device=cmp.device)
        if seg.info.get("reuse_key") != json.loads(json.dumps(key)):
            seg = None
    if seg is None:
        train = ds.split("train")
        seg = train_segmenter(train.images, train.labels, ds.classes, config,
                              torch.Generator().manual_seed(cmp.seed), device=cmp.device, progress=progress)
        seg.info["reuse_key"] = key
        seg.save(folder)
    cmp.segmenter = seg
    test = ds.split("test")
    d = dice_per_class(seg.predict(test.images), test.labels, [c for c in ds.classes if c != L.BACKGROUND])
    rows = [{"class": c, "Dice (real test slices)": m, "95% CI": _ci_text(lo, hi), "slices with class": int(g.dice.notna().sum())}
            for c, g in d.groupby("class", sort=False) for m, lo, hi in [mean_ci(g.dice)]]
    return pd.DataFrame(rows).set_index("class")


# ---------------------------------------------------------------------------------------------------------------
# evaluation

def _test_subset(ds: Dataset, n_test: int, seed: int) -> np.ndarray:
    n = len(ds.split("test"))
    if n == 0:
        raise ValueError(f"{ds.root}: the test split is empty")
    k = min(n_test, n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


class _Sampler:
    """One trained model behind a common interface: images for masks, cost of one image, parameter count."""

    def __init__(self, key: str, folder: Path, classes, device: str, sampler: str, steps: int):
        self.key, self.device, self.sampler, self.steps = key, device, sampler, steps
        if key in ("pix2pix", "spade"):
            self.model = load_generator(folder, device)
            self.classes = self.model.difflung_config["model"]["classes"]
        else:
            from ..diffusion import load_model

            self.model, self.meta = load_model(folder, device=device)
            self.classes = self.meta["classes"]
        if list(self.classes) != list(classes):
            raise ValueError(f"{folder}: model classes {self.classes} differ from the dataset's {list(classes)}")

    def __call__(self, labels, generator: torch.Generator, batch_size: int = 16) -> np.ndarray:
        if self.key in ("pix2pix", "spade"):
            # Pix2Pix draws its noise from dropout at test time (the original); SPADE is deterministic
            return generate(self.model, labels, self.classes, batch_size, self.device, generator=generator)
        from ..diffusion import sample

        return sample(self.model, self.meta, labels, generator=generator, sampler=self.sampler, steps=self.steps,
                      batch_size=batch_size, device=self.device)

    def gflops(self, size: int) -> float:
        if self.key in ("pix2pix", "spade"):
            from ..baselines import one_hot

            mask = one_hot(np.zeros((1, size, size), np.uint8), self.classes, self.device)
            return gflops_per_call(self.model, mask)
        from ..diffusion import sampling_gflops

        return sampling_gflops(self.model, self.meta, self.sampler, self.steps, size)  # every sampling step

    def params(self) -> int:
        return count_params(self.model)


def evaluate(cmp: Comparison, *, n_test: int = 16, sampler: str = "ddim", sampling_steps: int = 50,
             timing_batch: int = 8, timing_repeats: int = 2, batch_size: int = 16) -> pd.DataFrame:
    """Generate the test slices' masks with every model and seed, and score them; write metrics.csv.

    Per test slice: PSNR and SSIM against the real slice, and Dice per class between the segmenter's reading of
    the generated slice and its mask. Per model (main seed): GFLOPs per generated image (every sampling step
    counted), parameters, and seconds per image on the chapter's device at batch `timing_batch` (median of
    `timing_repeats`, after a warm-up batch). The generated slices are saved to `<run_dir>/samples/`.

    Args:
        n_test: test slices evaluated (a seeded random subset of the test split, the same for every model).
        sampler, sampling_steps: the diffusion models' solver and its steps.
        timing_batch, timing_repeats: the s/image measurement.
        batch_size: batch for generation.
    """
    if cmp.segmenter is None:
        raise ValueError("no segmenter: run faithfulness_segmenter(cmp) first")
    missing = [k for k in MODELS if k not in cmp.models]
    if missing:
        raise ValueError(f"models {missing} are not trained yet: run diffusion_models(cmp) and gan_baselines(cmp)")
    ds, test = cmp.dataset, cmp.dataset.split("test")
    idx = _test_subset(ds, n_test, cmp.seed)
    labels, real = test.labels[idx], test.images[idx]
    scored = [c for c in ds.classes if c != L.BACKGROUND]
    rows, timings = [], {}
    for m, key in enumerate(MODELS):
        name = MODELS[key]
        for s in cmp.seeds:
            model = _Sampler(key, cmp.models[key][s], ds.classes, cmp.device, sampler, sampling_steps)
            gen = torch.Generator().manual_seed(10_000 * s + m)
            fake = model(labels, gen, batch_size)  # (n, S, S) [-1, 1]
            _save_samples(cmp.run_dir / "samples" / key / f"seed_{s}.npz", fake, idx)
            q = psnr_ssim(fake, real, DATA_RANGE)
            for metric in ("psnr", "ssim"):
                rows += [{"model": name, "metric": metric, "class": "all", "seed": s, "slice": int(idx[i]), "value": v}
                         for i, v in enumerate(q[metric])]
            d = dice_per_class(cmp.segmenter.predict(fake), labels, scored)
            rows += [{"model": name, "metric": "dice", "class": r["class"], "seed": s, "slice": int(idx[r["image"]]),
                      "value": r["dice"]} for _, r in d.iterrows()]
            if s == cmp.seed:
                tgen = torch.Generator().manual_seed(0)
                spi = time_per_image(lambda b: model(labels[:b], tgen, b), timing_batch, timing_batch, cmp.device,
                                     repeats=timing_repeats)
                rows += [{"model": name, "metric": k, "class": "all", "seed": s, "slice": -1, "value": v}
                         for k, v in (("gflops_per_image", model.gflops(ds.size)), ("params", model.params()))]
                # wall-clock timings vary between identical runs: metrics.json, not metrics.csv (kept byte-identical)
                timings[name] = {"s_per_image": spi, "batch_size": timing_batch}
    # the segmenter on the real slices: the ceiling of mask faithfulness
    d = dice_per_class(cmp.segmenter.predict(real), labels, scored)
    rows += [{"model": "real slices", "metric": "dice", "class": r["class"], "seed": cmp.seed,
              "slice": int(idx[r["image"]]), "value": r["dice"]} for _, r in d.iterrows()]
    path = write_metrics(cmp.run_dir, rows)
    write_json_atomic(cmp.run_dir / "metrics.json", {
        "metrics_csv": path.name, "window_hu": list(L.MODEL_WINDOW), "data_range": DATA_RANGE,
        "data_range_note": "PSNR/SSIM on [-1, 1] = HU [-1000, 400]; data range 2.0 (1400 HU)",
        "test_slices": idx.tolist(), "n_test": int(len(idx)), "seeds": cmp.seeds, "sampler": sampler,
        "sampling_steps": sampling_steps, "timing_batch": timing_batch, "timing_repeats": timing_repeats,
        "device": device_description(cmp.device), "budget": cmp.budget, "notes": cmp.notes,
        "models": {k: {str(s): str(p) for s, p in v.items()} for k, v in cmp.models.items()},
        "reported_poster": REPORTED, "timings": timings,
        "provenance": provenance(config={"profile": cmp.profile, "n_test": n_test, "sampler": sampler,
                                         "sampling_steps": sampling_steps, "timing_batch": timing_batch},
                                 seed=cmp.seed, device=cmp.device),
    })
    return read_metrics(path)


def _save_samples(path: Path, images: np.ndarray, idx: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, images=images.astype(np.float32), test_index=idx.astype(np.int64))


def _load_samples(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no generated samples; run evaluate(cmp) first")
    with np.load(path, allow_pickle=False) as z:
        return z["images"], z["test_index"]


# ---------------------------------------------------------------------------------------------------------------
# tables

def _ci_text(lo: float, hi: float) -> str:
    return "n/a" if np.isnan(lo) else f"[{lo:.3g}, {hi:.3g}]"


def summary(run_dir) -> pd.DataFrame:
    """Means and 95% t-intervals from metrics.csv, one row per (model, metric, class).

    `lo_slices, hi_slices`: over test slices (each slice's value averaged over seeds first);
    `lo_seeds, hi_seeds`: over training seeds (each seed's mean over slices first); NaN with one seed.
    """
    df = read_metrics(run_dir)
    rows = []
    for (model, metric, cls), g in df.groupby(["model", "metric", "class"], sort=False):
        per_slice = g.groupby("slice")["value"].mean()
        per_seed = g.groupby("seed")["value"].mean()
        m, lo, hi = mean_ci(per_slice)
        _, slo, shi = mean_ci(per_seed)
        rows.append({"model": model, "metric": metric, "class": cls, "mean": m, "lo_slices": lo, "hi_slices": hi,
                     "lo_seeds": slo, "hi_seeds": shi, "n_slices": int(per_slice.notna().sum()),
                     "n_seeds": int(per_seed.notna().sum())})
    return pd.DataFrame(rows)


def comparison_table(run_dir) -> pd.DataFrame:
    """The poster's table rebuilt from metrics.csv: PSNR, SSIM, GFLOPs per image, parameters and s/image of each
    model, ours (mean, 95% CI over test slices and over seeds) with the poster's reported row beneath."""
    s = summary(run_dir).set_index(["model", "metric", "class"])
    meta = json.loads((Path(run_dir) / "metrics.json").read_text())
    rows = []
    for name in MODELS.values():
        def val(metric, cls="all"):
            return s.loc[(name, metric, cls)] if (name, metric, cls) in s.index else None

        psnr, ssim = val("psnr"), val("ssim")
        rows.append({
            "model": name, "source": f"ours ({len(meta['seeds'])} seed{'s' * (len(meta['seeds']) > 1)})",
            "PSNR (dB)": f"{psnr['mean']:.2f}", "PSNR CI slices": _ci_text(psnr["lo_slices"], psnr["hi_slices"]),
            "PSNR CI seeds": _ci_text(psnr["lo_seeds"], psnr["hi_seeds"]),
            "SSIM": f"{ssim['mean']:.3f}", "SSIM CI slices": _ci_text(ssim["lo_slices"], ssim["hi_slices"]),
            "SSIM CI seeds": _ci_text(ssim["lo_seeds"], ssim["hi_seeds"]),
            "GFLOPs/image": f"{val('gflops_per_image')['mean']:.3g}",
            "params (M)": f"{val('params')['mean'] / 1e6:.2f}",
            "s/image": f"{meta.get('timings', {}).get(name, {}).get('s_per_image', float('nan')):.3g}",
        })
        r = REPORTED[name]
        rows.append({"model": name, "source": REPORTED_LABEL, "PSNR (dB)": f"{r['psnr']:.2f}", "PSNR CI slices": "",
                     "PSNR CI seeds": "", "SSIM": f"{r['ssim']:.2f}", "SSIM CI slices": "", "SSIM CI seeds": "",
                     "GFLOPs/image": f"{r['gflops_per_image']:g}", "params (M)": "",
                     "s/image": f"{r['s_per_image']:g}"})
    table = pd.DataFrame(rows).set_index(["model", "source"])
    table.attrs["caption"] = (
        f"Ours: {meta['n_test']} test slices, seeds {meta['seeds']}, diffusion sampled with {meta['sampler']} "
        f"{meta['sampling_steps']} steps; PSNR/SSIM on HU [-1000, 400] (data range {meta['data_range']} in [-1, 1]); "
        f"GFLOPs count every sampling step; s/image at batch {meta['timing_batch']} on {meta['device']}. "
        f"Poster rows are reported values (their image size and device are not stated).")
    write_json_atomic(Path(run_dir) / "comparison_table.json", {"table": table.reset_index().to_dict("records"),
                                                                "caption": table.attrs["caption"]})
    return table


def faithfulness_table(run_dir) -> pd.DataFrame:
    """Mask faithfulness: Dice per class of the segmenter on each model's slices, mean [95% CI over slices]."""
    s = summary(run_dir)
    s = s[s.metric == "dice"]
    s = s.assign(text=[f"{m:.3f} {_ci_text(lo, hi)}" if not np.isnan(m) else "n/a"
                       for m, lo, hi in zip(s["mean"], s.lo_slices, s.hi_slices)])
    order = list(MODELS.values()) + ["real slices"]
    table = s.pivot(index="model", columns="class", values="text").reindex(order)
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


def figure_samples(cmp: Comparison, n_masks: int = 3):
    """The same test masks through the four models (main seed) beside the real slice, lung window, each row
    followed by a zoom on its rare class."""
    from matplotlib.patches import Rectangle

    test = cmp.dataset.split("test")
    samples = {k: _load_samples(cmp.run_dir / "samples" / k / f"seed_{cmp.seed}.npz") for k in MODELS}
    idx = samples["pix2pix"][1]
    labels, real = test.labels[idx], test.images[idx]
    picks = _rare_picks(cmp.dataset, labels, n_masks)
    cols = [("mask", None), ("real", real)] + [(MODELS[k], samples[k][0]) for k in MODELS]
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
    colors = dict(zip(MODELS.values(), ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728")))
    fig, ax = plt.subplots(figsize=(6.2, 4))
    for name in MODELS.values():
        p, g = s.loc[(name, "psnr", "all")], s.loc[(name, "gflops_per_image", "all")]["mean"]
        err = [[p["mean"] - p["lo_slices"]], [p["hi_slices"] - p["mean"]]] if not np.isnan(p["lo_slices"]) else None
        ax.errorbar(g, p["mean"], yerr=err, fmt="o", color=colors[name], capsize=3, label=f"{name}, ours")
        r = REPORTED[name]
        ax.scatter(r["gflops_per_image"], r["psnr"], s=60, facecolors="none", edgecolors=colors[name], marker="s",
                   label=f"{name}, {REPORTED_LABEL}")
    ax.set_xscale("log")
    ax.set(xlabel="GFLOPs per generated image (log; every sampling step counted)", ylabel="PSNR (dB), HU [-1000, 400]",
           title="Quality vs cost")
    ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    save_figure(fig, Path(run_dir) / "quality_vs_cost.png", config={"source": "metrics.csv + reported (poster)"})
    return fig
