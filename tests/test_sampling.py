"""Sampling: shapes, range, determinism, partial masks, golden values, FLOP counts, bad input."""
import numpy as np
import pytest
import torch

from difflung.diffusion.model import UNSPECIFIED, build_unet
from difflung.diffusion.sample import forward_flops, remove_classes, sample, sampling_gflops, to_hu
from difflung.diffusion.train import NOISE_SCHEDULE

CLASSES = [0, 1, 2, 4, 5, 6]
META = {"classes": CLASSES, "mask_mode": "onehot", "noise_schedule": NOISE_SCHEDULE, "sample_size": 16}


@pytest.fixture(scope="module")
def unet():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return build_unet(len(CLASSES), 16, "onehot", "tiny").eval()


def masks(n=2):
    lab = np.zeros((n, 16, 16), np.uint8)
    lab[:, 2:14, 2:14] = 1
    lab[:, 4:12, 3:8] = 2
    lab[:, 5:8, 4:7] = 4
    lab[-1, 8:11, 9:12] = 6
    return lab


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def test_ddim_golden_value(unet):
    out = sample(unet, META, torch.from_numpy(masks()), generator=gen(), sampler="ddim", steps=5)
    assert out.shape == (2, 16, 16) and out.dtype == np.float32
    assert float(out.sum()) == pytest.approx(6.6874743, abs=1e-3)


@pytest.mark.parametrize("sampler, steps", [("ddim", 4), ("dpm", 4), ("dpm-sde", 4), ("ddpm", 10)])
def test_each_sampler_is_deterministic_and_in_range(unet, sampler, steps):
    rng = torch.get_rng_state()
    a = sample(unet, META, masks(3), generator=gen(1), sampler=sampler, steps=steps)
    assert torch.equal(rng, torch.get_rng_state())
    b = sample(unet, META, masks(3), generator=gen(1), sampler=sampler, steps=steps)
    c = sample(unet, META, masks(3), generator=gen(2), sampler=sampler, steps=steps)
    assert a.shape == (3, 16, 16) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert a.min() >= -1 and a.max() <= 1


def test_ddim_does_not_depend_on_batch_size(unet):
    a = sample(unet, META, masks(5), generator=gen(3), steps=4, batch_size=5)
    b = sample(unet, META, masks(5), generator=gen(3), steps=4, batch_size=2)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_partial_masks_change_the_condition(unet):
    full = masks()
    part = remove_classes(full, [4, 6])
    assert (part == UNSPECIFIED).sum() == ((full == 4) | (full == 6)).sum() and (full != UNSPECIFIED).all()
    a = sample(unet, META, full, generator=gen(), steps=3)
    b = sample(unet, META, part, generator=gen(), steps=3)
    assert not np.allclose(a, b)


def test_to_hu_maps_the_model_window():
    np.testing.assert_allclose(to_hu(np.array([-1.0, 0.0, 1.0])), [-1000, -300, 400])


def test_flops_count_one_forward_per_step(unet):
    f = forward_flops(unet)
    assert f > 0
    assert sampling_gflops(unet, META, "ddim", 50) == pytest.approx(50 * f / 1e9)
    assert sampling_gflops(unet, META, "dpm") == pytest.approx(20 * f / 1e9)
    assert sampling_gflops(unet, META, "ddpm") == pytest.approx(1000 * f / 1e9)
    assert sampling_gflops(unet, META, "dpm-sde") == pytest.approx(20 * f / 1e9)
    assert forward_flops(unet, 32) == pytest.approx(4 * f, rel=0.01)  # convolutions scale with pixels


def test_bad_input_is_refused(unet):
    bad = masks()
    bad[0, 0, 0] = 8  # nodule: not in this model's class map
    with pytest.raises(ValueError, match=r"label ids \[8\] outside"):
        sample(unet, META, bad, generator=gen())
    with pytest.raises(ValueError, match=r"mask size \(32, 32\)"):
        sample(unet, META, np.zeros((1, 32, 32), np.uint8), generator=gen())
    with pytest.raises(ValueError, match="at most 25"):
        sample(unet, META, masks(), generator=gen(), sampler="dpm", steps=50)
    with pytest.raises(ValueError, match="at most 25"):
        sample(unet, META, masks(), generator=gen(), sampler="dpm-sde", steps=50)
    with pytest.raises(ValueError, match="sampler"):
        sample(unet, META, masks(), generator=gen(), sampler="euler")
    with pytest.raises(TypeError, match="generator"):
        sample(unet, META, masks(), generator=None)


@pytest.mark.gpu
def test_cuda_bf16_sampling_is_close_to_cpu(unet):
    import copy

    a = sample(copy.deepcopy(unet), META, masks(), generator=gen(), steps=4, device="cpu")
    b = sample(copy.deepcopy(unet), META, masks(), generator=gen(), steps=4, device="cuda")  # bf16 autocast
    assert np.abs(a - b).mean() < 0.05  # same initial noise (drawn on the CPU), bf16 rounding only


@pytest.mark.parametrize("sampler, steps", [("ddim", 3), ("dpm-sde", 3), ("ddpm", 5)])
def test_one_generator_per_mask(unet, sampler, steps):
    """Image i depends only on mask i and generator i: the same as sampling it alone."""
    both = sample(unet, META, masks(2), generator=[gen(4), gen(5)], sampler=sampler, steps=steps, batch_size=2)
    alone = sample(unet, META, masks(2)[1:], generator=[gen(5)], sampler=sampler, steps=steps)
    np.testing.assert_allclose(both[1], alone[0], atol=1e-5)
    with pytest.raises(ValueError, match="2 generators for 3 masks"):
        sample(unet, META, masks(3), generator=[gen(0), gen(1)], steps=2)


def test_stochastic_dpm_draws_noise_at_every_step(unet):
    """Same initial noise: the SDE solver's per-step noise takes it away from the ODE solver's result."""
    ode = sample(unet, META, masks(2), generator=gen(7), sampler="dpm", steps=4)
    sde = sample(unet, META, masks(2), generator=gen(7), sampler="dpm-sde", steps=4)
    assert np.abs(ode - sde).mean() > 1e-3
