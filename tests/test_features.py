"""Judge-feature distances: Fréchet distance, precision, recall, density, coverage (`judging.features`)."""
import math

import numpy as np
import pytest
import torch

from difflung.judging.features import feature_distances, fidelity_diversity, frechet_distance, judge_features


def test_exact_numbers_on_a_hand_made_example():
    # 1-D: real mean 1, variance 2 (ddof 1); generated mean 3, variance 8: 2^2 + 2 + 8 - 2 sqrt(16) = 6
    assert frechet_distance([[0.0], [2.0]], [[1.0], [5.0]]) == pytest.approx(6.0, abs=1e-9)
    # real 0, 1, 3 with k = 1: radii 1, 1, 2. Generated 0.5 and 0.6 lie in the balls of 0 and 1, 10 in none;
    # no generated point reaches the ball of 3. Generated radii (k = 1): 0.1, 0.1, 9.4: 1 and 3 lie in 10's ball.
    r = fidelity_diversity([[0.0], [1.0], [3.0]], [[0.5], [0.6], [10.0]], k=1)
    assert r == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "density": 4 / 3, "coverage": 2 / 3, "k": 1})


def test_identical_sets_and_a_shifted_set():
    x = np.random.default_rng(0).normal(size=(200, 8))
    same = feature_distances(x, x)
    assert same["frechet"] == pytest.approx(0.0, abs=1e-8)
    assert same["density"] == 1.0 and same["coverage"] == 1.0 and same["precision"] == same["recall"] == 1.0
    shifted = feature_distances(x, x + 1.0)  # every one of 8 dimensions moved by 1: mean term 8, covariances equal
    assert shifted["frechet"] == pytest.approx(8.0, abs=1e-6)
    assert shifted["coverage"] < 0.6 and shifted["density"] < 0.6 and shifted["n_generated"] == 200
    far = feature_distances(x, x + 3.0)
    assert far["frechet"] > shifted["frechet"] and far["coverage"] < shifted["coverage"]


def test_small_sets_and_bad_shapes():
    x = np.random.default_rng(1).normal(size=(4, 3))
    few = feature_distances(x, x + 1.0)  # k = 5 neighbours need 6 rows: no balls, the Fréchet distance still
    assert math.isnan(few["coverage"]) and few["frechet"] == pytest.approx(3.0, abs=1e-6)
    assert math.isnan(frechet_distance(x[:1], x))
    with pytest.raises(ValueError, match="k = 5"):
        fidelity_diversity(x, x)
    with pytest.raises(ValueError, match="same D"):
        frechet_distance(x, x[:, :2])


def test_judge_features_are_the_bottleneck_pooled_per_slice():
    from difflung.judging.scoring import JUDGE_CHANNELS, judge_config
    from difflung.segmentation import Segmenter, build_unet

    torch.manual_seed(0)
    seg = Segmenter(build_unet(3, judge_config(1)), [0, 1, 2], judge_config(1))
    images = np.random.default_rng(0).uniform(-1, 1, (5, 16, 16)).astype(np.float32)
    before = seg.predict_proba(images)
    f = judge_features(seg, images, batch_size=2)
    assert f.shape == (5, JUDGE_CHANNELS[-1]) and f.dtype == np.float64
    assert np.allclose(judge_features(seg, images[2:3]), f[2:3], atol=1e-6)  # per slice, batch-independent
    assert np.array_equal(seg.predict_proba(images), before)  # the hook is gone, the model untouched
    with pytest.raises(ValueError, match=r"\(N, S, S\)"):
        judge_features(seg, images[0])
