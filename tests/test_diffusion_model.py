"""The mask-conditioned UNet: presets, mask encodings, golden output of the tiny model, bad input."""
import numpy as np
import pytest
import torch

from difflung import labels as L
from difflung.diffusion.model import (PRESETS, UNSPECIFIED, build_unet, channel_map, check_size, count_parameters,
                                      encode_mask)
from difflung.diffusion.sample import forward_flops

CLASSES = [0, 1, 2, 4, 5, 6]  # background, body, lung, emphysema, ggo, fibrosis


def seeded_unet(preset="tiny", size=16, mode="onehot", seed=0):
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_unet(len(CLASSES), size, mode, preset)


def test_tiny_unet_golden_output():
    m = seeded_unet()
    assert count_parameters(m) == 10621  # "a few thousand" parameters: the tests' model
    x = torch.randn(2, 1 + len(CLASSES), 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = m(x, torch.tensor([10, 500])).sample
    assert y.shape == (2, 1, 16, 16)
    assert y.sum().item() == pytest.approx(34.036945, rel=1e-4)
    assert y.abs().sum().item() == pytest.approx(131.97290, rel=1e-4)


def test_input_channels_per_mask_mode():
    assert build_unet(6, 16, "onehot", "tiny").config.in_channels == 7  # x_t + one channel per class
    assert build_unet(6, 16, "single", "tiny").config.in_channels == 2  # x_t + the parent's k/255 channel
    assert build_unet(6, 16, "single", "tiny").config.out_channels == 1


def test_paper_preset_is_the_parents_unet():
    with torch.device("meta"):  # shapes only: 113.7 M parameters would cost memory and seconds
        m = build_unet(6, 256, "single", "paper")
    assert tuple(m.config.block_out_channels) == (128, 128, 256, 256, 512, 512)
    assert m.config.layers_per_block == 2
    # attention only at 16x16 (level 4 at 256 px) and in the mid block, as the parent
    assert m.config.down_block_types[4] == "AttnDownBlock2D"
    assert sum(b.startswith("Attn") for b in m.config.down_block_types) == 1
    assert m.config.up_block_types[1] == "AttnUpBlock2D"
    assert count_parameters(m) == 113_669_761  # the parent (Segmentation-Guided Diffusion) reports 113.7 M
    assert forward_flops(m) / 1e9 == pytest.approx(496.6, abs=0.1)  # the parent: about 496 GFLOP per 256x256 forward


def test_efficient_preset_fits_the_sampling_flop_target():
    with torch.device("meta"):
        m = build_unet(7, 256, "onehot", "efficient")
    assert forward_flops(m) * 20 / 1e9 < 200  # DPM-Solver++ 20 steps under 200 GFLOP per image at 256x256


def test_sample_size_must_fit_the_levels():
    with pytest.raises(ValueError, match="divisible by 32"):
        build_unet(6, 48, "onehot", "paper")
    with pytest.raises(ValueError, match="preset"):
        build_unet(6, 16, "onehot", "huge")
    with pytest.raises(ValueError, match="mask_mode"):
        build_unet(6, 16, "rgb", "tiny")


def test_channel_map_is_the_dataset_class_order():
    assert channel_map(CLASSES) == {0: 0, 1: 1, 2: 2, 4: 3, 5: 4, 6: 5}
    with pytest.raises(ValueError, match="duplicates"):
        channel_map([0, 1, 1])
    with pytest.raises(ValueError, match="unknown class"):
        channel_map([0, 1, 42])


def test_onehot_encoding_and_unspecified():
    lab = torch.tensor([[[0, 1], [6, UNSPECIFIED]]], dtype=torch.uint8)  # (1, 2, 2)
    enc = encode_mask(lab, CLASSES, "onehot")
    assert enc.shape == (1, 6, 2, 2) and enc.dtype == torch.float32
    assert enc[0, :, 0, 0].tolist() == [1, 0, 0, 0, 0, 0]
    assert enc[0, :, 0, 1].tolist() == [0, 1, 0, 0, 0, 0]
    assert enc[0, :, 1, 0].tolist() == [0, 0, 0, 0, 0, 1]  # fibrosis (id 6) is channel 5
    assert enc[0, :, 1, 1].tolist() == [0] * 6  # unspecified: zero everywhere, unlike background
    assert enc.sum(1).tolist() == [[[1, 1], [1, 0]]]


def test_single_channel_encoding_is_k_over_255():
    lab = np.array([[[0, 2], [6, UNSPECIFIED]]], dtype=np.uint8)
    enc = encode_mask(lab, CLASSES, "single")
    assert enc.shape == (1, 1, 2, 2)
    np.testing.assert_allclose(enc[0, 0].numpy(), [[0, 2 / 255], [5 / 255, 0]], rtol=1e-6)


def test_labels_outside_the_class_map_are_an_error():
    lab = torch.tensor([[[0, 1], [7, 9]]])
    with pytest.raises(ValueError, match=r"label ids \[7, 9\] outside the model's class map"):
        encode_mask(lab, CLASSES)
    with pytest.raises(TypeError, match="integer"):
        encode_mask(lab.float(), CLASSES)
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        encode_mask(lab[0], CLASSES)


def test_mask_size_mismatch_is_an_error():
    check_size((3, 16, 16), 16)
    with pytest.raises(ValueError, match=r"mask size \(32, 32\) does not match the model's image size \(16, 16\)"):
        check_size((3, 32, 32), 16)


def test_presets_are_listed():
    assert {"tiny", "small", "base", "paper", "efficient"} <= set(PRESETS)
    assert L.BACKGROUND == CLASSES[0]
