import math

import numpy as np
import pandas as pd
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from difflung.judging import metrics as E
from difflung import labels as L


def test_dice_hand_built_cases():
    target = np.zeros((3, 8, 8), np.uint8)
    target[:, :4] = L.LUNG
    target[0, 4:6, 4:6] = L.EMPHYSEMA
    pred = target.copy()  # image 0: perfect
    pred[1] = 0
    pred[1, 4:, :] = L.LUNG  # image 1: lung disjoint from the target's lung
    pred[2, 6:, 6:] = L.FIBROSIS  # image 2: fibrosis predicted, absent from target -> 0
    d = E.dice_per_class(pred, target, [L.LUNG, L.EMPHYSEMA, L.FIBROSIS]).set_index(["image", "class"])["dice"]
    assert d[0, "lung"] == 1.0 and d[0, "emphysema"] == 1.0
    assert math.isnan(d[0, "fibrosis"])  # absent from both
    assert d[1, "lung"] == 0.0
    assert math.isnan(d[1, "emphysema"])
    assert d[2, "fibrosis"] == 0.0
    # partial overlap: lung of 32 px in the target, the prediction keeps 16 of them: 2 * 16 / (16 + 32)
    half = target[:1].copy()
    half[0, 2:4] = 0
    d = E.dice_per_class(half, target[:1], [L.LUNG])
    assert d["dice"].item() == pytest.approx(2 * 16 / (16 + 32))
    assert list(d.columns) == ["image", "class", "class_id", "dice"]


def test_dice_shape_errors():
    with pytest.raises(ValueError, match="must both be"):
        E.dice_per_class(np.zeros((2, 4, 4)), np.zeros((2, 4, 5)), [0])


def test_psnr_ssim_match_skimage():
    rng = np.random.default_rng(0)
    real = rng.uniform(-1, 1, (2, 16, 16))
    gen = np.clip(real + rng.normal(0, 0.1, real.shape), -1, 1)
    df = E.psnr_ssim(gen, real)
    for i in range(2):
        assert df.psnr[i] == pytest.approx(peak_signal_noise_ratio(real[i], gen[i], data_range=2.0))
        assert df.ssim[i] == pytest.approx(structural_similarity(real[i], gen[i], data_range=2.0))
    # known value: a constant error of 0.2 on a range of 2 -> 20 dB
    z = np.zeros((1, 16, 16))
    assert E.psnr_ssim(z + 0.2, z).psnr[0] == pytest.approx(20.0)
    assert E.psnr_ssim(z, z).ssim[0] == pytest.approx(1.0)
    # out-of-window values are clipped to the window first
    assert E.psnr_ssim(z + 3.0, z + 1.0).psnr[0] == math.inf


def test_mean_ci_values_and_coverage():
    m, lo, hi = E.mean_ci([1.0, 2.0, 3.0, np.nan])
    assert m == 2.0 and (lo, hi) == pytest.approx((2 - 4.302653 / math.sqrt(3), 2 + 4.302653 / math.sqrt(3)), 1e-5)
    assert E.mean_ci([5.0])[0] == 5.0 and math.isnan(E.mean_ci([5.0])[1])
    assert all(math.isnan(v) for v in E.mean_ci([]))
    rng = np.random.default_rng(1)
    hits_t = hits_b = 0
    trials = 400
    for _ in range(trials):
        x = rng.normal(0.7, 0.1, 12)
        _, lo, hi = E.mean_ci(x)
        hits_t += lo <= 0.7 <= hi
    for _ in range(100):
        x = rng.normal(0.7, 0.1, 30)
        _, lo, hi = E.bootstrap_ci(x, rng, n_boot=500)
        hits_b += lo <= 0.7 <= hi
    assert 0.91 <= hits_t / trials <= 0.98
    assert 0.85 <= hits_b / 100 <= 1.0


def test_bootstrap_deterministic():
    x = np.arange(10.0)
    a = E.bootstrap_ci(x, np.random.default_rng(3), n_boot=200)
    b = E.bootstrap_ci(x, np.random.default_rng(3), n_boot=200)
    assert a == b and a[0] == 4.5 and a[1] < 4.5 < a[2]


def test_paired_tests():
    a = np.array([0.80, 0.82, 0.79, 0.85, 0.81, 0.83, 0.84])
    r = E.paired_test(a, a - 0.05, "wilcoxon")
    assert r.n == 7 and r.p == pytest.approx(2 / 2**7)  # all 7 differences positive: exact p = 2 / 2^7
    assert E.paired_test(a, a, "wilcoxon").p == 1.0
    assert math.isnan(E.paired_test([0.5], [0.4], "wilcoxon").p)
    r = E.paired_test(np.r_[a, np.nan], np.r_[a - 0.05, 0.1], "wilcoxon")
    assert r.n == 7
    r = E.paired_test(np.linspace(0, 1, 30), np.linspace(2, 3, 40), "ranksum")
    assert r.p < 1e-6 and r.statistic < 0
    with pytest.raises(ValueError, match="unknown test"):
        E.paired_test(a, a, "ttest")


def _seed_scores(n_seeds):
    return pd.DataFrame([{"model": m, "seed": s, "class": "emphysema", "value": 0.5 + 0.01 * s + gain}
                         for m, gain in (("ref", 0.0), ("better", 0.1), ("worse", -0.02)) for s in range(n_seeds)])


def test_compare_to_reference_pairs_units():
    """Seed s of every model is paired with seed s of ref; the statistics are stats.compare_seeds'."""
    from difflung.judging import stats

    t = E.compare_to_reference(_seed_scores(6), "ref", generator=np.random.default_rng(0)).set_index("model")
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

    t = E.compare_to_reference(_seed_scores(4), "ref", generator=np.random.default_rng(0),
                               pairs=[("emphysema", "better", "worse"), ("emphysema", "worse", "ref")],
                               validity=lambda g, a, b: {"converged": False, "reason": "x not converged"}
                               if "worse" in (a, b) and b == "ref" else {})
    assert t.delta.tolist() == pytest.approx([0.12, -0.02])
    assert t.lo.isna().all() and t.hi.isna().all()  # 4 seeds: no interval, only the per-seed values
    v = stats.judge_claims(t.comparison.tolist())["verdict"].tolist()
    assert v == ["inconclusive", "not measurable: x not converged"]


def test_summarize():
    df = pd.DataFrame({"arm": ["a"] * 3 + ["b"] * 2, "value": [1.0, 2.0, 3.0, 4.0, np.nan]})
    s = E.summarize(df, by=["arm"]).set_index("arm")
    assert s.loc["a", "mean"] == 2.0 and s.loc["a", "n"] == 3 and s.loc["a", "lo"] < 2.0
    assert s.loc["b", "n"] == 1 and math.isnan(s.loc["b", "hi"])


def test_cost_helpers():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 2, 1))
    assert E.count_params(model) == (1 * 4 * 9 + 4) + (4 * 2 + 2)
    x = torch.zeros(2, 1, 8, 8)
    # conv FLOPs = 2 * out_pixels * out_ch * in_ch * k * k, per batch item
    expected = 2 * 2 * 64 * (4 * 1 * 9 + 2 * 4 * 1) / 1e9
    assert E.gflops_per_call(model, x) == pytest.approx(expected)
    calls = []
    t = E.time_per_image(lambda b: calls.append(b), n_images=10, batch_size=4, repeats=2, warmup=1)
    assert calls == [4, 4, 4, 2, 4, 4, 2] and t >= 0
