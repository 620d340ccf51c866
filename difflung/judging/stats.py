"""Statistics for the verdicts: intervals with the right unit, paired tests, Holm's correction, one verdict rule.

Units of replication:
- Image quality: the unit is the test *patient*. A slice's score is first averaged over sampling seeds
  (`unit_means`), then slices are resampled by patient (`cluster_bootstrap`), because slices of one patient are
  not independent; treating them as independent makes intervals far too narrow.
- Segmentation: the unit is the *training seed*. An interval is given only from at least `min_seeds` seeds
  (`seed_interval`); below that a chapter shows the per-seed dots and no interval.

Every claim of a run goes through `verdict` (one rule for every chapter), after Holm's correction across the
run's claims (`holm`, or `judge_claims`, which does both).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Callable, NamedTuple, Sequence

import numpy as np
import pandas as pd
from scipy import stats

ALPHA = 0.05
CONFIDENCE = 0.95
N_RESAMPLES = 9999
MIN_SEEDS = 5  # fewer training seeds: per-seed dots, no interval
MAGNITUDE_RANGE = (0.1, 10.0)  # our effect / reported effect within this range (same sign): "same order of magnitude"

VERDICTS = ("reproduced", "not reproduced", "inconclusive", "not measurable")


class Interval(NamedTuple):
    estimate: float  # the mean
    lo: float
    hi: float
    n: int  # number of resampled units (clusters, or seeds)


# ---------------------------------------------------------------------------------------------------------------
# intervals

def unit_means(values, units, clusters=None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Average repeated scores of one unit (e.g. a test slice scored under several sampling seeds).

    Args:
        values: (N,) scores; NaNs are skipped.
        units: (N,) unit id of each score (e.g. slice index).
        clusters: optional (N,) cluster id of each score (e.g. patient); must be constant within a unit.
    Returns:
        (means, unit_clusters, unit_ids), one entry per unit with at least one finite score, sorted by unit id.
    """
    df = pd.DataFrame({"v": np.asarray(values, dtype=np.float64), "u": np.asarray(units)})
    if clusters is not None:
        df["c"] = np.asarray(clusters)
        if (df.groupby("u")["c"].nunique() > 1).any():
            raise ValueError("a unit lies in two clusters: each slice must belong to one patient")
    df = df[np.isfinite(df["v"])]
    g = df.groupby("u", sort=True)
    means = g["v"].mean()
    cl = g["c"].first().to_numpy() if clusters is not None else None
    return means.to_numpy(np.float64), cl, means.index.to_numpy()


def cluster_bootstrap(values, clusters, *, generator: np.random.Generator, n_resamples: int = N_RESAMPLES,
                      confidence: float = CONFIDENCE) -> Interval:
    """Cluster (patient-level) percentile bootstrap interval of the mean of `values`.

    The estimate is the plain mean over units (slices). Whole clusters are resampled: scipy.stats.bootstrap
    resamples *observations*, so each cluster is made one observation, the pair (sum of its values, number of
    its values), resampled jointly (`paired=True`); the statistic is sum of sums / sum of counts, i.e. the mean
    over all slices of the resampled patients. The percentile method is used because BCa's jackknife is unstable
    with the handful of patients a test split has. With few clusters the interval is still optimistic (a
    bootstrap cannot know variation it has not seen); `n` says how many clusters it rests on.

    Args:
        values: (N,) one score per unit (slice), already averaged over sampling seeds (see `unit_means`);
            for a paired comparison pass per-slice differences. NaNs are skipped.
        clusters: (N,) cluster (patient) id of each value.
        generator: numpy Generator driving the resampling.
        n_resamples: bootstrap resamples.
        confidence: two-sided confidence level.
    Returns:
        Interval(mean, lo, hi, n_clusters); lo/hi are NaN with fewer than 2 clusters.
    """
    v, c = np.asarray(values, dtype=np.float64).ravel(), np.asarray(clusters).ravel()
    if v.shape != c.shape:
        raise ValueError(f"values {v.shape} and clusters {c.shape} must have the same length")
    keep = np.isfinite(v)
    v, c = v[keep], c[keep]
    if v.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0)
    ids, inv = np.unique(c, return_inverse=True)
    sums = np.bincount(inv, weights=v).astype(np.float64)
    counts = np.bincount(inv).astype(np.float64)
    est = float(v.mean())
    if len(ids) < 2:
        return Interval(est, math.nan, math.nan, len(ids))
    if np.all(v == v[0]):  # no spread: scipy would warn about a degenerate distribution
        return Interval(est, est, est, len(ids))
    res = stats.bootstrap((sums, counts), lambda s, n, axis=-1: s.sum(axis) / n.sum(axis), paired=True,
                          vectorized=True, n_resamples=n_resamples, confidence_level=confidence,
                          method="percentile", rng=generator)
    ci = res.confidence_interval
    return Interval(est, float(ci.low), float(ci.high), len(ids))


def seed_interval(values, *, generator: np.random.Generator, min_seeds: int = MIN_SEEDS,
                  bounds: tuple[float, float] = (0.0, 1.0), n_resamples: int = N_RESAMPLES,
                  confidence: float = CONFIDENCE) -> Interval | None:
    """Percentile bootstrap interval of the mean over training seeds, or None with fewer than `min_seeds`.

    A percentile bootstrap of a mean never leaves [min(values), max(values)], so the interval stays inside
    `bounds` by construction (a t-interval from 2 seeds can run from -1.1 to 1.4 on a Dice axis).

    Args:
        values: (n_seeds,) one score per training seed (e.g. Dice, or a paired Dice difference with
            bounds=(-1, 1)); NaNs are skipped.
        generator: numpy Generator driving the resampling.
        min_seeds: fewest seeds that get an interval.
        bounds: the metric's range; values outside it are an error.
    Returns:
        Interval(mean, lo, hi, n_seeds), or None when there are fewer than `min_seeds` finite values.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size and (v.min() < bounds[0] or v.max() > bounds[1]):
        raise ValueError(f"seed values {v.min():.4g}..{v.max():.4g} lie outside the metric's bounds {bounds}")
    if v.size < min_seeds:
        return None
    est = float(v.mean())
    if np.all(v == v[0]):
        return Interval(est, est, est, int(v.size))
    res = stats.bootstrap((v,), np.mean, n_resamples=n_resamples, confidence_level=confidence,
                          method="percentile", rng=generator)
    ci = res.confidence_interval
    return Interval(est, float(ci.low), float(ci.high), int(v.size))


# ---------------------------------------------------------------------------------------------------------------
# paired tests

def wilcoxon_seeds(a, b, *, alternative: str = "two-sided", margin: float = 0.0) -> float:
    """Wilcoxon signed-rank p-value of paired per-seed scores a - b (scipy.stats.wilcoxon, exact for small n).

    Args:
        a, b: (n_seeds,) scores of the two arms, paired by training seed; pairs with a NaN are dropped.
        alternative: "two-sided", "greater" (a > b) or "less".
        margin: for a non-inferiority claim "a not worse than b by more than margin", test a - b + margin.
    Returns:
        The p-value; NaN with no pairs or when every difference is zero (no evidence either way).
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64) + margin
    d = d[np.isfinite(d)]
    if d.size == 0 or np.all(d == 0):
        return math.nan
    return float(stats.wilcoxon(d, alternative=alternative).pvalue)


def cluster_means(values, clusters) -> tuple[np.ndarray, np.ndarray]:
    """Mean of `values` within each cluster: (cluster ids sorted, means). NaNs skipped."""
    m, _, ids = unit_means(values, clusters)
    return ids, m


def sign_flip_test(differences, clusters, *, generator: np.random.Generator, alternative: str = "two-sided",
                   margin: float = 0.0, n_resamples: int = N_RESAMPLES) -> float:
    """Cluster-level paired test: sign-flip permutation test of the mean of per-patient mean differences.

    Per-slice differences (already averaged over sampling seeds) are averaged within each patient; under the null
    of no difference each patient's mean difference is as likely positive as negative, so their signs are
    flipped (scipy.stats.permutation_test, permutation_type="samples" with one sample). With few patients all
    2^n sign patterns are enumerated (exact); note that with n patients the smallest two-sided p is 2 / 2^n.

    Args:
        differences: (N,) per-slice differences a - b. NaNs skipped.
        clusters: (N,) patient id of each slice.
        generator: numpy Generator (used only when the test is not exact).
        alternative: "two-sided", "greater" or "less".
        margin: non-inferiority margin: tests mean + margin.
    Returns:
        The p-value; NaN with no clusters or when every patient's mean difference is zero.
    """
    _, m = cluster_means(differences, clusters)
    m = m + margin
    if m.size == 0 or np.all(m == 0):
        return math.nan
    res = stats.permutation_test((m,), np.mean, permutation_type="samples", alternative=alternative,
                                 n_resamples=n_resamples, rng=generator)
    return float(res.pvalue)


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni step-down adjusted p-values (as statsmodels' multipletests(method="holm")).

    Sorted ascending p_(1) <= ... <= p_(m): adjusted p_(i) = max_{j <= i} min(1, (m - j + 1) p_(j)), returned in
    the input order. NaNs (claims not tested) are kept as NaN and do not count towards m.
    """
    p = np.asarray(pvalues, dtype=np.float64).ravel()
    out = np.full(p.shape, np.nan)
    idx = np.flatnonzero(np.isfinite(p))
    if idx.size == 0:
        return out
    if np.any((p[idx] < 0) | (p[idx] > 1)):
        raise ValueError(f"p-values must lie in [0, 1], got {p[idx]}")
    order = idx[np.argsort(p[idx], kind="mergesort")]
    m = order.size
    adj = np.minimum(1.0, (m - np.arange(m)) * p[order])
    out[order] = np.maximum.accumulate(adj)
    return out


# ---------------------------------------------------------------------------------------------------------------
# the verdict rule

@dataclass(frozen=True)
class Comparison:
    """One claim as measured in a run.

    Attributes:
        claim: readable statement, e.g. "Diff-Lung PSNR > Seg-Guided PSNR".
        estimate, lo, hi: our effect (a - b) and its interval; lo/hi NaN when there is no interval.
        p_value: raw p-value of the paired test (two-sided or one-sided in the claimed direction); NaN if none.
        p_adjusted: Holm-adjusted p-value (filled by `judge_claims`); NaN when not adjusted.
        direction: "greater" (claim: a > b) or "less" (a < b).
        margin: non-inferiority margin (> 0: the claim is "a not worse than b by more than margin").
        reported: the poster's effect (a - b), for the order-of-magnitude column; NaN if none.
        instrument_ok, converged, measurable: validity flags; `reason` says which failed and why.
        unit: what the interval resamples ("test patients", "training seeds").
    """
    claim: str
    estimate: float
    lo: float = math.nan
    hi: float = math.nan
    p_value: float = math.nan
    p_adjusted: float = math.nan
    direction: str = "greater"
    margin: float = 0.0
    reported: float = math.nan
    instrument_ok: bool = True
    converged: bool = True
    measurable: bool = True
    reason: str = ""
    n: int = 0
    unit: str = ""


@dataclass(frozen=True)
class Verdict:
    label: str  # one of VERDICTS, "not measurable" carrying its reason in `text`
    text: str  # as printed: "not measurable: <reason>" or the label
    note: str  # why, in a few words
    same_magnitude: bool | None  # our effect within 0.1x-10x of the reported one, same sign; None if undefined


def same_order_of_magnitude(ours: float, reported: float, bounds=MAGNITUDE_RANGE) -> bool | None:
    """True when ours / reported lies in [0.1, 10] (so the signs agree); None when either is missing or zero."""
    if not (np.isfinite(ours) and np.isfinite(reported)) or reported == 0:
        return None
    r = ours / reported
    return bool(bounds[0] <= r <= bounds[1])


def verdict(c: Comparison, alpha: float = ALPHA) -> Verdict:
    """The one verdict rule of the book.

    1. not measurable: any validity flag fails (instrument below its floor, generator not converged, class
       absent or its HU signature lost), with the reason.
    2. reproduced: Holm-adjusted p < alpha AND the interval lies entirely on the claimed side of 0 (of -margin
       for a non-inferiority claim).
    3. not reproduced: the interval lies entirely on the other side.
    4. inconclusive: anything else (including no interval, e.g. fewer than 5 seeds).
    """
    mag = same_order_of_magnitude(c.estimate, c.reported)
    if not (c.instrument_ok and c.converged and c.measurable):
        failed = [k for k, ok in (("instrument", c.instrument_ok), ("convergence", c.converged),
                                  ("measurability", c.measurable)) if not ok]
        reason = c.reason or f"{', '.join(failed)} check failed"
        return Verdict("not measurable", f"not measurable: {reason}", reason, mag)
    if c.direction not in ("greater", "less"):
        raise ValueError(f"{c.claim}: direction must be 'greater' or 'less', got {c.direction!r}")
    if c.margin < 0:
        raise ValueError(f"{c.claim}: margin must be >= 0, got {c.margin}")
    if not (np.isfinite(c.lo) and np.isfinite(c.hi)):
        return Verdict("inconclusive", "inconclusive", f"no interval (n = {c.n} {c.unit})".strip(), mag)
    s = 1.0 if c.direction == "greater" else -1.0
    lo, hi = sorted((s * c.lo, s * c.hi))  # the interval in the claimed direction
    if np.isfinite(c.p_adjusted) and c.p_adjusted < alpha and lo > -c.margin:
        return Verdict("reproduced", "reproduced", f"adjusted p = {c.p_adjusted:.3g} < {alpha:g}", mag)
    if hi < -c.margin:
        return Verdict("not reproduced", "not reproduced", "interval on the other side", mag)
    if lo <= -c.margin:
        note = "interval spans the threshold"
    else:
        note = f"adjusted p = {c.p_adjusted:.3g}" if np.isfinite(c.p_adjusted) else "no test"
    return Verdict("inconclusive", "inconclusive", note, mag)


def judge_claims(comparisons: Sequence[Comparison], alpha: float = ALPHA) -> pd.DataFrame:
    """Holm-adjust the p-values of the run's measurable claims, then apply `verdict` to each.

    Returns one row per claim: claim, estimate, lo, hi, n, unit, reported, p, p (Holm), verdict, note,
    same order as reported (bool or None).
    """
    valid = [c.instrument_ok and c.converged and c.measurable for c in comparisons]
    adj = holm([c.p_value if v else math.nan for c, v in zip(comparisons, valid)])
    rows = []
    for c, a in zip(comparisons, adj):
        c = dataclasses.replace(c, p_adjusted=float(a))
        v = verdict(c, alpha)
        rows.append({"claim": c.claim, "estimate": c.estimate, "lo": c.lo, "hi": c.hi, "n": c.n, "unit": c.unit,
                     "reported": c.reported, "p": c.p_value, "p (Holm)": c.p_adjusted, "verdict": v.text,
                     "note": v.note, "same order as reported": v.same_magnitude})
    return pd.DataFrame(rows, columns=["claim", "estimate", "lo", "hi", "n", "unit", "reported", "p", "p (Holm)",
                                       "verdict", "note", "same order as reported"])


# ---------------------------------------------------------------------------------------------------------------
# builders: one way to turn paired scores into a Comparison, for every chapter

def compare_slices(a, b, slices, patients, *, claim: str, generator: np.random.Generator, direction: str = "greater",
                   margin: float = 0.0, reported: float = math.nan, n_resamples: int = N_RESAMPLES,
                   alternative: str = "two-sided", **validity) -> Comparison:
    """Image-quality comparison of two generators on the same test slices (unit: test patient).

    Scores are paired by (sampling seed, slice): both generators saw the same mask and the same initial noise.
    The per-pair differences a - b are averaged over sampling seeds per slice (`unit_means`), then get a
    patient-level bootstrap interval (`cluster_bootstrap`) and a patient-level sign-flip test (`sign_flip_test`,
    on mean + margin). With n patients the test's smallest p is 2 / 2^n (two-sided): see `min_units`.

    Args:
        a, b: (N,) scores of the two generators, aligned (same seed and slice at each position).
        slices: (N,) slice id of each pair; patients: (N,) patient id of each pair.
        claim, direction, margin, reported: as in `Comparison`.
        generator: numpy Generator for the bootstrap (then the permutation test, when not exact).
        alternative: of the test: "two-sided" (default, matching the two-sided interval), "greater" or "less".
        **validity: instrument_ok, converged, measurable, reason (see `Comparison`).
    """
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    m, cl, _ = unit_means(d, slices, patients)
    iv = cluster_bootstrap(m, cl, generator=generator, n_resamples=n_resamples)
    p = sign_flip_test(m, cl, generator=generator, margin=margin, n_resamples=n_resamples, alternative=alternative)
    return Comparison(claim, iv.estimate, iv.lo, iv.hi, p_value=p, direction=direction, margin=margin,
                      reported=reported, n=iv.n, unit="test patients", **validity)


def compare_seeds(a, b, *, claim: str, generator: np.random.Generator, direction: str = "greater",
                  margin: float = 0.0, reported: float = math.nan, bounds: tuple[float, float] = (-1.0, 1.0),
                  min_seeds: int = MIN_SEEDS, alternative: str = "two-sided", **validity) -> Comparison:
    """Segmentation comparison of two arms over training seeds (unit: training seed).

    Per-seed differences a - b get a bounded percentile bootstrap interval when there are at least `min_seeds`
    seeds (`seed_interval`; else no interval, so the verdict is at best inconclusive) and a two-sided Wilcoxon
    signed-rank test on a - b + margin (`wilcoxon_seeds`; smallest two-sided p with n seeds 2 / 2^n).

    Args:
        a, b: (n_seeds,) scores of the two arms, paired by training seed.
        bounds: range of a difference (Dice: (-1, 1)).
        other arguments: as in `compare_slices`.
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    d = a - b
    iv = seed_interval(d, generator=generator, min_seeds=min_seeds, bounds=bounds)
    fin = d[np.isfinite(d)]
    est = float(fin.mean()) if fin.size else math.nan
    lo, hi = (iv.lo, iv.hi) if iv is not None else (math.nan, math.nan)
    p = wilcoxon_seeds(a, b, margin=margin, alternative=alternative)
    return Comparison(claim, est, lo, hi, p_value=p, direction=direction, margin=margin, reported=reported,
                      n=int(fin.size), unit="training seeds", **validity)


def compare_to_reference(scores: pd.DataFrame, ref: str | None = "ref", *, generator: np.random.Generator,
                         model: str = "model", unit: str = "seed", by: str = "class", value: str = "value",
                         pairs: Sequence[tuple] | None = None, validity: Callable | None = None,
                         claim: Callable | None = None, bounds: tuple[float, float] = (-1.0, 1.0),
                         min_seeds: int | None = None) -> pd.DataFrame:
    """Paired comparisons of models over replication units (training seeds), each a `Comparison`.

    Unit u of model a is paired with unit u of model b (the same training seed: the same initial weights and
    augmentation stream). Each pair goes through `compare_seeds`: the mean paired difference, a bounded
    percentile-bootstrap interval only from at least `min_seeds` units (none below: the verdict is then at best
    inconclusive), and a two-sided Wilcoxon signed-rank p over units. Verdicts come from
    `judge_claims(table.comparison)` (Holm across the comparisons passed, then the book's one rule).

    Args:
        scores: one score per (by, model, unit), e.g. per (class, arm, training seed) the mean Dice over slices.
        ref: the reference model, compared with every other model of each group when `pairs` is None.
        generator: numpy Generator for the bootstrap intervals (used in the order of `pairs`).
        model, unit, by, value: column names.
        pairs: (group, a, b) triples, each tested as "a > b" within group `group`; None: (g, m, ref) for every
            group g and model m != ref, in order of appearance.
        validity: (group, a, b) -> `Comparison` validity kwargs (measurable/converged flags, reason).
        claim: (group, a, b) -> the claim's text; default "<group>: a > b".
        bounds: range of a paired difference (Dice: (-1, 1)).
        min_seeds: fewest units that get an interval (default `MIN_SEEDS`).
    Returns:
        One row per pair: by, model (a), vs (b), delta, lo, hi, p_wilcoxon, n_units, comparison (the
        `Comparison`).
    """
    if pairs is None:
        pairs = [(g, m, ref) for g in sorted(scores[by].unique())
                 for m in scores.loc[scores[by] == g, model].unique() if m != ref]
    rows = []
    for g, a, b in pairs:
        x = scores[scores[by] == g]
        xa, xb = (x[x[model] == k].set_index(unit)[value] for k in (a, b))
        units = xa.index.union(xb.index)  # a seed one model lacks is dropped by the paired statistics (NaN)
        c = compare_seeds(xa.reindex(units).to_numpy(np.float64), xb.reindex(units).to_numpy(np.float64),
                          claim=claim(g, a, b) if claim else f"{g}: {a} > {b}", generator=generator,
                          bounds=bounds, min_seeds=min_seeds or MIN_SEEDS, **(validity(g, a, b) if validity else {}))
        rows.append({by: g, model: a, "vs": b, "delta": c.estimate, "lo": c.lo, "hi": c.hi, "p_wilcoxon": c.p_value,
                     "n_units": c.n, "comparison": c})
    return pd.DataFrame(rows, columns=[by, model, "vs", "delta", "lo", "hi", "p_wilcoxon", "n_units", "comparison"])


def min_units(n_claims: int, alpha: float = ALPHA, two_sided: bool = True) -> int:
    """Fewest units (patients for the sign-flip test, seeds for Wilcoxon) at which a claim can be "reproduced".

    Both exact tests reach at best p = 2 / 2^n two-sided (1 / 2^n one-sided), and Holm multiplies the smallest p of
    the run by the number of tested claims, so n must satisfy n_claims * 2 / 2^n < alpha. Below it every claim is
    at best "inconclusive", whatever the data: a chapter should say so.
    """
    k = 2.0 if two_sided else 1.0
    n = 1
    while max(n_claims, 1) * k / 2.0**n >= alpha:
        n += 1
    return n


# ---------------------------------------------------------------------------------------------------------------
# tables of scored rows with the right unit

def slice_intervals(rows: pd.DataFrame, by: Sequence[str], *, generator: np.random.Generator,
                    n_resamples: int = N_RESAMPLES) -> pd.DataFrame:
    """Mean and patient-level interval of long-form scores per group (image quality, faithfulness).

    Within each group of `by`, each slice's scores are averaged over sampling seeds (`unit_means`), then the mean
    over slices gets a cluster bootstrap interval by patient (`cluster_bootstrap`); never a t-interval over slices.

    Args:
        rows: long rows with columns `by`, "slice", "patient" and "value" (e.g. `scoring.Scored.rows`).
        by: grouping columns, e.g. ["model", "metric", "class"].
        generator: numpy Generator for the bootstraps (groups are visited in sorted order).
    Returns:
        One row per group: `by`, mean, lo, hi, patients, slices.
    """
    out = []
    for key, g in rows.groupby(list(by), sort=True, dropna=False):
        m, cl, _ = unit_means(g["value"], g["slice"], g["patient"])
        iv = cluster_bootstrap(m, cl, generator=generator, n_resamples=n_resamples)
        key = key if isinstance(key, tuple) else (key,)
        out.append({**dict(zip(by, key)), "mean": iv.estimate, "lo": iv.lo, "hi": iv.hi, "patients": iv.n,
                    "slices": len(m)})
    return pd.DataFrame(out, columns=[*by, "mean", "lo", "hi", "patients", "slices"])


# ---------------------------------------------------------------------------------------------------------------
# plain interval and test over independent values (benchmarks of a sampler, never a verdict)

def _finite(values) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64).ravel()
    return v[~np.isnan(v)]


def mean_ci(values, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """Mean and two-sided Student-t confidence interval (NaNs skipped), for values that are independent
    replications; verdicts use `slice_intervals` or `seed_interval` instead.

    Returns (mean, lo, hi); (nan, nan, nan) for no values, (mean, nan, nan) for one value.
    """
    v = _finite(values)
    if len(v) == 0:
        return (math.nan, math.nan, math.nan)
    m = float(v.mean())
    if len(v) == 1:
        return (m, math.nan, math.nan)
    half = float(stats.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return (m, m - half, m + half)


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
