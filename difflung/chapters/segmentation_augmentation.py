"""Chapter 5, segmentation augmentation: does synthetic data lift rare-class Dice?

Arms, each the same MONAI UNet (`difflung.segmentation`) trained for the same number of steps with the same
seeds, evaluated on the held-out test patients:

    ref          real training slices only
    oversample   real + `n_extra` real slices with rare classes, drawn so that the extra set has the rare-class
                 balance of the synthetic masks: the control for "more rare-class pixels" without new images
    +segguided   real + `n_extra` synthetic pairs: synthesised masks, images by Segmentation-Guided Diffusion
    +difflung    real + the same `n_extra` synthesised masks, images by Diff-Lung (CBMAT)

`n_extra = round(mix_ratio * n_real)`; batches draw uniformly from real + extra, so on average a fraction
mix_ratio / (1 + mix_ratio) of each batch is extra. The synthetic arms share the masks, so they differ only in
the generator that painted them. One synthetic set per model is drawn (from the chapter's seed) and shared by
all training seeds: seeds capture training variance, not the variance of drawing another synthetic set.

Statistics. Per training seed, the Dice of a class is the mean over test slices of per-slice Dice (MONAI
DiceMetric; slices where the class is absent from both prediction and truth are skipped, a class predicted on
a slice that lacks it scores 0). The table gives the mean over seeds with a 95% t-interval. The test against
`ref` is the Wilcoxon signed-rank test over seeds: the training run is the unit of replication, and seed s of
every arm shares its initial weights and augmentation stream with seed s of `ref`, so the pairing is real. A
rank-sum over slices would treat slices of the same few test patients, scored by one model, as independent
samples and overstate the evidence; it is reported beside, as a secondary view of the same comparison. With n
seeds the signed-rank test cannot give p below 2 / 2^n (0.5 at 2 seeds, 0.0625 at 5, 0.031 at 6): at small n
read the interval of the paired difference, not p alone.

Each function is one section of `notebooks/05_segmentation_augmentation.py`:

    inputs = locate_inputs(runs_root); inputs_table(inputs)
    config, seeds = seg_config(profile), training_seeds(profile, seed, n_seeds)
    res, syn, balance = run_experiment(inputs.dataset, run_dir, tag="phantom", models=inputs.models,
                                       config=config, seeds=seeds, seed=seed, mix_ratio=mix_ratio)
    syn.report; balance                                   # mask synthesis and the control's class balance
    real, real_syn, real_balance = run_experiment(inputs.real_dataset, run_dir, tag="real",
                                                  models=inputs.real_models, ...)    # if inputs.real_dataset
    write_chapter_metrics(run_dir, [res, real], config=config, seed=seed, synthetic=syn.sets)
    results_table(run_dir); figure_dice(run_dir); tests_table(run_dir); winners(run_dir)   # from metrics.csv
    figure_examples(res, run_dir)
    real_data_summary(real); results_table(run_dir, "real"); figure_dice(run_dir, "real")
    export_nnunet_example(inputs.dataset, syn.sets["+difflung"], run_dir)

Numbers go to `<run_dir>/metrics.csv` (column `dataset`: phantom or real; per-seed Dice rows with metric
`dice`, aggregates over seeds with seed = -1); timings, which vary from run to run, go to `timings.json`, so
metrics.csv is byte-identical for a given seed on CPU. Per-slice Dice: `<run_dir>/<dataset>/dice_per_slice.csv`.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .. import labels as L
from ..dataset import Dataset, Slices
from ..evaluation import dice_per_class, mean_ci, paired_test
from ..metrics import read_metrics, write_metrics
from ..plots import legend_handles, plt, save_figure, show_ct
from ..reported import LABEL, SEGMENTATION_DICE
from ..provenance import atomic_path, provenance, resolve_device, sha256_file, write_json_atomic
from . import phantom_dataset_dir, real_dataset_dir
from ..segmentation import SegConfig, train_segmenter

ARMS = ("ref", "oversample", "+segguided", "+difflung")
ARM_NAMES = {"ref": "ref-UNet", "oversample": "oversample-UNet", "+segguided": "Seg-Guided-UNet",
             "+difflung": "DiffLung-UNet"}
SYNTHETIC_ARMS = ("+segguided", "+difflung")
TABLE_CLASSES = ("lung", "emphysema", "fibrosis", "ggo")  # the poster's "healthy" is healthy lung parenchyma
TABLE_HEADERS = {"lung": "Dice healthy", "emphysema": "Dice emphysema", "fibrosis": "Dice fibrosis", "ggo": "Dice GGO"}
RARE_DEFAULT = ("emphysema", "ggo", "fibrosis")
POSTER = SEGMENTATION_DICE  # the poster's rows (healthy = lung), shown as reported, never as ours
REPORTED = LABEL


# Segmentation model per profile: tiny and CPU-fast for smoke (32 px), MONAI's usual 4-level UNet for standard
# (128 px), one level deeper and wider for paper (256 px). Steps are optimisation steps, the same for every arm.
SEG_PRESETS = {
    "smoke": SegConfig(channels=(8, 16, 32), strides=(2, 2), num_res_units=1, steps=200, batch_size=16, lr=1e-2),
    "standard": SegConfig(channels=(16, 32, 64, 128), strides=(2, 2, 2), num_res_units=2, steps=3000,
                          batch_size=16, lr=3e-3),
    "paper": SegConfig(channels=(32, 64, 128, 256, 320), strides=(2, 2, 2, 2), num_res_units=2, steps=8000,
                       batch_size=16, lr=3e-3),
}
# Training seeds per arm. The signed-rank test over n seeds cannot reach p < 0.05 below n = 6 (2 / 2^5 = 0.0625).
MIN_SEEDS = {"smoke": 2, "standard": 5, "paper": 5}


def seg_config(profile: str, **overrides) -> SegConfig:
    """The profile's segmentation model and budget (`SEG_PRESETS`), with `overrides` (e.g. steps=500)."""
    if profile not in SEG_PRESETS:
        raise ValueError(f"profile {profile!r}: expected one of {sorted(SEG_PRESETS)}")
    return replace(SEG_PRESETS[profile], **overrides)


def training_seeds(profile: str, seed: int, n_seeds: int) -> list[int]:
    """seed, seed + 1, ..., seed + n_seeds - 1; at least `MIN_SEEDS[profile]` of them."""
    if n_seeds < MIN_SEEDS.get(profile, 2):
        raise ValueError(f"profile {profile!r} needs at least {MIN_SEEDS.get(profile, 2)} training seeds per arm "
                         f"for its confidence intervals, got n_seeds={n_seeds}")
    return list(range(seed, seed + n_seeds))



# ---------------------------------------------------------------------------------------------------------------
# inputs

@dataclass
class Inputs:
    dataset: Path  # phantom dataset artifact
    models: dict[str, Path]  # synthetic arm -> diffusion model folder
    real_dataset: Path | None = None  # real CT dataset artifact, if chapter 1 wrote one
    real_models: dict[str, Path] = field(default_factory=dict)  # diffusion models trained on the real CT


def locate_inputs(runs_root, *, dataset=None, models: dict | None = None, real_dataset=None,
                  real_models: dict | None = None) -> Inputs:
    """Find the upstream artifacts of a run; explicit paths override the run layout.

    Defaults: `<runs_root>/01_data_preparation/dataset` (phantom), `.../real_dataset` (real CT, optional),
    `<runs_root>/03_cbmat_training/model` (Diff-Lung CBMAT) and `<runs_root>/04_baseline_comparison/models/segguided`
    (Seg-Guided Diffusion). A missing model is an error naming the chapter that writes it; `models={}` runs
    without synthetic arms.
    """
    root = Path(runs_root)
    ds = Path(dataset) if dataset is not None else phantom_dataset_dir(root)
    Dataset(ds)  # clear error if missing or malformed
    producers = {"+difflung": root / "03_cbmat_training" / "model",
                 "+segguided": root / "04_baseline_comparison" / "models" / "segguided"}
    chosen = {arm: Path(p) for arm, p in (producers if models is None else models).items()}
    for arm, p in chosen.items():
        if arm not in SYNTHETIC_ARMS:
            raise ValueError(f"models: unknown arm {arm!r}; synthetic arms are {SYNTHETIC_ARMS}")
        if not (p / "difflung_config.json").is_file():
            where = {"+difflung": "chapter 3 (03_cbmat_training)", "+segguided": "chapter 4 (04_baseline_comparison)"}
            raise FileNotFoundError(f"{p}: no finished diffusion model for arm {arm} (no difflung_config.json); "
                                    f"run {where[arm]} first or pass models={{'{arm}': PATH}}")
    if real_dataset is not None:
        real = Path(real_dataset)
        Dataset(real)  # clear error if missing
    else:  # chapter 1's worked example writes real_dataset; dataset_real is accepted too
        found = [p for p in (real_dataset_dir(root), root / "01_data_preparation" / "dataset_real")
                 if (p / "manifest.json").is_file()]
        real = found[0] if found else None
    return Inputs(ds, chosen, real, {k: Path(v) for k, v in (real_models or {}).items()})


def inputs_table(inputs: Inputs) -> pd.DataFrame:
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
        rows.append({"input": f"diffusion model for {arm}", "path": str(p),
                     "detail": f"mask {meta.get('mask_mode', tc.get('mask_mode'))}, ablation "
                               f"{tc.get('strategy', meta.get('ablation', {}).get('strategy', '?'))}, "
                               f"preset {tc.get('preset', '?')}, {tc.get('steps', '?')} steps"})
    rows.append({"input": "real CT dataset", "path": str(inputs.real_dataset or "-"),
                 "detail": "absent: the real-data section is skipped" if inputs.real_dataset is None else
                 ", ".join(L.names(Dataset(inputs.real_dataset).classes))})
    return pd.DataFrame(rows).set_index("input")


# ---------------------------------------------------------------------------------------------------------------
# synthetic sets and the oversampling control

def rare_ids(classes, rare_classes=None) -> list[int]:
    """Project ids of `rare_classes` (names or ids) that the dataset has; None: the poster's three
    (emphysema, GGO, fibrosis) if the dataset has any, else every in-lung pathology class it has (a real CT's
    lesion class, e.g. nodule)."""
    if rare_classes is None:
        found = rare_ids(classes, RARE_DEFAULT)
        return found or [c for c in classes if L.BY_ID[c].pathology and L.BY_ID[c].in_lung]
    wanted = {L.class_id(c) for c in rare_classes}
    return [c for c in classes if c in wanted]


def synthesize_masks(train: Slices, classes, rare: list[int], n: int, seed: int, boost: float | dict = 0.15):
    """`n` new masks from the training masks with rare-class lesions pasted into healthy lung
    (`difflung.masksynth`), each boosted class up to `boost` of the lung field (a float for all, or a dict).

    Returns the `MaskSynthesis` (labels (n, S, S), source_index, report of pixel counts before/after).
    """
    from ..masksynth import synthesize_masks as _synth

    targets = {L.BY_ID[c].name: (boost if not isinstance(boost, dict) else boost[L.BY_ID[c].name]) for c in rare
               if not isinstance(boost, dict) or L.BY_ID[c].name in boost}
    out = _synth(np.asarray(train.labels, dtype=np.uint8), targets, np.random.default_rng(seed), n)
    if out.labels.shape != (n,) + train.labels.shape[1:]:
        raise ValueError(f"mask synthesis returned {out.labels.shape}, expected {(n,) + train.labels.shape[1:]}")
    bad = sorted(set(np.unique(out.labels).tolist()) - set(classes))
    if bad:
        raise ValueError(f"mask synthesis produced label values {bad} outside the dataset's classes {list(classes)}")
    return out


@dataclass
class SyntheticSet:
    name: str  # arm
    images: np.ndarray  # (n, S, S) float32 in [-1, 1]
    labels: np.ndarray  # (n, S, S) uint8 project ids
    model_dir: Path
    seconds: float
    images_per_s: float


@dataclass
class Synthesis:
    masks: np.ndarray  # (n, S, S) the synthesised masks every synthetic arm paints
    report: pd.DataFrame  # mask synthesis: rare-class pixels before and after, per class
    sets: dict[str, SyntheticSet]  # arm -> images painted by that arm's diffusion model


def paint_masks(models: dict, dataset: Dataset, masks: np.ndarray, run_dir, *, seed: int, tag: str,
                sampler: str = "ddim", steps: int | None = 20, batch_size: int = 32, device: str = "auto",
                progress: bool = False) -> dict[str, SyntheticSet]:
    """Generate one image per mask with each diffusion model (the same masks and noise for every model).

    Each set is saved as `<run_dir>/<tag>/synthetic_<arm>.npz` (images, labels: the format
    `python -m difflung export-nnunet --synthetic` reads) with a JSON sidecar (model, sampler, provenance).
    """
    from ..diffusion.sample import sample
    from ..diffusion.train import load_model

    out, sets = Path(run_dir) / tag, {}
    for arm, model_dir in models.items():
        unet, meta = load_model(model_dir, dataset=dataset, device=resolve_device(device))
        t0 = time.perf_counter()
        images = sample(unet, meta, masks, generator=torch.Generator().manual_seed(seed), sampler=sampler,
                        steps=steps, batch_size=batch_size, progress=progress)
        dt = time.perf_counter() - t0
        sets[arm] = SyntheticSet(arm, images, masks, Path(model_dir), dt, len(masks) / dt)
        path = out / f"synthetic_{arm.lstrip('+')}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, images=images, labels=masks)
        write_json_atomic(path.with_suffix(".json"), {
            "model_dir": str(model_dir), "model_config_sha256": sha256_file(Path(model_dir) / "difflung_config.json"),
            "sampler": sampler, "steps": steps, "n": len(masks),
            "provenance": provenance(config={"sampler": sampler, "steps": steps}, seed=seed, device=resolve_device(device))})
    return sets


def make_synthetic_sets(inputs: Inputs, run_dir, *, mix_ratio: float, seed: int, rare_classes=None,
                        boost: float | dict = 0.15, sampler: str = "ddim", steps: int | None = 20,
                        batch_size: int = 32, device: str = "auto", tag: str = "phantom",
                        progress: bool = False) -> Synthesis:
    """Synthesise `round(mix_ratio * n_train)` masks once (`synthesize_masks`), then paint them with every
    diffusion model of `inputs.models` (`paint_masks`)."""
    ds = Dataset(inputs.dataset)
    train = ds.split("train")
    n = n_extra(mix_ratio, len(train))
    ms = synthesize_masks(train, ds.classes, rare_ids(ds.classes, rare_classes), n, seed, boost)
    sets = paint_masks(inputs.models, ds, ms.labels, run_dir, seed=seed, tag=tag, sampler=sampler, steps=steps,
                       batch_size=batch_size, device=device, progress=progress)
    return Synthesis(ms.labels, ms.report, sets)


def n_extra(mix_ratio: float, n_real: int) -> int:
    """Extra (synthetic or oversampled) images for `n_real` real training slices."""
    n = int(round(mix_ratio * n_real))
    if n < 1:
        raise ValueError(f"mix_ratio {mix_ratio} gives no extra image for {n_real} training slices")
    return n


def balance_weights(a: np.ndarray, t: np.ndarray, rel_tol: float = 0.02) -> np.ndarray:
    """Weights w on the simplex with a.T @ w ~= t, as spread out as the tolerance allows.

    a: (J, K) per-slice pixel fraction of each of K classes; t: (K,) target fractions. Ridge-regularised
    non-negative least squares on relative errors (sum(w) = 1 enforced by a heavily weighted row), with the
    largest ridge whose worst relative error stays within `rel_tol` -- a large ridge spreads weight over many
    slices, none piles it on the few that match exactly. If no weighting reaches the tolerance, the closest.
    """
    from scipy.optimize import nnls

    J, K = a.shape
    scale = np.maximum(t, np.maximum(a.mean(0), 1e-6))
    A, b = (a / scale).T, t / scale  # (K, J), (K,): relative errors
    w = np.full(J, 1.0 / J)
    for mu in (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4, 0.0):
        M = np.vstack([A, np.sqrt(mu) * np.eye(J), 1e3 * np.ones((1, J))])
        w, _ = nnls(M, np.r_[b, np.zeros(J), 1e3], maxiter=50 * J)
        w = w / w.sum()
        if np.abs(A @ w - b).max() <= rel_tol:
            break
    return w


def oversample_indices(labels: np.ndarray, target: np.ndarray | None, rare: list[int], n: int,
                       rng: np.random.Generator) -> np.ndarray:
    """Indices of `n` real slices (with repeats) whose rare-class pixel fractions match those of `target`.

    Candidates are the slices holding any rare class, weighted by `balance_weights` to the target masks'
    mean per-class fractions, and drawn by systematic sampling (one uniform offset from `rng`), so the drawn
    set follows the weights closely even for small n. `class_balance_table` shows what was achieved. With no
    target (no synthetic masks), candidates are drawn uniformly.
    """
    cand = np.flatnonzero(np.isin(labels, rare).any((1, 2)))
    if len(cand) == 0:
        raise ValueError(f"no training slice holds any of {L.names(rare)}: nothing to oversample")
    if target is None:
        return cand[rng.choice(len(cand), size=n, replace=True)]
    a = np.stack([(labels[cand] == c).mean((1, 2)) for c in rare], 1)  # (J, K) per-slice fractions
    t = np.array([(target == c).mean() for c in rare])  # (K,)
    w = balance_weights(a, t)
    pos = (rng.random() + np.arange(n)) / n  # systematic sampling
    pick = np.minimum(np.searchsorted(np.cumsum(w), pos, side="right"), len(cand) - 1)
    return cand[pick]


@dataclass
class Arm:
    name: str
    images: np.ndarray  # (N, S, S) real + extra
    labels: np.ndarray
    n_real: int
    n_extra: int


def build_arms(train: Slices, n: int, masks: np.ndarray | None, synthetic: dict[str, SyntheticSet], *,
               rare: list[int], seed: int, arms=ARMS) -> dict[str, Arm]:
    """The training set of each arm: real; real + `n` oversampled real slices (matched to `masks`' class
    balance when given); real + each synthetic set (of `n` images)."""
    out = {}
    for name in arms:
        if name == "ref":
            out[name] = Arm(name, train.images, train.labels, len(train), 0)
        elif name == "oversample":
            idx = oversample_indices(train.labels, masks, rare, n, np.random.default_rng(seed))
            out[name] = Arm(name, np.concatenate([train.images, train.images[idx]]),
                            np.concatenate([train.labels, train.labels[idx]]), len(train), n)
        elif name in synthetic:
            s = synthetic[name]
            if len(s.images) != n:
                raise ValueError(f"arm {name}: {len(s.images)} synthetic images, expected {n} like the other arms")
            out[name] = Arm(name, np.concatenate([train.images, s.images]),
                            np.concatenate([train.labels, s.labels]), len(train), n)
    return out


def class_balance_table(arms: dict[str, Arm], rare: list[int], masks: np.ndarray | None = None) -> pd.DataFrame:
    """Per training set: images and each rare class's share of all pixels (%), and the same for the extra
    images alone -- the check that `oversample` adds as many rare-class pixels as the synthetic arms."""
    rows = []
    sets = [(ARM_NAMES.get(a.name, a.name), a.labels) for a in arms.values()]
    if "oversample" in arms:
        sets.append(("oversampled extra alone", arms["oversample"].labels[arms["oversample"].n_real:]))
    if masks is not None:
        sets.append(("synthetic masks alone", masks))
    for name, lab in sets:
        distinct = len(np.unique(lab.reshape(len(lab), -1), axis=0)) if len(lab) else 0
        rows.append({"training set": name, "images": len(lab), "distinct masks": distinct,
                     **{f"{L.BY_ID[c].name} %": 100 * float((lab == c).mean()) for c in rare}})
    return pd.DataFrame(rows).set_index("training set")


# ---------------------------------------------------------------------------------------------------------------
# training and evaluation

@dataclass
class Results:
    tag: str  # "phantom" or "real"
    classes: list[int]
    seeds: list[int]
    dice: pd.DataFrame  # per slice: arm, seed, image, class, class_id, dice
    per_seed: pd.DataFrame  # arm, seed, class, dice (mean over slices), n_slices
    test: Slices
    example_idx: np.ndarray
    examples: dict[str, np.ndarray]  # arm -> (k, S, S) predictions of the first seed on example_idx
    timings: list[dict]
    n_extra: int
    notes: list[str] = field(default_factory=list)


def example_slices(test: Slices, rare: list[int], k: int = 4) -> np.ndarray:
    """The `k` test slices with most rare-class pixels (ties by index): the same slices for every arm."""
    score = np.isin(test.labels, rare).sum((1, 2)) if rare else np.zeros(len(test))
    return np.sort(np.argsort(-score, kind="stable")[:k])


def per_seed_dice(dice: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, seed, class): the mean per-slice Dice over test slices (NaN slices skipped) and their number."""
    g = dice.groupby(["arm", "seed", "class"], sort=True)["dice"]
    return pd.DataFrame({"dice": g.mean(), "n_slices": g.count()}).reset_index()


def train_and_evaluate(arms: dict[str, Arm], test: Slices, classes, config: SegConfig, seeds, run_dir, *,
                       tag: str = "phantom", rare: list[int] = (), device: str = "auto", n_examples: int = 4,
                       save_models: bool = True, progress: bool = False) -> Results:
    """Train every arm with every seed (same config, steps and seeds), predict the test slices, score Dice.

    Seed s gives every arm the same generator, hence the same initial weights and augmentation stream.
    The first seed's segmenter of each arm is saved under `<run_dir>/<tag>/segmenters/<arm>`.
    """
    out = Path(run_dir) / tag
    dev = resolve_device(device)
    ex = example_slices(test, list(rare), n_examples)
    frames, timings, examples = [], [], {}
    for name, arm in arms.items():
        for s in seeds:
            seg = train_segmenter(arm.images, arm.labels, classes, config, torch.Generator().manual_seed(int(s)),
                                  device=dev, progress=progress)
            t0 = time.perf_counter()
            pred = seg.predict(test.images)
            timings.append({"dataset": tag, "arm": name, "seed": int(s), "train_s": seg.info["wall_s"],
                            "train_images_per_s": seg.info["images_per_s"],
                            "predict_s": round(time.perf_counter() - t0, 3), "n_train": len(arm.images)})
            d = dice_per_class(pred, test.labels, classes)
            d.insert(0, "seed", int(s))
            d.insert(0, "arm", name)
            frames.append(d)
            if s == seeds[0]:
                examples[name] = pred[ex]
                if save_models:
                    seg.save(out / "segmenters" / name.lstrip("+"))
    dice = pd.concat(frames, ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "dice_per_slice.csv") as tmp:
        dice.to_csv(tmp, index=False, float_format="%.6g")
    n_extra = max((a.n_extra for a in arms.values()), default=0)
    return Results(tag, list(classes), [int(s) for s in seeds], dice, per_seed_dice(dice), test, ex, examples,
                   timings, n_extra)


# ---------------------------------------------------------------------------------------------------------------
# statistics, metrics, tables

def compare_to_ref(res: Results, ref: str = "ref") -> pd.DataFrame:
    """Per class and arm: mean Dice over seeds with its 95% CI, the paired difference to `ref` with its CI,
    the Wilcoxon signed-rank p over seeds (primary) and the rank-sum p over slices (secondary)."""
    ps, rows = res.per_seed, []
    slice_mean = res.dice.groupby(["arm", "class", "image"])["dice"].mean()  # per slice, averaged over seeds
    for cls in sorted(ps["class"].unique()):
        r = ps[(ps["class"] == cls) & (ps.arm == ref)].set_index("seed")["dice"]
        for arm in ps.arm.unique():
            a = ps[(ps["class"] == cls) & (ps.arm == arm)].set_index("seed")["dice"].reindex(r.index)
            m, lo, hi = mean_ci(a)
            row = {"class": cls, "arm": arm, "mean": m, "lo": lo, "hi": hi, "n_seeds": int(a.notna().sum()),
                   "n_slices": int(res.per_seed[(ps["class"] == cls) & (ps.arm == arm)]["n_slices"].max())}
            if arm != ref:
                dm, dlo, dhi = mean_ci(a.values - r.values)
                w = paired_test(a.values, r.values, "wilcoxon")
                rs = paired_test(slice_mean.get((arm, cls), pd.Series(dtype=float)).values,
                                 slice_mean.get((ref, cls), pd.Series(dtype=float)).values, "ranksum")
                row.update(delta=dm, delta_lo=dlo, delta_hi=dhi, p_wilcoxon=w.p, p_ranksum=rs.p)
            rows.append(row)
    cols = ["class", "arm", "mean", "lo", "hi", "n_seeds", "n_slices", "delta", "delta_lo", "delta_hi",
            "p_wilcoxon", "p_ranksum"]
    return pd.DataFrame(rows).reindex(columns=cols)


def metric_rows(res: Results) -> list[dict]:
    """Tidy rows: per-seed Dice (metric dice), and aggregates over seeds (seed = -1)."""
    rows = [{"model": r.arm, "metric": "dice", "class": r["class"], "seed": r.seed, "value": r.dice,
             "dataset": res.tag} for _, r in res.per_seed.iterrows()]
    agg = {"mean": "dice_mean", "lo": "dice_lo", "hi": "dice_hi", "n_seeds": "n_seeds", "n_slices": "n_slices",
           "delta": "delta_vs_ref", "delta_lo": "delta_vs_ref_lo", "delta_hi": "delta_vs_ref_hi",
           "p_wilcoxon": "p_wilcoxon_seeds_vs_ref", "p_ranksum": "p_ranksum_slices_vs_ref"}
    for _, r in compare_to_ref(res).iterrows():
        for col, metric in agg.items():
            if r.arm == "ref" and col.startswith(("delta", "p_")):
                continue
            rows.append({"model": r.arm, "metric": metric, "class": r["class"], "seed": -1,
                         "value": float(r[col]), "dataset": res.tag})
    rows.append({"model": "all", "metric": "n_test_slices", "class": "all", "seed": -1, "value": len(res.test),
                 "dataset": res.tag})
    for c in res.classes:  # truth pixels per class in the test slices: 0 means Dice can only be 0 (false positives)
        rows.append({"model": "all", "metric": "test_pixels", "class": L.BY_ID[c].name, "seed": -1,
                     "value": int((res.test.labels == c).sum()), "dataset": res.tag})
    rows.append({"model": "all", "metric": "n_test_patients", "class": "all", "seed": -1,
                 "value": len(set(res.test.patient.tolist())), "dataset": res.tag})
    rows.append({"model": "all", "metric": "n_extra_images", "class": "all", "seed": -1, "value": res.n_extra,
                 "dataset": res.tag})
    return rows


def write_chapter_metrics(run_dir, results: list[Results], *, config: SegConfig, seed: int,
                          synthetic: dict[str, SyntheticSet] | None = None, extra: dict | None = None) -> Path:
    """metrics.csv (deterministic numbers only) + timings.json (wall times, images/s, provenance)."""
    rows = [row for r in results for row in metric_rows(r)]
    path = write_metrics(run_dir, rows)
    timings = {"segmentation": [t for r in results for t in r.timings],
               "synthesis": {arm: {"seconds": s.seconds, "images_per_s": s.images_per_s, "n": len(s.images)}
                             for arm, s in (synthetic or {}).items()},
               "provenance": provenance(config={"segmentation": asdict(config), **(extra or {})}, seed=seed)}
    write_json_atomic(Path(run_dir) / "timings.json", timings)
    return path


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


def results_table(run_dir, dataset: str = "phantom", classes=None, with_poster: bool | None = None) -> pd.DataFrame:
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
            row = {"model": ARM_NAMES[arm], "source": REPORTED, "seeds": "not stated"}
            for c in classes:
                row[TABLE_HEADERS.get(c, f"Dice {c}")] = f"{vals[c]:.2f}" if c in vals else "not reported"
            rows.append(row)
    return pd.DataFrame(rows).set_index(["model", "source"])


def tests_table(run_dir, dataset: str = "phantom", classes=None) -> pd.DataFrame:
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


def winners(run_dir, dataset: str = "phantom", classes=None, alpha: float = 0.05) -> pd.DataFrame:
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
                     key=lambda a: ARMS.index(a) if a in ARMS else len(ARMS))
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
        axes[1].set_title(f"{REPORTED}: no seeds or CI given", fontsize=10)
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
# the experiment, end to end (one call per dataset)

def run_experiment(dataset, run_dir, *, tag: str, models: dict, config: SegConfig, seeds, seed: int,
                   mix_ratio: float, rare_classes=None, boost: float | dict = 0.15, sampler: str = "ddim",
                   sample_steps: int | None = 20, device: str = "auto", eval_splits=("test",), n_examples: int = 4,
                   progress: bool = False) -> tuple[Results, Synthesis, pd.DataFrame]:
    """Synthesise masks and images, build the arms, train and score them on one dataset.

    Args:
        dataset: dataset artifact (phantom or real CT).
        run_dir: the chapter's run folder; outputs go to `<run_dir>/<tag>/`.
        tag: "phantom" or "real" (the `dataset` column of metrics.csv).
        models: synthetic arm -> diffusion model folder trained on this dataset; arms without one are left out,
            `ref` and `oversample` always run.
        config: the segmentation model and its number of steps, the same for every arm.
        seeds: training seeds (each arm trains once per seed).
        seed: seeds mask synthesis, image sampling and the oversampling draw.
        mix_ratio: extra images per real training image (synthetic or oversampled).
        rare_classes: classes to boost; None: emphysema/GGO/fibrosis, or the dataset's lesion classes.
        boost: target fraction of the lung field per boosted class in each synthetic mask.
        sampler, sample_steps: diffusion sampler and its steps.
        eval_splits: held-out splits to score on (no step of this chapter uses them otherwise).
    Returns:
        (results, synthesis, class-balance table). If masks cannot be synthesised (too few lesion pixels in the
        training split) and no model needs them, `oversample` repeats rare-class slices uniformly and
        `results.notes` says so.
    """
    ds = Dataset(dataset)
    rare = rare_ids(ds.classes, rare_classes)
    if not rare:
        raise ValueError(f"{ds.root}: has no rare class to study (classes: {L.names(ds.classes)})")
    train = ds.split("train")
    n = n_extra(mix_ratio, len(train))
    notes = []
    try:
        ms = synthesize_masks(train, ds.classes, rare, n, seed, boost)
        masks, report = ms.labels, ms.report
    except ValueError as e:
        if models:
            raise ValueError(f"{ds.root}: cannot synthesise masks for the synthetic arms ({e})") from e
        masks, report = None, pd.DataFrame()
        notes.append(f"no masks synthesised ({e}); oversample repeats rare-class slices uniformly")
    sets = paint_masks(dict(models), ds, masks, run_dir, seed=seed, tag=tag, sampler=sampler, steps=sample_steps,
                       device=device, progress=progress) if models else {}
    arms = build_arms(train, n, masks, sets, rare=rare, seed=seed,
                      arms=[a for a in ARMS if a in ("ref", "oversample") or a in sets])
    missing = [a for a in SYNTHETIC_ARMS if a not in sets]
    if missing:
        notes.append(f"arms {', '.join(missing)} not run: no diffusion model trained on this dataset was given")
    balance = class_balance_table(arms, rare, masks)
    parts = [ds.split(s) for s in eval_splits]
    test = Slices(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("images", "labels", "patient", "z")))
    res = train_and_evaluate(arms, test, ds.classes, config, list(seeds), run_dir, tag=tag, rare=rare,
                             device=device, n_examples=n_examples, progress=progress)
    res.notes = notes
    return res, Synthesis(masks, report, sets), balance


def real_data_summary(res: Results) -> pd.DataFrame:
    """The real-CT experiment with its size stated by the numbers: n test slices/patients and CI width."""
    t = compare_to_ref(res)
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
