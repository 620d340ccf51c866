"""Statistics for the verdicts: intervals with the right unit, one paired test per claim, Holm's correction, one
verdict rule.

Units of replication:
- Image quality: the unit is the test *patient*. A slice's score is first averaged over sampling seeds
  (`unit_means`), then the mean over slices gets a patient-level interval (`cluster_interval`), because slices of
  one patient are not independent; treating them as independent makes intervals far too narrow.
- Segmentation: the unit is the *training seed*. An interval is given only from at least `min_seeds` seeds
  (`seed_interval`); below that a chapter shows the per-seed dots and no interval.

Interval and test: Student's t, both from the same t-statistic. A test split has about 9 patients and a run about
9 training seeds; a percentile bootstrap over 9 units covers about 89 % where it claims 95 % (it cannot see
variation beyond the sample's range), while the t-interval holds its level (simulated in `tests/test_stats.py`,
2,000 samples of 9: normal 95.3 % against the percentile's 88.9 %; chi-square(8), skewness 1, 94.1 % against
88.0 %). Under strong skew it too runs low (exponential, skewness 2: 89 %), but unit differences here are means
over many slices, which the central limit theorem pulls towards normal.

The one test per claim is a two-sided t-test of the mean unit difference against the claim's threshold (0, or the
non-inferiority margin): over training seeds the one-sample t-test of per-seed differences; over patients its
cluster-robust form (`cluster_t`: the mean over slices with a CR1 standard error and G - 1 degrees of freedom,
which with equal slices per patient is the one-sample t-test of the patients' means). Because interval and p come
from the same t-statistic, a raw p < 0.05 holds exactly when the 95 % interval excludes the threshold. The
*Holm-adjusted* p decides (Holm within each family of claims, over the claims that were tested); the interval is
the unadjusted 95 % one, so after Holm a claim whose interval excludes the threshold can still be inconclusive (its
note says so), but a significant claim's interval always lies on its verdict's side (`verdict` raises otherwise).

Every claim goes through `verdict` (one rule for every chapter), after Holm's correction within its family
(`holm`, or `judge_claims`, which does both).
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
MIN_SEEDS = 5  # fewer training seeds: per-seed dots, no interval and no test
MIN_TEST_UNITS = 2  # a t-test needs one degree of freedom

VERDICTS = ("reproduced", "contradicted", "inconclusive", "not measurable")
MAGNITUDES = ("smaller than reported", "as reported", "larger than reported")


class Interval(NamedTuple):
    estimate: float  # the mean
    lo: float
    hi: float
    n: int  # number of units (clusters, or seeds)


class TStat(NamedTuple):
    """A mean with its standard error and degrees of freedom: the one source of a claim's interval and p-value."""
    estimate: float
    se: float  # NaN: no spread measurable (fewer than 2 units)
    df: int
    n: int  # units

    def interval(self, confidence: float = CONFIDENCE) -> tuple[float, float]:
        """Two-sided t-interval (NaN, NaN without a standard error; zero width when every unit agrees)."""
        if not np.isfinite(self.se):
            return (math.nan, math.nan)
        half = float(stats.t.ppf(0.5 + confidence / 2, self.df)) * self.se
        return (self.estimate - half, self.estimate + half)

    def pvalue(self, null: float = 0.0) -> float:
        """Two-sided p of the t-test "mean == null"; NaN without a standard error or when every unit sits exactly on
        the null (no evidence either way); 0 when every unit agrees on a value other than the null."""
        if not (np.isfinite(self.se) and np.isfinite(self.estimate)):
            return math.nan
        if self.se == 0:
            return math.nan if self.estimate == null else 0.0
        return float(2 * stats.t.sf(abs(self.estimate - null) / self.se, self.df))


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


def cluster_t(values, clusters) -> TStat:
    """Mean over slices with a cluster-robust (CR1) standard error by patient, G - 1 degrees of freedom.

    With per-patient sums s_g and counts n_g, the estimate is sum s_g / sum n_g (the plain mean over slices) and
    se^2 = G / (G - 1) * sum_g (s_g - estimate * n_g)^2 / (sum n_g)^2. With equal slices per patient this is the
    one-sample t-statistic of the patients' means; slices of one patient are never counted as independent.

    Args:
        values: (N,) one score per unit (slice), already averaged over sampling seeds (see `unit_means`); for a
            paired comparison pass per-slice differences. NaNs are skipped.
        clusters: (N,) cluster (patient) id of each value.
    Returns:
        TStat(mean, se, G - 1, G); se is NaN with fewer than 2 clusters.
    """
    v, c = np.asarray(values, dtype=np.float64).ravel(), np.asarray(clusters).ravel()
    if v.shape != c.shape:
        raise ValueError(f"values {v.shape} and clusters {c.shape} must have the same length")
    keep = np.isfinite(v)
    v, c = v[keep], c[keep]
    if v.size == 0:
        return TStat(math.nan, math.nan, 0, 0)
    _, inv = np.unique(c, return_inverse=True)
    sums, counts = np.bincount(inv, weights=v), np.bincount(inv).astype(np.float64)
    g, est = len(counts), float(v.mean())
    if g < MIN_TEST_UNITS:
        return TStat(est, math.nan, 0, g)
    resid = sums - est * counts
    resid = np.where(np.abs(resid) < 1e-12 * max(1.0, float(np.abs(sums).max())), 0.0, resid)  # exact agreement
    se = math.sqrt(g / (g - 1) * float((resid ** 2).sum())) / float(counts.sum())
    return TStat(est, se, g - 1, g)


def cluster_interval(values, clusters, *, confidence: float = CONFIDENCE) -> Interval:
    """Patient-level t-interval of the mean of `values` (`cluster_t`).

    Args:
        values: (N,) one score per slice (averaged over sampling seeds); NaNs skipped.
        clusters: (N,) patient id of each value.
        confidence: two-sided confidence level.
    Returns:
        Interval(mean, lo, hi, n_clusters); lo/hi are NaN with fewer than 2 clusters.
    """
    t = cluster_t(values, clusters)
    return Interval(t.estimate, *t.interval(confidence), t.n)


def seed_t(values) -> TStat:
    """Mean over training seeds with its standard error (sd / sqrt(n), n - 1 degrees of freedom); NaNs skipped."""
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size < MIN_TEST_UNITS:
        return TStat(float(v.mean()) if v.size else math.nan, math.nan, 0, int(v.size))
    sd = 0.0 if np.all(v == v[0]) else float(v.std(ddof=1))
    return TStat(float(v.mean()), sd / math.sqrt(v.size), int(v.size) - 1, int(v.size))


def seed_interval(values, *, generator: np.random.Generator | None = None, min_seeds: int = MIN_SEEDS,
                  bounds: tuple[float, float] = (0.0, 1.0), confidence: float = CONFIDENCE) -> Interval | None:
    """t-interval of the mean over training seeds (`seed_t`), clipped to the metric's `bounds`, or None with fewer
    than `min_seeds` seeds.

    Clipping to the metric's range only removes impossible values, so the interval's coverage is unchanged.

    Args:
        values: (n_seeds,) one score per training seed (e.g. Dice, or a paired Dice difference with
            bounds=(-1, 1)); NaNs are skipped.
        generator: unused (the t-interval draws nothing); accepted so that callers written for the former
            bootstrap need not change.
        min_seeds: fewest seeds that get an interval.
        bounds: the metric's range; values outside it are an error.
    Returns:
        Interval(mean, lo, hi, n_seeds), or None when there are fewer than `min_seeds` finite values.
    """
    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if v.size and (v.min() < bounds[0] or v.max() > bounds[1]):
        raise ValueError(f"seed values {v.min():.4g}..{v.max():.4g} lie outside the metric's bounds {bounds}")
    if v.size < max(min_seeds, MIN_TEST_UNITS):
        return None
    t = seed_t(v)
    lo, hi = t.interval(confidence)
    return Interval(t.estimate, max(lo, bounds[0]), min(hi, bounds[1]), t.n)


# ---------------------------------------------------------------------------------------------------------------
# multiple comparisons

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
        p_value: raw two-sided p of the claim's t-test against its threshold (from the same t-statistic as the
            interval); NaN if untested.
        p_adjusted: Holm-adjusted p-value (filled by `judge_claims`); NaN when not adjusted.
        direction: "greater" (claim: a > b) or "less" (a < b).
        margin: non-inferiority margin (> 0: the claim is "a not worse than b by more than margin").
        reported: the poster's effect (a - b), for the magnitude note; NaN if none.
        instrument_ok, measurable: validity flags (an instrument failed; the class or the main model cannot be
            measured); either False makes the claim "not measurable" with `reason`.
        converged: whether the generators involved met their convergence criteria. It never gates a verdict (a
            weaker baseline must still be comparable); False only puts `reason` into the convergence note.
        convergence: the convergence note itself (e.g. "Seg-Guided missed its criteria"), shown beside the verdict.
        unit: what the interval is over ("test patients", "training seeds").
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
    convergence: str = ""
    exact_range: tuple[float, float] | None = None  # an exact measurement (a cost ratio): the range it must lie in

    @property
    def valid(self) -> bool:
        """Whether the claim can be measured at all (instruments worked, class and main model usable)."""
        return bool(self.instrument_ok and self.measurable)

    @property
    def convergence_note(self) -> str:
        """The convergence note (never a gate): `convergence`, else `reason` when only convergence failed."""
        if self.convergence:
            return self.convergence
        return (self.reason or "a generator missed its convergence criteria") if self.valid and not self.converged \
            else ""


@dataclass(frozen=True)
class Verdict:
    label: str  # one of VERDICTS, "not measurable" carrying its reason in `text`
    text: str  # as printed: "not measurable: <reason>" or the label
    note: str  # why, in a few words
    magnitude: str | None  # one of MAGNITUDES; None without a reported number or an interval, or not measurable


def threshold(direction: str, margin: float = 0.0) -> float:
    """The value of a - b the claim's test is against: 0, or -margin ("greater") / +margin ("less")."""
    if direction not in ("greater", "less"):
        raise ValueError(f"direction must be 'greater' or 'less', got {direction!r}")
    if margin < 0:
        raise ValueError(f"margin must be >= 0, got {margin}")
    return -margin if direction == "greater" else margin


def magnitude_note(lo: float, hi: float, reported: float, direction: str = "greater") -> str | None:
    """Where the poster's number lies against our interval, read in the claimed direction: "as reported" when the
    interval includes it, "smaller than reported" / "larger than reported" when it lies wholly below / above it;
    None when there is no reported number or no interval."""
    if not (np.isfinite(lo) and np.isfinite(hi) and np.isfinite(reported)):
        return None
    s = 1.0 if direction == "greater" else -1.0
    lo, hi = sorted((s * lo, s * hi))
    r = s * reported
    return MAGNITUDES[0] if hi < r else MAGNITUDES[2] if lo > r else MAGNITUDES[1]


def verdict(c: Comparison, alpha: float = ALPHA) -> Verdict:
    """The one verdict rule of the book.

    1. not measurable: an instrument failed, the class cannot be measured (absent, HU signature lost) or the main
       model never learned its masks -- with the reason. A baseline's convergence never gates (see `Comparison`).
    2. reproduced: Holm-adjusted p < alpha and the estimate on the claimed side of the threshold (0, or -margin
       for a non-inferiority claim);
    3. contradicted: Holm-adjusted p < alpha and the estimate on the other side;
    4. inconclusive: anything else (including no interval or no test, e.g. fewer than `MIN_SEEDS` seeds).
    An exact measurement (`exact_range`: a cost ratio, FLOPs counted) has no sampling unit: reproduced when it lies
    in the claim's range, else contradicted; "as reported" within a factor 2 of the poster's ratio.
    The Holm-adjusted p decides; since interval and p come from one t-statistic, a significant claim's interval
    lies wholly on its verdict's side (a Comparison where it does not is an error, not a verdict).
    """
    if not c.valid:
        failed = [k for k, ok in (("instrument", c.instrument_ok), ("measurability", c.measurable)) if not ok]
        reason = c.reason or f"{', '.join(failed)} check failed"
        return Verdict("not measurable", f"not measurable: {reason}", reason, None)
    if c.exact_range is not None:  # no sampling unit: the measured value against the claim's range, no test
        if not np.isfinite(c.estimate):
            return Verdict("inconclusive", "inconclusive", "not measured", None)
        lo, hi = c.exact_range
        mag = None if not (np.isfinite(c.reported) and c.reported > 0 and c.estimate > 0) else (
            MAGNITUDES[1] if 0.5 <= c.estimate / c.reported <= 2 else
            MAGNITUDES[0] if c.estimate < c.reported else MAGNITUDES[2])
        why = f"an exact measurement ({c.estimate:.3g}x), no sampling unit: read against {lo:g} .. {hi:g}"
        return (Verdict("reproduced", "reproduced", why, mag) if lo <= c.estimate <= hi else
                Verdict("contradicted", "contradicted", why, mag))
    try:
        th = threshold(c.direction, c.margin)
    except ValueError as e:
        raise ValueError(f"{c.claim}: {e}") from None
    mag = magnitude_note(c.lo, c.hi, c.reported, c.direction)
    if not (np.isfinite(c.lo) and np.isfinite(c.hi)):
        return Verdict("inconclusive", "inconclusive", f"no interval (n = {c.n} {c.unit})".strip(), None)
    if not np.isfinite(c.p_adjusted):
        return Verdict("inconclusive", "inconclusive", "not tested", mag)
    s = 1.0 if c.direction == "greater" else -1.0
    if c.p_adjusted < alpha:
        if c.lo < th < c.hi:
            raise ValueError(f"{c.claim}: adjusted p = {c.p_adjusted:.3g} < {alpha:g} but the interval "
                             f"[{c.lo:.4g}, {c.hi:.4g}] contains the threshold {th:g}: interval and test must come "
                             f"from the same t-statistic")
        if s * (c.estimate - th) > 0:
            return Verdict("reproduced", "reproduced", f"Holm p = {c.p_adjusted:.3g} < {alpha:g}", mag)
        return Verdict("contradicted", "contradicted",
                       f"Holm p = {c.p_adjusted:.3g} < {alpha:g}, in the other direction", mag)
    note = f"Holm p = {c.p_adjusted:.3g} >= {alpha:g}"
    if not (c.lo <= th <= c.hi):
        note += "; the interval excludes the threshold before Holm"
    return Verdict("inconclusive", "inconclusive", note, mag)


COLUMNS = ["claim", "estimate", "lo", "hi", "n", "unit", "reported", "p", "p (Holm)", "verdict", "magnitude", "note",
           "convergence"]


def judge_claims(comparisons: Sequence[Comparison], alpha: float = ALPHA) -> pd.DataFrame:
    """Holm-adjust the p-values of one family of claims (those measurable and tested), then apply `verdict` to each.

    Returns one row per claim: claim, estimate, lo, hi, n, unit, reported, p, p (Holm), verdict, magnitude (one of
    `MAGNITUDES` or None), note (why), convergence (the convergence note, never a gate).
    """
    adj = holm([c.p_value if c.valid else math.nan for c in comparisons])
    rows = []
    for c, a in zip(comparisons, adj):
        c = dataclasses.replace(c, p_adjusted=float(a))
        v = verdict(c, alpha)
        rows.append({"claim": c.claim, "estimate": c.estimate, "lo": c.lo, "hi": c.hi, "n": c.n, "unit": c.unit,
                     "reported": c.reported, "p": c.p_value, "p (Holm)": c.p_adjusted, "verdict": v.text,
                     "magnitude": v.magnitude, "note": v.note, "convergence": c.convergence_note})
    return pd.DataFrame(rows, columns=COLUMNS)


# ---------------------------------------------------------------------------------------------------------------
# builders: one way to turn paired scores into a Comparison, for every chapter

def compare_slices(a, b, slices, patients, *, claim: str, generator: np.random.Generator | None = None,
                   direction: str = "greater", margin: float = 0.0, reported: float = math.nan,
                   **validity) -> Comparison:
    """Image-quality comparison of two generators on the same test slices (unit: test patient).

    Scores are paired by (sampling seed, slice): both generators saw the same mask and the same initial noise.
    The per-pair differences a - b are averaged over sampling seeds per slice (`unit_means`); their mean over
    slices gets a patient-level t-statistic (`cluster_t`), which gives both the 95 % interval and the two-sided
    p of "mean == threshold" (0, or the non-inferiority margin).

    Args:
        a, b: (N,) scores of the two generators, aligned (same seed and slice at each position).
        slices: (N,) slice id of each pair; patients: (N,) patient id of each pair.
        claim, direction, margin, reported: as in `Comparison`.
        generator: unused (the t-test draws nothing); accepted so that existing callers need not change.
        **validity: instrument_ok, converged, measurable, reason, convergence (see `Comparison`).
    """
    th = threshold(direction, margin)
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    m, cl, _ = unit_means(d, slices, patients)
    t = cluster_t(m, cl)
    lo, hi = t.interval()
    return Comparison(claim, t.estimate, lo, hi, p_value=t.pvalue(th), direction=direction, margin=margin,
                      reported=reported, n=t.n, unit="test patients", **validity)


def crossed_t(a: pd.DataFrame, b: pd.DataFrame) -> TStat:
    """Difference of two generators' mean scores with test patients AND training seeds as random units.

    Each generator's scores are averaged over sampling seeds and slices into one value per (training seed,
    patient): matrices A (nA x G) and B (nB x G) over the G patients both were scored on. The estimate is the mean
    over patients of (mean over A's seeds - mean over B's seeds). Its variance adds three parts, each a mean's
    variance over its own units: patients, var(D_g) / G with D_g the patient's difference; A's training seeds,
    var(A's seed means) / nA; B's, likewise (a part with one unit cannot be estimated and counts 0, which the
    claim's unit names). The degrees of freedom are Welch-Satterthwaite's. The seed parts also carry some
    patient-by-seed noise, so the interval errs wide, never narrow. Training seeds are never paired across
    generators: seed k of one model has nothing in common with seed k of another.

    Args:
        a, b: long rows with columns train_seed, seed, slice, patient, value (one generator each).
    Returns:
        TStat(estimate, se, df (rounded down, at least 1), G).
    """
    def matrix(rows):
        per_slice = rows.groupby(["train_seed", "slice", "patient"], sort=True)["value"].mean().reset_index()
        return per_slice.groupby(["train_seed", "patient"])["value"].mean().unstack("patient")
    A, B = matrix(a.dropna(subset=["value"])), matrix(b.dropna(subset=["value"]))
    patients = A.columns.intersection(B.columns)
    A, B = A[patients].dropna(axis=0), B[patients].dropna(axis=0)
    G, na, nb = len(patients), len(A), len(B)
    if G == 0 or na == 0 or nb == 0:
        return TStat(math.nan, math.nan, 0, 0)
    d = A.mean(axis=0).to_numpy() - B.mean(axis=0).to_numpy()  # (G,) per patient
    est = float(d.mean())
    parts = [(float(np.var(d, ddof=1)) / G, G - 1) if G > 1 else (math.nan, 0)]
    for m, n in ((A, na), (B, nb)):
        if n > 1:
            parts.append((float(np.var(m.mean(axis=1).to_numpy(), ddof=1)) / n, n - 1))
    if G < MIN_TEST_UNITS:
        return TStat(est, math.nan, 0, G)
    var = sum(v for v, _ in parts)
    if var <= 1e-24:
        return TStat(est, 0.0, G - 1, G)
    df = var ** 2 / sum(v ** 2 / k for v, k in parts if v > 0)
    return TStat(est, math.sqrt(var), max(1, int(df)), G)


def compare_generators(a: pd.DataFrame, b: pd.DataFrame, *, claim: str, direction: str = "greater",
                       margin: float = 0.0, reported: float = math.nan, **validity) -> Comparison:
    """Image-quality comparison of two generators over every training seed of each (`crossed_t`: test patients x
    training seeds); the interval and the p of "difference == threshold" come from the one t-statistic.

    Args:
        a, b: long rows (train_seed, seed, slice, patient, value) of the two generators on the same test slices.
        claim, direction, margin, reported, **validity: as in `Comparison`.
    """
    t = crossed_t(a, b)
    lo, hi = t.interval()
    na, nb = a["train_seed"].nunique(), b["train_seed"].nunique()
    return Comparison(claim, t.estimate, lo, hi, p_value=t.pvalue(threshold(direction, margin)), direction=direction,
                      margin=margin, reported=reported, n=t.n,
                      unit=f"test patients x training seeds ({na} and {nb})", **validity)


def compare_seeds(a, b, *, claim: str, generator: np.random.Generator | None = None, direction: str = "greater",
                  margin: float = 0.0, reported: float = math.nan, bounds: tuple[float, float] = (-1.0, 1.0),
                  min_seeds: int = MIN_SEEDS, **validity) -> Comparison:
    """Segmentation comparison of two arms over training seeds (unit: training seed).

    Per-seed differences a - b get a t-statistic (`seed_t`) when there are at least `min_seeds` seeds: its 95 %
    interval (clipped to `bounds`, `seed_interval`) and the two-sided p of the one-sample t-test of "mean ==
    threshold" (0, or the non-inferiority margin). Below `min_seeds` there is neither interval nor test, so the
    verdict is at best inconclusive and the claim does not count towards Holm.

    Args:
        a, b: (n_seeds,) scores of the two arms, paired by training seed; pairs with a NaN are dropped.
        bounds: range of a difference (Dice: (-1, 1)).
        other arguments: as in `compare_slices`.
    """
    th = threshold(direction, margin)
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    fin = d[np.isfinite(d)]
    est = float(fin.mean()) if fin.size else math.nan
    iv = seed_interval(fin, min_seeds=min_seeds, bounds=bounds)
    lo, hi, p = (iv.lo, iv.hi, seed_t(fin).pvalue(th)) if iv is not None else (math.nan, math.nan, math.nan)
    return Comparison(claim, est, lo, hi, p_value=p, direction=direction, margin=margin, reported=reported,
                      n=int(fin.size), unit="training seeds", **validity)


def compare_to_reference(scores: pd.DataFrame, ref: str | None = "ref", *, generator: np.random.Generator | None = None,
                         model: str = "model", unit: str = "seed", by: str = "class", value: str = "value",
                         pairs: Sequence[tuple] | None = None, validity: Callable | None = None,
                         claim: Callable | None = None, bounds: tuple[float, float] = (-1.0, 1.0),
                         min_seeds: int | None = None) -> pd.DataFrame:
    """Paired comparisons of models over replication units (training seeds), each a `Comparison`.

    Unit u of model a is paired with unit u of model b (the same training seed: the same initial weights and
    augmentation stream). Each pair goes through `compare_seeds`: the mean paired difference, and from at least
    `min_seeds` units its t-interval and two-sided t-test (none below: the verdict is then at best inconclusive).
    Verdicts come from `judge_claims(table.comparison)` (Holm across the comparisons passed, then the one rule).

    Args:
        scores: one score per (by, model, unit), e.g. per (class, arm, training seed) the mean Dice over slices.
        ref: the reference model, compared with every other model of each group when `pairs` is None.
        generator: unused (kept for existing callers).
        model, unit, by, value: column names.
        pairs: (group, a, b) triples, each tested as "a > b" within group `group`; None: (g, m, ref) for every
            group g and model m != ref, in order of appearance.
        validity: (group, a, b) -> `Comparison` validity kwargs (measurable flag, reason, convergence note).
        claim: (group, a, b) -> the claim's text; default "<group>: a > b".
        bounds: range of a paired difference (Dice: (-1, 1)).
        min_seeds: fewest units that get an interval and a test (default `MIN_SEEDS`).
    Returns:
        One row per pair: by, model (a), vs (b), delta, lo, hi, p, n_units, comparison (the `Comparison`).
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
                          claim=claim(g, a, b) if claim else f"{g}: {a} > {b}",
                          bounds=bounds, min_seeds=min_seeds or MIN_SEEDS, **(validity(g, a, b) if validity else {}))
        rows.append({by: g, model: a, "vs": b, "delta": c.estimate, "lo": c.lo, "hi": c.hi, "p": c.p_value,
                     "n_units": c.n, "comparison": c})
    return pd.DataFrame(rows, columns=[by, model, "vs", "delta", "lo", "hi", "p", "n_units", "comparison"])


def min_units(n_claims: int = 1, alpha: float = ALPHA, two_sided: bool = True) -> int:
    """Fewest units (patients, or seeds) at which a claim can be "reproduced": `MIN_TEST_UNITS`.

    The t-test has no floor on its p-value (unlike an exact rank or sign-flip test, whose smallest p with n units
    is 2 / 2^n), so Holm's correction over `n_claims` raises no minimum; the arguments are kept for callers.
    Intervals over training seeds still need `MIN_SEEDS`.
    """
    if n_claims < 0 or not 0 < alpha < 1:
        raise ValueError(f"n_claims must be >= 0 and alpha in (0, 1), got {n_claims}, {alpha}")
    return MIN_TEST_UNITS


# ---------------------------------------------------------------------------------------------------------------
# tables of scored rows with the right unit

def slice_intervals(rows: pd.DataFrame, by: Sequence[str], *, generator: np.random.Generator | None = None,
                    n_resamples: int | None = None) -> pd.DataFrame:
    """Mean and patient-level interval of long-form scores per group (image quality, faithfulness).

    Within each group of `by`, each slice's scores are averaged over sampling seeds (`unit_means`), then the mean
    over slices gets a patient-level t-interval (`cluster_interval`); never an interval over slices.

    Args:
        rows: long rows with columns `by`, "slice", "patient" and "value" (e.g. `scoring.Scored.rows`).
        by: grouping columns, e.g. ["model", "metric", "class"].
        generator, n_resamples: unused (the t-interval draws nothing); accepted for existing callers.
    Returns:
        One row per group: `by`, mean, lo, hi, patients, slices.
    """
    out = []
    for key, g in rows.groupby(list(by), sort=True, dropna=False):
        m, cl, _ = unit_means(g["value"], g["slice"], g["patient"])
        iv = cluster_interval(m, cl)
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
    replications; verdicts use `compare_slices` or `compare_seeds` instead.

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
