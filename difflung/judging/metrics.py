"""Evaluation: image quality, per-class Dice, confidence intervals, tests, and model cost.

Conventions shared by every chapter:
- Images are compared in the model window: HU [-1000, 400] mapped to [-1, 1], so the data range is 2.0
  (PSNR 20 dB = RMS error of 10% of the window = 140 HU).
- Dice is per image and per class; NaN when a class is absent from both prediction and target (nothing to
  score), 0 when it is predicted but absent from the target (or the reverse). Means skip NaNs.
- `mean_ci`/`bootstrap_ci` are plain intervals of a mean. Verdicts never rest on them: paired comparisons over
  training seeds (`compare_to_reference`) go through `difflung.judging.stats` (an interval only from enough seeds,
  bounded by construction; Wilcoxon signed-rank; Holm and the one verdict rule in `stats.judge_claims`). Test
  slices scored by the same few models are not independent replications and are never the unit.
"""
from __future__ import annotations

import math
import time
from typing import Callable, NamedTuple, Sequence

import numpy as np
import pandas as pd
import torch

from difflung import labels as L

DATA_RANGE = 2.0  # [-1, 1] <-> [-1000, 400] HU


# ---------------------------------------------------------------------------------------------------------------
# image quality

def psnr_ssim(generated, real, data_range: float = DATA_RANGE) -> pd.DataFrame:
    """PSNR (dB) and SSIM of each generated slice against the real slice with the same mask.

    Args:
        generated, real: (N, S, S) or (S, S) arrays in [-1, 1], the HU window [-1000, 400] mapped linearly;
            values outside are clipped first (the same as windowing HU to [-1000, 400]).
        data_range: 2.0 for the [-1, 1] window (the default; do not change unless the window changes).
    Returns:
        DataFrame with columns image (index in the batch), psnr, ssim. SSIM uses skimage's default uniform 7x7
        window, so slices must be at least 7x7.
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    g = np.clip(np.asarray(generated, dtype=np.float64), -1.0, 1.0)
    r = np.clip(np.asarray(real, dtype=np.float64), -1.0, 1.0)
    if g.ndim == 2:
        g, r = g[None], r[None]
    if g.shape != r.shape or g.ndim != 3:
        raise ValueError(f"generated {g.shape} and real {r.shape} must both be (N, S, S)")
    rows = []
    for i in range(len(g)):
        with np.errstate(divide="ignore"):  # identical images: PSNR is +inf
            p = peak_signal_noise_ratio(r[i], g[i], data_range=data_range)
        s = structural_similarity(r[i], g[i], data_range=data_range)
        rows.append({"image": i, "psnr": float(p), "ssim": float(s)})
    return pd.DataFrame(rows, columns=["image", "psnr", "ssim"])


# ---------------------------------------------------------------------------------------------------------------
# segmentation

def dice_per_class(pred, target, classes: Sequence[int]) -> pd.DataFrame:
    """Per-image, per-class Dice between label maps, with MONAI's DiceMetric.

    Each class in `classes` (project ids) becomes one binary channel; the metric runs with
    `include_background=True` because the channels are exactly the classes asked for -- background (id 0) is
    scored only if it is in `classes` -- and `ignore_empty=False`, so a class predicted where the target has none
    scores 0. Where a class is absent from both prediction and target, Dice is undefined and reported as NaN
    (MONAI would report 1.0); averages must skip NaNs.

    Args:
        pred, target: (N, S, S) or (S, S) integer label maps of project ids.
        classes: project ids to score.
    Returns:
        DataFrame with columns image, class (name), class_id, dice; N * len(classes) rows, image-major.
    """
    from monai.metrics import DiceMetric

    pred, target = np.asarray(pred), np.asarray(target)
    if pred.ndim == 2:
        pred, target = pred[None], target[None]
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"pred {pred.shape} and target {target.shape} must both be (N, S, S)")
    classes = [int(c) for c in classes]
    if not classes:
        raise ValueError("no classes to score")
    ids = torch.as_tensor(classes).view(1, -1, 1, 1)
    p = torch.from_numpy(pred.astype(np.int64)).unsqueeze(1) == ids  # (N, C, S, S) bool
    t = torch.from_numpy(target.astype(np.int64)).unsqueeze(1) == ids
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    d = metric(p.float(), t.float()).numpy().astype(np.float64)  # (N, C)
    d[~(p.flatten(2).any(2) | t.flatten(2).any(2)).numpy()] = np.nan
    n, c = d.shape
    names = [L.BY_ID[i].name if i in L.BY_ID else str(i) for i in classes]
    return pd.DataFrame({"image": np.repeat(np.arange(n), c), "class": np.tile(names, n),
                         "class_id": np.tile(classes, n), "dice": d.ravel()})


# ---------------------------------------------------------------------------------------------------------------
# statistics

def _finite(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[~np.isnan(v)]


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and two-sided Student-t confidence interval (NaNs skipped).

    Returns (mean, lo, hi); (nan, nan, nan) for no values, (mean, nan, nan) for one value.
    """
    from scipy import stats

    v = _finite(values)
    if len(v) == 0:
        return (math.nan, math.nan, math.nan)
    m = float(v.mean())
    if len(v) == 1:
        return (m, math.nan, math.nan)
    half = float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return (m, m - half, m + half)


def bootstrap_ci(values, rng: np.random.Generator, n_boot: int = 2000,
                 confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and percentile-bootstrap confidence interval (NaNs skipped), resampling with the explicit `rng`."""
    v = _finite(values)
    if len(v) == 0:
        return (math.nan, math.nan, math.nan)
    if len(v) == 1:
        return (float(v[0]), math.nan, math.nan)
    means = v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(1)
    a = (1 - confidence) / 2
    lo, hi = np.quantile(means, [a, 1 - a])
    return (float(v.mean()), float(lo), float(hi))


class TestResult(NamedTuple):
    statistic: float
    p: float
    n: int
    kind: str


def paired_test(a, b, kind: str = "wilcoxon") -> TestResult:
    """Two-sided test that `a` and `b` differ.

    kind="wilcoxon": Wilcoxon signed-rank on paired differences a[i] - b[i] (pairs with a NaN dropped; exact p for
    small n). With n pairs the smallest attainable p is 2 / 2**n (n = 5 -> 0.0625): read it with the CI.
    kind="ranksum": Wilcoxon rank-sum (Mann-Whitney) on the two samples as independent groups (NaNs dropped).
    p is NaN when there are too few values (fewer than 2 per group / pairs); 1.0 when all differences are zero.
    """
    from scipy import stats

    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if kind == "wilcoxon":
        if a.shape != b.shape:
            raise ValueError(f"paired test needs equal lengths, got {a.shape} and {b.shape}")
        keep = ~(np.isnan(a) | np.isnan(b))
        d = a[keep] - b[keep]
        if len(d) < 2:
            return TestResult(math.nan, math.nan, int(len(d)), kind)
        if np.all(d == 0):
            return TestResult(0.0, 1.0, int(len(d)), kind)
        r = stats.wilcoxon(d, alternative="two-sided")
        return TestResult(float(r.statistic), float(r.pvalue), int(len(d)), kind)
    if kind == "ranksum":
        a, b = _finite(a), _finite(b)
        if len(a) < 2 or len(b) < 2:
            return TestResult(math.nan, math.nan, int(min(len(a), len(b))), kind)
        r = stats.ranksums(a, b, alternative="two-sided")
        return TestResult(float(r.statistic), float(r.pvalue), int(min(len(a), len(b))), kind)
    raise ValueError(f"unknown test kind {kind!r}; use 'wilcoxon' or 'ranksum'")


def compare_to_reference(scores: pd.DataFrame, ref: str | None = "ref", *, generator: np.random.Generator,
                         model: str = "model", unit: str = "seed", by: str = "class", value: str = "value",
                         pairs: Sequence[tuple] | None = None, validity: Callable | None = None,
                         claim: Callable | None = None, bounds: tuple[float, float] = (-1.0, 1.0),
                         min_seeds: int | None = None) -> pd.DataFrame:
    """Paired comparisons of models over replication units (training seeds), each a `stats.Comparison`.

    Unit u of model a is paired with unit u of model b (the same training seed: the same initial weights and
    augmentation stream). Each pair goes through `stats.compare_seeds`: the mean paired difference, a bounded
    percentile-bootstrap interval only from at least `min_seeds` units (none below: the verdict is then at best
    inconclusive), and a two-sided Wilcoxon signed-rank p over units. Verdicts come from
    `stats.judge_claims(table.comparison)` (Holm across the comparisons passed, then the book's one rule).

    Args:
        scores: one score per (by, model, unit), e.g. per (class, arm, training seed) the mean Dice over slices.
        ref: the reference model, compared with every other model of each group when `pairs` is None.
        generator: numpy Generator for the bootstrap intervals (used in the order of `pairs`).
        model, unit, by, value: column names.
        pairs: (group, a, b) triples, each tested as "a > b" within group `group`; None: (g, m, ref) for every
            group g and model m != ref, in order of appearance.
        validity: (group, a, b) -> `stats.Comparison` validity kwargs (measurable/converged flags, reason).
        claim: (group, a, b) -> the claim's text; default "<group>: a > b".
        bounds: range of a paired difference (Dice: (-1, 1)).
        min_seeds: fewest units that get an interval (default `stats.MIN_SEEDS`).
    Returns:
        One row per pair: by, model (a), vs (b), delta, lo, hi, p_wilcoxon, n_units, comparison (the
        `stats.Comparison`).
    """
    from difflung.judging import stats

    if pairs is None:
        pairs = [(g, m, ref) for g in sorted(scores[by].unique())
                 for m in scores.loc[scores[by] == g, model].unique() if m != ref]
    rows = []
    for g, a, b in pairs:
        x = scores[scores[by] == g]
        xa, xb = (x[x[model] == k].set_index(unit)[value] for k in (a, b))
        units = xa.index.union(xb.index)  # a seed one model lacks is dropped by the paired statistics (NaN)
        c = stats.compare_seeds(xa.reindex(units).to_numpy(np.float64), xb.reindex(units).to_numpy(np.float64),
                                claim=claim(g, a, b) if claim else f"{g}: {a} > {b}", generator=generator,
                                bounds=bounds, min_seeds=min_seeds or stats.MIN_SEEDS,
                                **(validity(g, a, b) if validity else {}))
        rows.append({by: g, model: a, "vs": b, "delta": c.estimate, "lo": c.lo, "hi": c.hi, "p_wilcoxon": c.p_value,
                     "n_units": c.n, "comparison": c})
    return pd.DataFrame(rows, columns=[by, model, "vs", "delta", "lo", "hi", "p_wilcoxon", "n_units", "comparison"])


def summarize(df: pd.DataFrame, by: Sequence[str], value: str = "value", confidence: float = 0.95) -> pd.DataFrame:
    """Group `df` by `by` and give mean, lo, hi (t-interval) and n (non-NaN values) of `value` per group."""
    rows = []
    for key, g in df.groupby(list(by), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        m, lo, hi = mean_ci(g[value], confidence)
        rows.append(dict(zip(by, key), mean=m, lo=lo, hi=hi, n=int(g[value].notna().sum())))
    return pd.DataFrame(rows, columns=list(by) + ["mean", "lo", "hi", "n"])


# ---------------------------------------------------------------------------------------------------------------
# cost

def count_params(model: torch.nn.Module, trainable_only: bool = False) -> int:
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))


@torch.no_grad()
def gflops_per_call(model: Callable, *inputs, **kwargs) -> float:
    """GFLOPs of one call `model(*inputs, **kwargs)`, counted by torch.utils.flop_counter.FlopCounterMode.

    A multiply-add counts as 2 FLOPs (PyTorch's convention); only matmul/conv/attention ops are counted, which
    dominate these networks. Divide by the batch size for a per-image figure.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model(*inputs, **kwargs)
    return counter.get_total_flops() / 1e9


def _sync(device) -> None:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_per_image(fn: Callable[[int], object], n_images: int, batch_size: int, device="cpu", repeats: int = 3,
                   warmup: int = 1) -> float:
    """Median wall seconds per image of `fn(batch)`, which must produce `batch` images.

    Each repeat produces `n_images` images in batches of `batch_size` (the last batch may be smaller); CUDA is
    synchronised before the clock starts and stops. `warmup` untimed calls of a full batch come first (cuDNN
    autotuning, lazy init, compilation).
    """
    if n_images < 1 or batch_size < 1 or repeats < 1:
        raise ValueError("n_images, batch_size and repeats must be >= 1")
    for _ in range(warmup):
        fn(min(batch_size, n_images))
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        left = n_images
        while left > 0:
            b = min(batch_size, left)
            fn(b)
            left -= b
        _sync(device)
        times.append((time.perf_counter() - t0) / n_images)
    return float(np.median(times))
