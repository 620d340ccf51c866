"""Segmentation augmentation: does extra (synthetic or oversampled) training data lift rare-class Dice?

An experiment compares *arms*, each the same MONAI UNet (`difflung.segmentation`) trained for the same number
of steps with the same seeds on a different training set, scored on the held-out test slices:

    ref          real training slices only
    oversample   real + `n_extra` real slices with rare classes, drawn so that the extra set has the rare-class
                 balance of the synthetic masks: the control for "more rare-class pixels" without new images
    +segguided   real + `n_extra` synthetic pairs: synthesised masks, images by Segmentation-Guided Diffusion
    +difflung    real + the same `n_extra` synthesised masks, images by Diff-Lung (CBMAT)

`ARMS` is the registry: a new arm is one `ArmSpec` entry. `n_extra = round(mix_ratio * n_real)`; batches draw
uniformly from real + extra, so on average a fraction mix_ratio / (1 + mix_ratio) of each batch is extra. The
synthetic arms paint the same masks, so they differ only in the generator. One synthetic set per generator is
drawn (from the experiment's seed) and shared by all training seeds: seeds capture training variance, not the
variance of drawing another synthetic set.

Statistics: the unit of replication is the training seed. Per seed, the Dice of a class is the mean over test
slices of per-slice Dice (`evaluation.dice_per_class`); seed s of every arm shares its initial weights and
augmentation stream with seed s of every other arm, so arms are compared by paired tests over seeds
(`stats.compare_to_reference` -> `stats.compare_seeds`): an interval only from `stats.MIN_SEEDS` seeds
(bounded bootstrap), Holm across the chapter's comparisons and the book's one verdict rule (`judge_arms`).
A comparison is *not measurable* when its class is absent from the test truth or lost its HU signature at the run's
size (`class_measurability`), or when a synthetic arm's generator did not meet its convergence criteria
(`arm_convergence`, from the producing chapter's `criteria.json`).
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from difflung import labels as L
from difflung.core import runs
from difflung.judging import stats
from difflung.data.dataset import Dataset, Slices
from difflung.judging.metrics import dice_per_class
from difflung.judging.stats import compare_to_reference
from difflung.generators import load_generator
from difflung.core.parallel import run_jobs
from difflung.core.provenance import atomic_path, provenance, resolve_device, sha256_file, write_json_atomic
from difflung.segmentation import SegConfig, fit_segmenter, train_segmenter


# ---------------------------------------------------------------------------------------------------------------
# the arms

@dataclass(frozen=True)
class ArmSpec:
    key: str  # the key stored in metrics.csv
    label: str  # display name in tables and figures
    # what is added to the real slices: "none", "oversample", "synthetic" (whole slices painted from the synthesised
    # masks) or "insert" (the masks' new lesions inserted into their own real base slices, background kept exact)
    extra: str
    model: str | None = None  # synthetic arms: the generator's folder inside a run (runs/<profile>/...)
    producer: str | None = None  # the chapter that writes `model`, named in the error when it is missing
    criteria: str | None = None  # synthetic arms: the chapter folder whose criteria.json judges the generator
    generator: str | None = None  # the generator's key in that criteria.json


ARMS = {a.key: a for a in (
    ArmSpec("ref", "ref-UNet", "none"),
    ArmSpec("oversample", "oversample-UNet", "oversample"),
    ArmSpec("+segguided", "Seg-Guided-UNet", "synthetic", f"{runs.BASELINE_COMPARISON}/models/segguided",
            f"chapter 4 ({runs.BASELINE_COMPARISON})", runs.BASELINE_COMPARISON, "segguided"),
    ArmSpec("+difflung", "DiffLung-UNet", "synthetic", f"{runs.CBMAT_TRAINING}/model",
            f"chapter 3 ({runs.CBMAT_TRAINING})", runs.CBMAT_TRAINING, "difflung"),
    ArmSpec("+insert", "Insert-UNet", "insert", f"{runs.CBMAT_TRAINING}/model",
            f"chapter 3 ({runs.CBMAT_TRAINING})", runs.CBMAT_TRAINING, "difflung"),
)}
ARM_NAMES = {k: a.label for k, a in ARMS.items()}
SYNTHETIC_ARMS = tuple(k for k, a in ARMS.items() if a.extra in ("synthetic", "insert"))  # arms with a generator
RARE_DEFAULT = ("emphysema", "ggo", "fibrosis")  # the poster's rare classes


def arm_order(key: str) -> int:
    """Sort key: registry order, unknown arms last."""
    return list(ARMS).index(key) if key in ARMS else len(ARMS)


def arm_label(key: str) -> str:
    """Display name of an arm (its key if it is not in the registry)."""
    return ARMS[key].label if key in ARMS else key


def training_seeds(seed: int, n_seeds: int, min_seeds: int = 2) -> list[int]:
    """seed, seed + 1, ..., seed + n_seeds - 1; an error below `min_seeds` (the profile's floor of seeds per arm;
    intervals need `stats.MIN_SEEDS` whatever the floor)."""
    if n_seeds < min_seeds:
        raise ValueError(f"n_seeds={n_seeds}: the profile asks for at least min_seeds={min_seeds} training seeds "
                         f"per arm")
    return list(range(seed, seed + n_seeds))


# ---------------------------------------------------------------------------------------------------------------
# mask synthesis for the synthetic arms

def rare_ids(classes, rare_classes=None) -> list[int]:
    """Project ids of `rare_classes` (names or ids) that the dataset has; None: the poster's three
    (emphysema, GGO, fibrosis) if the dataset has any, else every in-lung pathology class it has (a real CT's
    lesion class, e.g. nodule)."""
    if rare_classes is None:
        found = rare_ids(classes, RARE_DEFAULT)
        return found or [c for c in classes if L.BY_ID[c].pathology and L.BY_ID[c].in_lung]
    wanted = {L.class_id(c) for c in rare_classes}
    return [c for c in classes if c in wanted]


def n_extra(mix_ratio: float, n_real: int) -> int:
    """Extra (synthetic or oversampled) images for `n_real` real training slices."""
    n = int(round(mix_ratio * n_real))
    if n < 1:
        raise ValueError(f"mix_ratio {mix_ratio} gives no extra image for {n_real} training slices")
    return n


def synthesize_masks(train: Slices, classes, rare: list[int], n: int, seed: int, boost: float | dict):
    """`n` new masks from the training masks with rare-class lesions pasted into healthy lung
    (`difflung.data.masksynth`), each boosted class up to `boost` of the lung field (a float for all, or a dict).

    Returns the `MaskSynthesis` (labels (n, S, S), source_index, report of pixel counts before/after).
    """
    from difflung.data.masksynth import synthesize_masks as _synth

    targets = {L.BY_ID[c].name: (boost if not isinstance(boost, dict) else boost[L.BY_ID[c].name]) for c in rare
               if not isinstance(boost, dict) or L.BY_ID[c].name in boost}
    out = _synth(np.asarray(train.labels, dtype=np.uint8), targets, np.random.default_rng(seed), n)
    if out.labels.shape != (n,) + train.labels.shape[1:]:
        raise ValueError(f"mask synthesis returned {out.labels.shape}, expected {(n,) + train.labels.shape[1:]}")
    bad = sorted(set(np.unique(out.labels).tolist()) - set(classes))
    if bad:
        raise ValueError(f"mask synthesis produced label values {bad} outside the dataset's classes {list(classes)}")
    return out


# ---------------------------------------------------------------------------------------------------------------
# painting masks with generators

def describe_generator(model_dir) -> str:
    """One line on a generator folder for the reader: mask encoding, ablation strategy, preset, training steps."""
    import json

    meta = json.loads((Path(model_dir) / "difflung_config.json").read_text())
    tc = meta.get("train_config", {})
    return (f"mask {meta.get('mask_mode', tc.get('mask_mode'))}, ablation "
            f"{tc.get('strategy', meta.get('ablation', {}).get('strategy', '?'))}, "
            f"preset {tc.get('preset', '?')}, {tc.get('steps', '?')} steps")


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
    masks: np.ndarray | None  # (n, S, S) the synthesised masks every synthetic arm paints
    report: pd.DataFrame  # mask synthesis: rare-class pixels before and after, per class
    sets: dict[str, SyntheticSet]  # arm -> images painted by that arm's generator


def paint_masks(models: dict, dataset: Dataset, masks: np.ndarray, run_dir, *, seed: int, tag: str,
                sampler: str = "ddim", steps: int | None = None, batch_size: int = 32, device: str = "auto",
                progress: bool = False) -> dict[str, SyntheticSet]:
    """Generate one image per mask with each generator (the same masks and initial noise for every one).

    Args:
        models: arm -> generator folder.
        masks: (n, S, S) project-id masks.
        seed: seeds the initial noise (`torch.Generator().manual_seed(seed)` for each model).
        tag: sub-folder of `run_dir` (the dataset: phantom or real).
        sampler, steps: the diffusion sampler and its number of steps.
    Returns:
        arm -> SyntheticSet. Each set is saved as `<run_dir>/<tag>/synthetic_<arm>.npz` (images, labels: the
        format `python -m difflung export-nnunet --synthetic` reads) with a JSON sidecar (model, sampler,
        provenance).
    """
    out, sets, dev = Path(run_dir) / tag, {}, resolve_device(device)
    for arm, model_dir in models.items():
        painter = load_generator(model_dir, device=dev, sampler=sampler, sampler_steps=steps, dataset=dataset)
        t0 = time.perf_counter()
        images = painter.sample(masks, generator=torch.Generator().manual_seed(seed), batch_size=batch_size,
                                progress=progress)
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
            "provenance": provenance(config={"sampler": sampler, "steps": steps}, seed=seed, device=dev)})
    return sets


# ---------------------------------------------------------------------------------------------------------------
# the oversampling control

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


# ---------------------------------------------------------------------------------------------------------------
# building the arms' training sets

@dataclass
class Arm:
    name: str
    images: np.ndarray  # (N, S, S) real + extra
    labels: np.ndarray
    n_real: int
    n_extra: int


def build_arms(train: Slices, n: int, masks: np.ndarray | None, synthetic: dict[str, SyntheticSet], *,
               rare: list[int], seed: int, arms=None) -> dict[str, Arm]:
    """The training set of each arm in `arms`: real; real + `n` oversampled real slices (matched to `masks`'
    class balance when given); real + the arm's synthetic set (of `n` images). A synthetic arm without a set
    in `synthetic` is left out. `arms`: keys of `ARMS` (None: all, in registry order)."""
    out = {}
    for name in (arms if arms is not None else ARMS):
        extra = ARMS[name].extra
        if extra == "none":
            out[name] = Arm(name, train.images, train.labels, len(train), 0)
        elif extra == "oversample":
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
# training and scoring the arms over seeds

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


def _fit_and_predict(images, labels, classes, config: SegConfig, seed: int, device: str, test_images,
                     folder=None, data_sha256: str = "") -> tuple[np.ndarray, dict]:
    """One arm, one training seed: train (or reuse the segmenter `folder` holds for the same run key), predict
    the test slices. A module-level function, so `parallel.run_jobs` can run it in a worker process."""
    if folder is None:
        seg = train_segmenter(images, labels, classes, config, torch.Generator().manual_seed(int(seed)),
                              device=device, progress=False)
    else:
        seg = fit_segmenter(folder, images, labels, classes, config, int(seed), dataset_sha256=data_sha256,
                            device=device, progress=False)
    t0 = time.perf_counter()
    pred = seg.predict(test_images)
    return pred, {"train_s": seg.info["wall_s"], "train_images_per_s": seg.info["images_per_s"],
                  "predict_s": round(time.perf_counter() - t0, 3), "n_train": len(images)}


def _data_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256(np.ascontiguousarray(images, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    return h.hexdigest()


def train_and_evaluate(arms: dict[str, Arm], test: Slices, classes, config: SegConfig, seeds, run_dir, *,
                       tag: str = "phantom", rare: list[int] = (), device: str = "auto", n_examples: int = 4,
                       save_models: bool = True, workers: int = 1) -> Results:
    """Train every arm with every seed (same config, steps and seeds), predict the test slices, score Dice.

    Seed s gives every arm the same generator, hence the same initial weights and augmentation stream.
    With `save_models` each segmenter is kept under `<run_dir>/<tag>/segmenters/<arm>` (the first seed) or
    `<arm>-seed<k>`, and reused while its run key (config, classes, seed, the arm's training data) is unchanged,
    so an interrupted chapter resumes; per-slice Dice goes to `<run_dir>/<tag>/dice_per_slice.csv`. `workers` > 1
    trains that many at once, one thread each (`difflung.core.parallel`).
    """
    out = Path(run_dir) / tag
    dev = resolve_device(device)
    ex = example_slices(test, list(rare), n_examples)
    jobs = [(name, int(s)) for name in arms for s in seeds]
    sha = {name: _data_sha256(a.images, a.labels) for name, a in arms.items()} if save_models else {}
    folder = lambda name, s: (out / "segmenters" / (name.lstrip("+") + ("" if s == int(seeds[0]) else f"-seed{s}"))
                              if save_models else None)
    done = run_jobs(_fit_and_predict, [
        (arms[name].images, arms[name].labels, classes, config, s, dev, test.images, folder(name, s),
         sha.get(name, "")) for name, s in jobs], workers=workers, device=dev)
    frames, timings, examples = [], [], {}
    for (name, s), (pred, timing) in zip(jobs, done):
        timings.append({"dataset": tag, "arm": name, "seed": s, **timing})
        d = dice_per_class(pred, test.labels, classes)
        d.insert(0, "seed", s)
        d.insert(0, "arm", name)
        frames.append(d)
        if s == int(seeds[0]):
            examples[name] = pred[ex]
    dice = pd.concat(frames, ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "dice_per_slice.csv") as tmp:
        dice.to_csv(tmp, index=False, float_format="%.6g")
    n = max((a.n_extra for a in arms.values()), default=0)
    return Results(tag, list(classes), [int(s) for s in seeds], dice, per_seed_dice(dice), test, ex, examples,
                   timings, n)


def metric_rows(res: Results, *, generator: np.random.Generator) -> list[dict]:
    """Tidy rows for metrics.csv: per-seed Dice (metric dice, seed = training seed: the rows `difflung.judging.claims`
    reads), per (arm, class) the mean over seeds with its interval (seed = -1; NaN below `stats.MIN_SEEDS`
    seeds), and the test set's sizes. `generator` drives the bootstrap intervals."""
    rows = [{"model": r.arm, "metric": "dice", "class": r["class"], "seed": r.seed, "value": r.dice,
             "dataset": res.tag} for _, r in res.per_seed.iterrows()]
    scores = res.per_seed.rename(columns={"arm": "model", "dice": "value"})
    n_slices = res.per_seed.groupby(["class", "arm"])["n_slices"].max()
    for _, r in summarize_arms(scores, generator=generator).iterrows():
        vals = {"dice_mean": r["mean"], "dice_lo": r.lo, "dice_hi": r.hi, "n_seeds": r.n_seeds,
                "n_slices": n_slices[(r["class"], r.model)]}
        rows += [{"model": r.model, "metric": k, "class": r["class"], "seed": -1, "value": float(v),
                  "dataset": res.tag} for k, v in vals.items()]

    def total(metric, value, cls="all"):
        rows.append({"model": "all", "metric": metric, "class": cls, "seed": -1, "value": value, "dataset": res.tag})

    total("n_test_slices", len(res.test))
    total("image_size", res.test.labels.shape[-1])
    for c in res.classes:  # truth pixels per class in the test slices: 0 means Dice can only be 0 (false positives)
        total("test_pixels", int((res.test.labels == c).sum()), L.BY_ID[c].name)
    total("n_test_patients", len(set(res.test.patient.tolist())))
    total("n_extra_images", res.n_extra)
    return rows


# ---------------------------------------------------------------------------------------------------------------
# statistics over training seeds: summaries, validity, the chapter's comparisons

def seed_scores(metrics: pd.DataFrame, dataset: str | None = None) -> pd.DataFrame:
    """The per-seed Dice rows of a chapter-5 metrics table (metric dice, seed >= 0): model, class, seed, value."""
    m = metrics if dataset is None else metrics[metrics["dataset"] == dataset]
    m = m[(m.metric == "dice") & (m.seed >= 0)]
    return m[["model", "class", "seed", "value"]].reset_index(drop=True)


def summarize_arms(scores: pd.DataFrame, *, generator: np.random.Generator,
                   min_seeds: int = stats.MIN_SEEDS) -> pd.DataFrame:
    """Per (class, model): mean Dice over training seeds, its percentile-bootstrap interval (`stats.seed_interval`,
    inside [0, 1] by construction; NaN below `min_seeds` seeds) and the number of seeds with a score."""
    rows = []
    for (cls, arm), g in scores.groupby(["class", "model"], sort=True):
        v = g["value"].to_numpy(np.float64)
        v = v[np.isfinite(v)]
        iv = stats.seed_interval(v, generator=generator, min_seeds=min_seeds)
        rows.append({"class": cls, "model": arm, "mean": float(v.mean()) if v.size else np.nan,
                     "lo": iv.lo if iv else np.nan, "hi": iv.hi if iv else np.nan, "n_seeds": int(v.size)})
    return pd.DataFrame(rows, columns=["class", "model", "mean", "lo", "hi", "n_seeds"])


def class_measurability(runs_root, test_pixels: dict[str, float]) -> dict[str, tuple[bool, str]]:
    """class -> (measurable, reason) for this chapter's Dice: a class needs pixels in the test truth (else its
    Dice counts only false positives) and, for a pathology class, chapter 1's HU signature at the run's size
    (`instruments.read_signature`); without chapter 1's signature file a pathology class is not measurable."""
    from difflung.judging.instruments import read_signature

    try:
        sig, missing = read_signature(runs.chapter_dir(runs_root, runs.DATA_PREPARATION)), ""
    except FileNotFoundError:
        sig, missing = {}, f"HU signature not checked (no hu_signature.json from {runs.DATA_PREPARATION})"
    out = {}
    for c, n in test_pixels.items():
        if n == 0:
            out[c] = (False, f"no {c} in the test truth")
        elif missing and c in L.BY_NAME and L.BY_NAME[c].pathology:
            out[c] = (False, missing)
        else:
            out[c] = sig.get(c, (True, ""))
    return out


def arm_convergence(runs_root, arms, dataset: str = "phantom") -> dict[str, tuple[bool, str]]:
    """arm -> (converged, reason). Arms without a generator always pass. A synthetic arm passes only when its
    generator met the convergence criteria its producing chapter wrote (`criteria.read_criteria`); a missing
    criteria.json or generator key, or a generator trained on another dataset than the phantom (no criteria are
    measured for it), fails with that reason."""
    from difflung.judging.criteria import CRITERIA_FILE, read_criteria

    out = {}
    for arm in arms:
        spec = ARMS.get(arm)
        if spec is None or spec.extra != "synthetic":
            out[arm] = (True, "")
            continue
        path, where = Path(runs_root) / spec.criteria / CRITERIA_FILE, f"{spec.criteria}/{CRITERIA_FILE}"
        if dataset != "phantom":
            out[arm] = (False, f"no convergence criteria are measured for a {spec.generator} model trained on "
                               f"{dataset} data")
        elif not path.is_file():
            out[arm] = (False, f"{spec.generator} has no convergence record ({where} missing)")
        else:
            conv = read_criteria(path.parent)["converged"]
            out[arm] = ((True, "") if conv.get(spec.generator) else
                        (False, f"{spec.generator} did not meet its convergence criteria ({spec.producer})"
                         if spec.generator in conv else f"{spec.generator} not recorded in {where}"))
    return out


def validity(metrics: pd.DataFrame, runs_root, dataset: str = "phantom") -> tuple[dict, dict]:
    """(class -> (measurable, reason), arm -> (converged, reason)) for the arms and test truth of a chapter-5
    metrics table (one dataset's rows)."""
    t = metrics[metrics.metric == "test_pixels"]
    arms = sorted(set(metrics.loc[metrics.metric == "dice", "model"]), key=arm_order)
    return (class_measurability(runs_root, dict(zip(t["class"], t.value))),
            arm_convergence(runs_root, arms, dataset))


def comparison_triples(classes, arms, exclude=()) -> list[tuple[str, str, str]]:
    """The chapter's paired comparisons (class, a, b), each tested as "a > b": per class every arm against `ref`
    and every synthetic arm against the `oversample` control, in registry order; triples in `exclude` (the
    poster's claims, judged once for the whole run) are left out. A new arm in `ARMS` joins automatically."""
    present = sorted(set(arms) & set(ARMS), key=arm_order)
    pairs = [(a, "ref") for a in present if a != "ref"] + [
        (a, "oversample") for a in present if a in SYNTHETIC_ARMS and "oversample" in present] + [
        (a, "+difflung") for a in present if ARMS[a].extra == "insert" and "+difflung" in present]
    if "ref" not in present:
        pairs = [p for p in pairs if p[1] != "ref"]
    return [(c, a, b) for c in classes for a, b in pairs if (c, a, b) not in set(exclude)]


def judge_arms(scores: pd.DataFrame, triples, *, measurable: dict[str, tuple[bool, str]],
               converged: dict[str, tuple[bool, str]], generator: np.random.Generator,
               alpha: float = stats.ALPHA) -> pd.DataFrame:
    """Judge the comparisons `triples` with the book's one rule: `stats.compare_to_reference` (paired over
    training seeds), then `stats.judge_claims` (Holm across these comparisons, `stats.verdict`).

    Args:
        scores: per-seed Dice (`seed_scores`). measurable: `class_measurability`. converged: `arm_convergence`.
    Returns:
        One row per triple: class, model, vs and `stats.judge_claims`' columns (claim, estimate, lo, hi, n, unit,
        reported, p, p (Holm), verdict, note, same order as reported).
    """
    def validity(cls, a, b):
        ok, why = measurable.get(cls, (False, f"{cls} not scored"))
        if not ok:
            return {"measurable": False, "reason": why}
        bad = [converged[x][1] for x in (a, b) if not converged.get(x, (True, ""))[0]]
        return {"converged": False, "reason": "; ".join(bad)} if bad else {}

    t = compare_to_reference(scores, generator=generator, pairs=list(triples), validity=validity,
                             claim=lambda c, a, b: f"Dice {c}: {arm_label(a)} > {arm_label(b)}")
    judged = stats.judge_claims(t["comparison"].tolist(), alpha)
    return pd.concat([t[["class", "model", "vs"]], judged], axis=1)


def timing_record(results: list[Results], synthetic: dict[str, SyntheticSet] | None, *, config: SegConfig,
                  seed: int, extra: dict | None = None) -> dict:
    """Wall times and images/s of training and painting, with provenance (these vary from run to run)."""
    return {"segmentation": [t for r in results for t in r.timings],
            "synthesis": {arm: {"seconds": s.seconds, "images_per_s": s.images_per_s, "n": len(s.images)}
                          for arm, s in (synthetic or {}).items()},
            "provenance": provenance(config={"segmentation": asdict(config), **(extra or {})}, seed=seed)}


def scope_lines(metrics: pd.DataFrame, runs_root, dataset: str, classes, exclude=()) -> tuple[list, list]:
    """(can, cannot) sentences for the chapter's scope box: per-seed values, the interval floor, whether any
    comparison can reach "reproduced" at this number of seeds (`stats.min_units` with Holm across the measurable
    comparisons), classes not measurable and generators not converged, each with its reason."""
    measurable, converged = validity(metrics, runs_root, dataset)
    n = int(seed_scores(metrics).seed.nunique())
    arms = sorted(set(metrics.loc[metrics.metric == "dice", "model"]), key=arm_order)
    k = max(1, sum(measurable[c][0] and converged[a][0] and converged[b][0]
                   for c, a, b in comparison_triples(classes, arms, exclude)))
    ok = [c for c in classes if measurable[c][0]]
    can = [f"Per-seed Dice of every arm on {', '.join(ok)}, on held-out test patients."] if ok else []
    cannot = []
    if n < stats.MIN_SEEDS:
        cannot.append(f"An interval for any Dice or difference: {n} training seeds, fewer than the "
                      f"{stats.MIN_SEEDS} an interval needs; the page shows the per-seed values only.")
    if n < stats.min_units(k):
        cannot.append(f"A comparison that reaches \"reproduced\": with {n} training seeds the signed-rank test's "
                      f"smallest p is 2/2^{n}, and Holm across {k} measurable comparison(s) needs at least "
                      f"{stats.min_units(k)} seeds; no claim can reach \"reproduced\" at this number of seeds.")
    cannot += [f"Dice of {c}: not measurable ({measurable[c][1]})." for c in classes if not measurable[c][0]]
    cannot += [f"Whether {arm_label(a)}'s synthetic slices help: not measurable ({why})."
               for a, (good, why) in converged.items() if not good]
    return can, cannot


# ---------------------------------------------------------------------------------------------------------------
# the experiment on one dataset

def _masks_for_arms(train: Slices, classes, rare, n, seed, boost, need: bool):
    """Synthesised masks and their report; without lesion pixels to copy: (None, empty, note) unless `need`."""
    try:
        ms = synthesize_masks(train, classes, rare, n, seed, boost)
        return ms, None
    except ValueError as e:
        if need:
            raise
        return None, f"no masks synthesised ({e}); oversample repeats rare-class slices uniformly"


def insert_lesions(models: dict, train: Slices, ms, run_dir, *, seed: int, tag: str, steps: int | None,
                   device: str = "auto", progress: bool = False) -> dict[str, SyntheticSet]:
    """The insertion arms' sets: each synthesised mask's new lesions inserted into its own real base slice
    (`difflung.insertion.whole_slice.insertion_arm`), so the extra slices differ from real ones only inside the lesions."""
    from difflung.insertion.whole_slice import insertion_arm

    out = {}
    for arm, model_dir in models.items():
        s = insertion_arm(model_dir, train.images, train.labels, ms.labels, ms.source_index, seed=seed,
                          steps=steps or 50, device=device, progress=progress)
        out[arm] = SyntheticSet(arm, s.images, s.labels, Path(model_dir), s.seconds, len(s.images) / s.seconds)
        path = Path(run_dir) / tag / f"synthetic_{arm.lstrip('+')}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, images=s.images, labels=s.labels)
    return out


def run_experiment(dataset, run_dir, *, tag: str, models: dict, config: SegConfig, seeds, seed: int,
                   mix_ratio: float, boost: float | dict, sampler: str, sampler_steps: int | None,
                   rare_classes=None, device: str = "auto", eval_splits=("test",),
                   n_examples: int = 4, workers: int = 1,
                   progress: bool = False) -> tuple[Results, Synthesis, pd.DataFrame]:
    """Synthesise masks and images, build the arms, train and score them on one dataset.

    Args:
        dataset: dataset artifact (phantom or real CT).
        run_dir: the chapter's run folder; outputs go to `<run_dir>/<tag>/`.
        tag: "phantom" or "real" (the `dataset` column of metrics.csv).
        models: synthetic arm -> generator folder trained on this dataset; arms without one are left out,
            the arms without synthetic data always run.
        config: the segmentation model and its number of steps, the same for every arm.
        seeds: training seeds (each arm trains once per seed).
        seed: seeds mask synthesis, image sampling and the oversampling draw.
        mix_ratio: extra images per real training image (synthetic or oversampled).
        boost: target fraction of the lung field per boosted class in each synthetic mask.
        sampler, sampler_steps: diffusion sampler and its steps (None: the sampler's default).
        rare_classes: classes to boost; None: emphysema/GGO/fibrosis, or the dataset's lesion classes.
        eval_splits: held-out splits to score on (no step of the experiment uses them otherwise).
        workers: segmenters trained at once, one thread each (`difflung.core.parallel.run_jobs`).
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
    try:
        ms, note = _masks_for_arms(train, ds.classes, rare, n, seed, boost, need=bool(models))
    except ValueError as e:
        raise ValueError(f"{ds.root}: cannot synthesise masks for the synthetic arms ({e})") from e
    masks, report = (ms.labels, ms.report) if ms is not None else (None, pd.DataFrame())
    notes = [note] if note else []
    paint = {k: v for k, v in models.items() if ARMS[k].extra == "synthetic"}
    insert = {k: v for k, v in models.items() if ARMS[k].extra == "insert"}
    sets = paint_masks(paint, ds, masks, run_dir, seed=seed, tag=tag, sampler=sampler, steps=sampler_steps,
                       device=device, progress=progress) if paint else {}
    if insert:
        sets.update(insert_lesions(insert, train, ms, run_dir, seed=seed, tag=tag, steps=sampler_steps,
                                   device=device, progress=progress))
    arms = build_arms(train, n, masks, sets, rare=rare, seed=seed,
                      arms=[k for k in ARMS if k not in SYNTHETIC_ARMS or k in sets])
    missing = [a for a in SYNTHETIC_ARMS if a not in sets]
    if missing:
        notes.append(f"arms {', '.join(missing)} not run: no generator trained on this dataset was given")
    balance = class_balance_table(arms, rare, masks)
    parts = [ds.split(s) for s in eval_splits]
    test = Slices(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("images", "labels", "patient", "z")))
    res = train_and_evaluate(arms, test, ds.classes, config, list(seeds), run_dir, tag=tag, rare=rare,
                             device=device, n_examples=n_examples, workers=workers)
    res.notes = notes
    return res, Synthesis(masks, report, sets), balance
