"""Mask ablation strategies: schedule values, empirical drop rates, per-sample draws, determinism."""
import math

import numpy as np
import pytest
import torch

from difflung.diffusion.ablation import STRATEGIES, AblationSchedule, ablation_frequencies, cosine_factor
from difflung.diffusion.model import UNSPECIFIED

CLASSES = [0, 1, 2, 4, 5, 6]
FREQ = {"body": 0.5, "lung": 0.35, "emphysema": 0.05, "ggo": 0.06, "fibrosis": 0.04}  # background absent -> 0
F = torch.tensor([0.0, 0.5, 0.35, 0.05, 0.06, 0.04], dtype=torch.float64)
NOT_BG = torch.tensor([0, 1, 1, 1, 1, 1], dtype=torch.float64)


def every_class_batch(b):
    """(b, 2, 3) label maps holding each class once."""
    return torch.tensor(CLASSES, dtype=torch.uint8).view(1, 2, 3).repeat(b, 1, 1)


def test_cosine_factor():
    assert cosine_factor(0, 100) == 1.0
    assert cosine_factor(50, 100) == pytest.approx(0.5)
    assert cosine_factor(100, 100) == pytest.approx(0.0, abs=1e-12)
    assert cosine_factor(250, 100) == pytest.approx(0.0, abs=1e-12)  # clipped past T
    assert cosine_factor(25, 100) == pytest.approx((1 + math.cos(math.pi / 4)) / 2)


@pytest.mark.parametrize("strategy, p0, half, end", [
    ("none", 0 * F, 0 * F, 0 * F),
    ("uniform", 0.5 * NOT_BG, 0.5 * NOT_BG, 0.5 * NOT_BG),
    ("cbmat", (1 - F) * NOT_BG, (1 - F) * NOT_BG / 2, 0 * F),
    ("cbmat-constant", (1 - F) * NOT_BG, (1 - F) * NOT_BG, (1 - F) * NOT_BG),
    ("cbmat-inverse", F, F / 2, 0 * F),
])
def test_schedule_at_start_middle_end(strategy, p0, half, end):
    s = AblationSchedule(strategy, CLASSES, FREQ, total_steps=1000)
    torch.testing.assert_close(s.probabilities(0), p0)
    torch.testing.assert_close(s.probabilities(500), half)
    torch.testing.assert_close(s.probabilities(1000), end)
    assert s.probabilities(0)[0] == 0  # background is never ablated


def test_cbmat_drops_rare_classes_most():
    p = AblationSchedule("cbmat", CLASSES, FREQ, 10).probabilities(0)
    assert p[5] == pytest.approx(0.96) and p[1] == pytest.approx(0.5)  # fibrosis 1 - 0.04, body 1 - 0.5


@pytest.mark.parametrize("strategy, step", [("cbmat", 0), ("cbmat", 300), ("uniform", 0), ("cbmat-inverse", 100)])
def test_empirical_drop_rates_match_probabilities(strategy, step):
    s = AblationSchedule(strategy, CLASSES, FREQ, total_steps=1000)
    n = 4000
    out = s.apply(every_class_batch(n), step, torch.Generator().manual_seed(1))
    dropped = (out.view(n, -1) == UNSPECIFIED).double().mean(0)  # per class position, fraction of samples
    p = s.probabilities(step)
    se = torch.sqrt(p * (1 - p) / n).clamp(min=1e-3)
    assert torch.all((dropped - p).abs() < 4 * se), (dropped, p)
    assert dropped[0] == 0  # background


def test_draws_are_per_sample_and_independent_across_classes():
    s = AblationSchedule("uniform", CLASSES, None, 10)
    out = s.apply(every_class_batch(2000), 0, torch.Generator().manual_seed(2))
    d = (out.view(2000, -1) == UNSPECIFIED).double()[:, 1:]  # (N, 5) non-background classes
    assert len({tuple(r.tolist()) for r in d}) == 32  # every subset occurs: samples draw separately
    corr = torch.corrcoef(d.T)
    assert (corr - torch.eye(5)).abs().max() < 0.1


def test_ablation_is_deterministic_and_leaves_input_alone():
    s = AblationSchedule("cbmat", CLASSES, FREQ, 100)
    lab = every_class_batch(64)
    a = s.apply(lab, 10, torch.Generator().manual_seed(3))
    b = s.apply(lab, 10, torch.Generator().manual_seed(3))
    c = s.apply(lab, 10, torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(lab, every_class_batch(64)) and a.dtype == lab.dtype
    kept = a != UNSPECIFIED
    assert torch.equal(a[kept], lab[kept])  # kept pixels keep their class


def test_background_and_unspecified_pixels_stay():
    lab = torch.full((500, 4, 4), 0, dtype=torch.long)
    lab[:, 0, :] = UNSPECIFIED
    lab[:, 1, :] = 4
    out = AblationSchedule("cbmat-constant", CLASSES, FREQ, 10).apply(lab, 0, torch.Generator().manual_seed(0))
    assert (out[:, 2:] == 0).all() and (out[:, 0] == UNSPECIFIED).all()
    assert 0.9 < (out[:, 1, 0] == UNSPECIFIED).double().mean() < 0.99  # emphysema P = 0.95


def test_none_strategy_never_ablates():
    lab = every_class_batch(100)
    assert torch.equal(AblationSchedule("none", CLASSES).apply(lab, 0, torch.Generator()), lab)


def test_bad_arguments():
    with pytest.raises(ValueError, match="strategy"):
        AblationSchedule("random", CLASSES, FREQ, 10)
    with pytest.raises(ValueError, match="needs the class frequencies"):
        AblationSchedule("cbmat", CLASSES, None, 10)
    with pytest.raises(ValueError, match="3 frequencies for 6 classes"):
        AblationSchedule("cbmat", CLASSES, [0.1, 0.2, 0.3], 10)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        AblationSchedule("cbmat", CLASSES, {"lung": 1.5}, 10)
    with pytest.raises(ValueError, match="outside the model's class map"):
        AblationSchedule("uniform", CLASSES).apply(torch.full((1, 2, 2), 8), 0, torch.Generator())
    assert len(STRATEGIES) == 5


def test_frequencies_from_a_dataset(toy_ds):
    ds = toy_ds
    f = ablation_frequencies(ds)
    assert list(f) == ["background", "body", "lung", "emphysema", "ggo", "fibrosis"]
    assert f["background"] == 0.0
    assert sum(f.values()) == pytest.approx(1.0)
    all_px = ds.frequencies("train", within="all")
    assert f["lung"] == pytest.approx(all_px["lung"] / (1 - all_px["background"]))
    s = AblationSchedule("cbmat", ds.classes, f, 10)
    assert np.allclose(s.describe()["initial_probabilities"]["fibrosis"], 1 - f["fibrosis"])
