import math

import numpy as np
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


def test_cost_helpers():
    from difflung.judging import cost

    model = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.Conv2d(4, 2, 1))
    assert cost.count_params(model) == (1 * 4 * 9 + 4) + (4 * 2 + 2)
    x = torch.zeros(2, 1, 8, 8)
    # conv FLOPs = 2 * out_pixels * out_ch * in_ch * k * k, per batch item
    expected = 2 * 2 * 64 * (4 * 1 * 9 + 2 * 4 * 1) / 1e9
    assert cost.gflops_per_call(model, x) == pytest.approx(expected)
    calls = []
    t = cost.time_per_image(lambda b: calls.append(b), n_images=10, batch_size=4, repeats=2, warmup=1)
    assert calls == [4, 4, 4, 2, 4, 4, 2] and t >= 0
