"""The verdict rule, Holm's correction, patient-level intervals, paired tests, instruments and the claims table."""
import math
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest

from difflung.judging import instruments as I
from difflung import labels as L
from difflung.judging import reported
from difflung.judging.stats import (Comparison, cluster_bootstrap, compare_seeds, compare_slices, holm, judge_claims,
                            same_order_of_magnitude, seed_interval, sign_flip_test, unit_means, verdict, wilcoxon_seeds)


# ---------------------------------------------------------------------------------------------------------------
# Holm: hand-computed cases (statsmodels' multipletests(method="holm") formula)

@pytest.mark.parametrize("p, expected", [
    # sorted 0.005, 0.01, 0.03, 0.04 -> 4*0.005=0.02, 3*0.01=0.03, 2*0.03=0.06, 1*0.04=0.04 -> running max 0.06
    ([0.01, 0.04, 0.03, 0.005], [0.03, 0.06, 0.06, 0.02]),
    ([0.5, 0.2, 0.01], [0.5, 0.4, 0.03]),  # 3*0.01, 2*0.2, 1*0.5
    ([0.4, 0.6], [0.8, 0.8]),  # 2*0.4=0.8, max(0.8, 0.6)
    ([0.3, 0.9, 0.7], [0.9, 1.0, 1.0]),  # 3*0.3=0.9; 2*0.7=1.4 capped at 1; 1*0.9 -> running max 1
])
def test_holm_hand_computed(p, expected):
    assert holm(p) == pytest.approx(expected)


def test_holm_skips_untested_claims():
    out = holm([math.nan, 0.02, 0.04])
    assert math.isnan(out[0]) and out[1:] == pytest.approx([0.04, 0.04])  # m = 2, not 3
    assert holm([0.03]) == pytest.approx([0.03])
    with pytest.raises(ValueError):
        holm([1.5])


# ---------------------------------------------------------------------------------------------------------------
# verdicts: every one reachable

def _c(**kw):
    base = dict(claim="A > B", estimate=1.0, lo=0.5, hi=1.5, p_value=0.001, p_adjusted=0.001, reported=1.0, n=6,
                unit="test patients")
    base.update(kw)
    return Comparison(**base)


def test_verdict_reproduced():
    v = verdict(_c())
    assert v.label == v.text == "reproduced" and v.same_magnitude is True


def test_verdict_needs_adjusted_p_as_well_as_interval():
    v = verdict(_c(p_adjusted=0.2))
    assert v.label == "inconclusive" and "0.2" in v.note


def test_verdict_not_reproduced():
    assert verdict(_c(estimate=-1.0, lo=-1.5, hi=-0.5)).label == "not reproduced"


def test_verdict_inconclusive_interval_spans_zero_or_missing():
    assert verdict(_c(lo=-0.1, hi=1.5)).label == "inconclusive"
    v = verdict(_c(lo=math.nan, hi=math.nan, n=2, unit="training seeds"))
    assert v.label == "inconclusive" and "2 training seeds" in v.note


def test_verdict_direction_less():
    assert verdict(_c(estimate=-1.0, lo=-1.5, hi=-0.5, direction="less", reported=-1.0)).label == "reproduced"
    assert verdict(_c(direction="less")).label == "not reproduced"


def test_verdict_non_inferiority_margin():
    # a small drop inside the margin is "not worse than": reproduced; wholly below -margin: not reproduced
    assert verdict(_c(estimate=-0.002, lo=-0.005, hi=0.001, margin=0.01)).label == "reproduced"
    assert verdict(_c(estimate=-0.002, lo=-0.005, hi=0.001, margin=0.0)).label == "inconclusive"
    assert verdict(_c(estimate=-0.05, lo=-0.08, hi=-0.02, margin=0.01)).label == "not reproduced"


@pytest.mark.parametrize("flag", ["instrument_ok", "converged", "measurable"])
def test_verdict_not_measurable_beats_a_clear_effect(flag):
    v = verdict(_c(**{flag: False}, reason="judge Dice on real emphysema 0.00 < floor 0.3"))
    assert v.label == "not measurable" and v.text == "not measurable: judge Dice on real emphysema 0.00 < floor 0.3"
    assert verdict(_c(**{flag: False})).text.startswith("not measurable: ")


def test_verdict_rejects_bad_claims():
    with pytest.raises(ValueError):
        verdict(_c(direction="up"))
    with pytest.raises(ValueError):
        verdict(_c(margin=-0.1))


def test_order_of_magnitude_column():
    assert same_order_of_magnitude(1.0, 1.06) is True
    assert same_order_of_magnitude(0.05, 1.06) is False  # 20x smaller
    assert same_order_of_magnitude(-1.0, 1.06) is False  # opposite sign
    assert same_order_of_magnitude(1.0, 0.0) is None and same_order_of_magnitude(math.nan, 1.0) is None


def test_judge_claims_adjusts_only_measurable_claims():
    cs = [_c(claim="a", p_value=0.01), _c(claim="b", p_value=0.02),
          _c(claim="c", p_value=0.0001, instrument_ok=False, reason="judge fails")]
    t = judge_claims(cs).set_index("claim")
    assert t.loc["a", "p (Holm)"] == pytest.approx(0.02) and t.loc["b", "p (Holm)"] == pytest.approx(0.02)
    assert math.isnan(t.loc["c", "p (Holm)"]) and t.loc["c", "verdict"] == "not measurable: judge fails"
    assert list(t["verdict"][:2]) == ["reproduced", "reproduced"]
    # Holm can turn a raw p below alpha into inconclusive
    t2 = judge_claims([_c(claim=str(i), p_value=0.03) for i in range(3)])
    assert set(t2["verdict"]) == {"inconclusive"} and t2["p (Holm)"].tolist() == pytest.approx([0.09] * 3)


# ---------------------------------------------------------------------------------------------------------------
# intervals

def test_cluster_bootstrap_coverage_beats_slice_bootstrap():
    """200 data sets of 10 patients x 5 slices with a patient effect (ICC 0.5), true mean 0: the patient-level
    90 % interval covers about 90 % (percentile bootstrap with 10 clusters runs a little low), the interval that
    treats slices as independent far less."""
    rng = np.random.default_rng(0)
    hit = naive = 0
    for _ in range(200):
        v = (rng.normal(0, 1, 10)[:, None] + rng.normal(0, 1, (10, 5))).ravel()
        c = np.repeat(np.arange(10), 5)
        iv = cluster_bootstrap(v, c, generator=rng, n_resamples=999, confidence=0.9)
        hit += iv.lo <= 0 <= iv.hi
        iv = cluster_bootstrap(v, np.arange(50), generator=rng, n_resamples=999, confidence=0.9)
        naive += iv.lo <= 0 <= iv.hi
    assert 0.76 <= hit / 200 <= 0.96
    assert naive / 200 < hit / 200 - 0.1


def test_cluster_bootstrap_is_reproducible_and_degenerate_cases():
    v, c = np.arange(12.0), np.repeat([0, 1, 2, 3], 3)
    a = cluster_bootstrap(v, c, generator=np.random.default_rng(1), n_resamples=499)
    b = cluster_bootstrap(v, c, generator=np.random.default_rng(1), n_resamples=499)
    assert a == b and a.n == 4 and a.estimate == pytest.approx(5.5) and a.lo < 5.5 < a.hi
    one = cluster_bootstrap(v, np.zeros(12), generator=np.random.default_rng(1))
    assert one.n == 1 and math.isnan(one.lo)
    assert cluster_bootstrap(np.ones(6), c[:6], generator=np.random.default_rng(1))[1:3] == (1.0, 1.0)


def test_unit_means_averages_sampling_seeds_per_slice():
    vals = np.array([1.0, 3.0, 10.0, 20.0, np.nan])
    m, cl, ids = unit_means(vals, units=[0, 0, 1, 1, 1], clusters=["p1", "p1", "p2", "p2", "p2"])
    assert m.tolist() == [2.0, 15.0] and cl.tolist() == ["p1", "p2"] and ids.tolist() == [0, 1]
    with pytest.raises(ValueError, match="two clusters"):
        unit_means([1.0, 2.0], units=[0, 0], clusters=["p1", "p2"])


def test_seed_interval_needs_five_seeds_and_stays_in_bounds():
    g = np.random.default_rng(0)
    assert seed_interval([0.1, 0.9], generator=g) is None
    iv = seed_interval([0.0, 0.02, 0.97, 1.0, 0.99], generator=g)
    assert 0.0 <= iv.lo <= iv.estimate <= iv.hi <= 1.0 and iv.n == 5
    d = seed_interval([-0.2, 0.1, 0.3, -0.1, 0.05, 0.2], generator=g, bounds=(-1, 1))
    assert -0.2 <= d.lo < d.hi <= 0.3
    with pytest.raises(ValueError, match="bounds"):
        seed_interval([0.5, 1.2, 0.3, 0.4, 0.2], generator=g)


# ---------------------------------------------------------------------------------------------------------------
# paired tests

def test_wilcoxon_seeds():
    a, b = np.array([0.8, 0.82, 0.79, 0.85, 0.81, 0.83]), np.array([0.6, 0.61, 0.62, 0.58, 0.6, 0.59])
    assert wilcoxon_seeds(a, b) == pytest.approx(2 / 2**6)  # exact: all 6 differences positive
    assert wilcoxon_seeds(a, b, alternative="greater") == pytest.approx(1 / 2**6)
    assert wilcoxon_seeds(b, b + 0.005, alternative="greater", margin=0.01) == pytest.approx(1 / 2**6)
    assert math.isnan(wilcoxon_seeds(a, a))


def test_sign_flip_test_works_on_patients_not_slices():
    g = np.random.default_rng(0)
    # 5 patients, 20 slices each, every patient better: exact two-sided p = 2 / 2^5 however many slices
    d = np.repeat([0.5, 0.4, 0.6, 0.3, 0.7], 20)
    p = sign_flip_test(d, np.repeat(np.arange(5), 20), generator=g)
    assert p == pytest.approx(2 / 32)
    # 3 patients can never reach p < 0.05 two-sided
    assert sign_flip_test(d[:60], np.repeat(np.arange(3), 20), generator=g) == pytest.approx(0.25)
    assert sign_flip_test(d, np.repeat(np.arange(5), 20), generator=g, alternative="less") == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------------
# instruments

def test_judge_validity_floors():
    v = I.judge_validity({"lung": 0.93, "emphysema": 0.0, "fibrosis": 0.31, "ggo": float("nan"), "body": 0.65})
    assert v["lung"] == (True, "") and v["fibrosis"] == (True, "")
    assert v["emphysema"][0] is False and "0.3" in v["emphysema"][1]
    assert v["ggo"] == (False, "ggo absent from the test truth")
    assert v["body"][0] is False and "0.7" in v["body"][1]


def test_judge_failure_makes_the_claim_not_measurable():
    ok, reason = I.judge_validity({"emphysema": 0.0})["emphysema"]
    v = verdict(_c(instrument_ok=ok, reason=reason))
    assert v.text == "not measurable: judge Dice on real emphysema 0 < floor 0.3"
    # a value just under the floor reads as under it (two decimals printed 0.298 as "0.30 < floor 0.3")
    assert I.judge_validity({"emphysema": 0.298})["emphysema"][1] == "judge Dice on real emphysema 0.298 < floor 0.3"


def test_hu_signature_emphysema_and_ranges():
    lab = np.full((1, 10, 10), L.LUNG)
    lab[0, :5] = L.EMPHYSEMA
    hu = np.full(lab.shape, -850.0)
    hu[0, :5] = -980.0  # all emphysema below -950
    assert I.hu_signature(hu, lab, "emphysema") == (True, "")
    hu[0, :5] = -820.0  # resized away: emphysema no darker than lung
    ok, why = I.hu_signature(hu, lab, "emphysema")
    assert not ok and "0%" in why
    lab[0, 5:7] = L.GGO
    hu[0, 5:7] = -500.0
    assert I.hu_signature(hu, lab, L.GGO) == (True, "")
    hu[0, 5:7] = -880.0
    assert I.hu_signature(hu, lab, "ggo")[0] is False
    assert I.hu_signature(hu, lab, "lung") == (True, "")  # anatomy: no signature check
    assert I.hu_signature(hu, lab, "fibrosis") == (False, "fibrosis absent")


def test_dice_ratios_skip_classes_the_judge_cannot_judge():
    real = {"lung": 0.9, "emphysema": 0.1, "fibrosis": 0.5}
    r = I.dice_ratios({"lung": 0.81, "emphysema": 0.1, "fibrosis": 0.25}, real, I.judge_validity(real))
    assert r == pytest.approx({"lung": 0.9, "fibrosis": 0.5})


def test_convergence_table():
    t = I.convergence(dice_ratio={"lung": 0.95, "emphysema": 0.7}, hu_w1={"lung": 20.0, "emphysema": float("nan")},
                      air_share=0.96, classifier_accuracy=0.81)
    assert t["met"].tolist() == [True, False, True, False, True, False]
    assert not I.converged(t) and I.converged(t[t["met"]]) and not I.converged(t.iloc[:0])


# ---------------------------------------------------------------------------------------------------------------
# the claims table

def test_claims_come_from_the_poster_tables():
    claims = {c.key: c for c in reported.CLAIMS}
    assert len(claims) == len(reported.CLAIMS) == 12
    assert not any(w in c.text for c in claims.values() for w in ("GFLOP", "cost", "10x"))  # cost: ratios only
    assert {c.table for c in claims.values()} == {reported.TABLE_QUALITY, reported.TABLE_SEGMENTATION}
    m = [c for c in claims.values() if c.margin > 0]
    assert [c.key for c in m] == ["dice_lung_difflung_vs_ref"] and len(m[0].margin_reason) > 20
    q = reported.IMAGE_QUALITY
    psnr = claims["psnr_difflung_vs_segguided"].reported
    assert psnr == pytest.approx(q["difflung"]["psnr"] - q["segguided"]["psnr"])


def test_cost_ratios_have_no_verdict():
    f = reported.cost_ratio_frame({"difflung": {"gflops_per_image": 3.0}, "pix2pix": {"gflops_per_image": 1.5}})
    assert list(f.columns) == ["comparison", "metric", "reported ratio", "our ratio"]
    assert f.loc[0, "our ratio"] == pytest.approx(2.0) and np.isnan(f.loc[1, "our ratio"])


# ---------------------------------------------------------------------------------------------------------------
# builders

def test_compare_slices_uses_patients_as_the_unit():
    rng = np.random.default_rng(0)
    slices = np.tile(np.arange(30), 2)  # 30 slices x 2 sampling seeds
    patients = slices // 5  # 6 patients
    b = rng.normal(15, 1, 60)
    c = compare_slices(b + 2.0 + rng.normal(0, 0.1, 60), b, slices, patients, claim="A PSNR > B PSNR",
                       generator=np.random.default_rng(1), reported=1.06)
    assert c.n == 6 and c.unit == "test patients" and c.lo > 1.5 and c.p_value == pytest.approx(2 / 64)
    assert judge_claims([c]).loc[0, "verdict"] == "reproduced"
    bad = compare_slices(b + 2.0, b, slices, patients, claim="x", generator=np.random.default_rng(1),
                         converged=False, reason="Diff-Lung did not meet its convergence criteria")
    assert verdict(bad).text == "not measurable: Diff-Lung did not meet its convergence criteria"


def test_compare_seeds_no_interval_below_five_seeds():
    g = np.random.default_rng(0)
    two = compare_seeds([0.8, 0.9], [0.5, 0.6], claim="Dice", generator=g)
    assert two.n == 2 and math.isnan(two.lo)
    assert verdict(replace(two, p_adjusted=0.01)).label == "inconclusive"
    six = compare_seeds([0.8, 0.82, 0.79, 0.85, 0.81, 0.83], [0.6, 0.61, 0.62, 0.58, 0.6, 0.59], claim="Dice",
                        generator=g, reported=0.2)
    assert six.n == 6 and 0.17 < six.lo < six.hi < 0.27 and six.p_value == pytest.approx(2 / 64)
    t = judge_claims([six])
    assert t.loc[0, "verdict"] == "reproduced" and bool(t.loc[0, "same order as reported"])


def test_min_units_for_a_reproducible_claim():
    from difflung.judging.stats import min_units
    assert min_units(1) == 6  # 2/2^5 = 0.0625 >= 0.05, 2/2^6 = 0.031
    assert min_units(12) == 9  # 12 * 2/2^8 = 0.094, 12 * 2/2^9 = 0.047
    assert min_units(12, two_sided=False) == 8
    # the bound is real: 8 patients all better, 12 claims -> Holm p >= 0.05 -> inconclusive
    d, pats = np.repeat(np.linspace(0.3, 1.0, 8), 3), np.repeat(np.arange(8), 3)
    p = sign_flip_test(d, pats, generator=np.random.default_rng(0))
    assert p == pytest.approx(2 / 2**8) and holm([p] * 12)[0] >= 0.05


# ---------------------------------------------------------------------------------------------------------------
# plain intervals and tests (benchmarks), and comparisons over training seeds

def test_mean_ci_values_and_coverage():
    from difflung.judging.stats import mean_ci

    m, lo, hi = mean_ci([1.0, 2.0, 3.0, np.nan])
    assert m == 2.0 and (lo, hi) == pytest.approx((2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)), 1e-5)
    assert mean_ci([5.0])[0] == 5.0 and math.isnan(mean_ci([5.0])[1])
    assert all(math.isnan(v) for v in mean_ci([]))
    rng = np.random.default_rng(1)
    hits = sum(lo <= 0.7 <= hi for _, lo, hi in (mean_ci(rng.normal(0.7, 0.1, 12)) for _ in range(400)))
    assert 0.91 <= hits / 400 <= 0.98


def test_paired_tests():
    from difflung.judging.stats import paired_test

    a = np.array([0.80, 0.82, 0.79, 0.85, 0.81, 0.83, 0.84])
    r = paired_test(a, a - 0.05, "wilcoxon")
    assert r.n == 7 and r.p == pytest.approx(2 / 2**7)  # all 7 differences positive: exact p = 2 / 2^7
    assert paired_test(a, a, "wilcoxon").p == 1.0
    assert math.isnan(paired_test([0.5], [0.4], "wilcoxon").p)
    r = paired_test(np.r_[a, np.nan], np.r_[a - 0.05, 0.1], "wilcoxon")
    assert r.n == 7
    r = paired_test(np.linspace(0, 1, 30), np.linspace(2, 3, 40), "ranksum")
    assert r.p < 1e-6 and r.statistic < 0
    with pytest.raises(ValueError, match="unknown test"):
        paired_test(a, a, "ttest")


def _seed_scores(n_seeds):
    return pd.DataFrame([{"model": m, "seed": s, "class": "emphysema", "value": 0.5 + 0.01 * s + gain}
                         for m, gain in (("ref", 0.0), ("better", 0.1), ("worse", -0.02)) for s in range(n_seeds)])


def test_compare_to_reference_pairs_units():
    """Seed s of every model is paired with seed s of ref; the statistics are compare_seeds'."""
    from difflung.judging import stats

    t = stats.compare_to_reference(_seed_scores(6), "ref", generator=np.random.default_rng(0)).set_index("model")
    assert list(t.index) == ["better", "worse"] and (t.vs == "ref").all()
    assert t.loc["better", "delta"] == pytest.approx(0.1) and t.loc["better", "n_units"] == 6
    assert t.loc["better", "p_wilcoxon"] == pytest.approx(2 / 2**6)  # 6 positive pairs: exact p = 2 / 2^6
    assert t.loc["worse", "delta"] == pytest.approx(-0.02) and t.loc["worse", "hi"] < 0
    c = t.loc["better", "comparison"]
    assert isinstance(c, stats.Comparison) and c.unit == "training seeds" and c.claim == "emphysema: better > ref"
    v = stats.judge_claims(t.comparison.tolist()).set_index("claim")["verdict"]
    assert v["emphysema: worse > ref"] == "not reproduced"
    assert v["emphysema: better > ref"] == "inconclusive"  # Holm: 2 x 2/2^6 = 0.0625


def test_compare_to_reference_no_interval_below_five_seeds_and_validity():
    from difflung.judging import stats

    t = stats.compare_to_reference(_seed_scores(4), "ref", generator=np.random.default_rng(0),
                                   pairs=[("emphysema", "better", "worse"), ("emphysema", "worse", "ref")],
                                   validity=lambda g, a, b: {"converged": False, "reason": "x not converged"}
                                   if "worse" in (a, b) and b == "ref" else {})
    assert t.delta.tolist() == pytest.approx([0.12, -0.02])
    assert t.lo.isna().all() and t.hi.isna().all()  # 4 seeds: no interval, only the per-seed values
    v = stats.judge_claims(t.comparison.tolist())["verdict"].tolist()
    assert v == ["inconclusive", "not measurable: x not converged"]
