"""RePaint inpainting with the mask-conditioned UNet: known pixels copied exactly, seeded, batched, validated."""
import numpy as np
import pytest
import torch

from difflung import labels as L
from difflung.diffusion.inpaint import inpaint, network_calls
from difflung.diffusion.model import UNSPECIFIED, build_unet
from difflung.diffusion.train import NOISE_SCHEDULE

CLASSES = [L.BACKGROUND, L.BODY, L.LUNG, L.GGO]
S = 16


@pytest.fixture(scope="module")
def model():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        unet = build_unet(len(CLASSES), S, preset="tiny").eval()
    meta = {"classes": CLASSES, "mask_mode": "onehot", "noise_schedule": NOISE_SCHEDULE, "sample_size": S}
    return unet, meta


def _patches(n=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (n, S, S)).astype(np.float32)
    images[:, 0, 0] = np.float32(np.pi / 7)  # a value a window/unwindow round trip would not give back
    known = np.ones((n, S, S), bool)
    known[:, 4:11, 3:12] = False
    labels = np.full((n, S, S), L.LUNG, np.uint8)
    labels[~known] = L.GGO
    labels[:, :2] = UNSPECIFIED
    return images, known, labels


def _run(model, images, known, labels, seed=1, **kw):
    unet, meta = model
    kw = {"steps": 6, "jump_length": 2, "jump_n_sample": 2, **kw}
    return inpaint(unet, meta, images, known, labels, generator=torch.Generator().manual_seed(seed), **kw)


def test_known_pixels_are_the_input_values_and_unknown_ones_are_painted(model):
    images, known, labels = _patches()
    known[2] = True  # a patch with nothing to paint comes back unchanged
    out = _run(model, images, known, labels)
    assert out.dtype == np.float32 and out.shape == images.shape
    assert np.array_equal(out[known].view(np.uint32), images[known].view(np.uint32))  # bit-identical
    assert np.all(out[~known] != images[~known])
    assert out.min() >= -1.0 and out.max() <= 1.0


def test_same_generator_same_patches_other_seed_other_patches(model):
    images, known, labels = _patches()
    a = _run(model, images, known, labels, seed=3)
    b = _run(model, images, known, labels, seed=3)
    c = _run(model, images, known, labels, seed=4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a[~known], c[~known])
    assert np.array_equal(a[known], c[known])


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_batching_runs_every_patch(model, eta):
    images, known, labels = _patches(n=5)
    out = _run(model, images, known, labels, batch_size=2, eta=eta, jump_n_sample=1)
    assert np.all(out[~known] != images[~known])


@pytest.mark.parametrize("steps,j,r", [(10, 5, 1), (10, 5, 3), (50, 10, 2), (25, 10, 10)])
def test_network_calls_follow_repaints_schedule(steps, j, r):
    # RePaint's schedule: `steps` reverse steps, plus (r - 1) re-runs of j steps at every jump point
    jump_points = len(range(0, steps - j, j))
    assert network_calls(steps, j, r) == steps + (r - 1) * j * jump_points


def test_bad_input_is_refused_before_any_work(model):
    images, known, labels = _patches()
    bad = labels.copy()
    bad[0, 5, 5] = L.EMPHYSEMA  # not one of the model's classes
    with pytest.raises(ValueError, match="outside the model's class map"):
        _run(model, images, known, bad)
    with pytest.raises(ValueError, match="same"):
        _run(model, images, known[:2], labels)
    with pytest.raises(ValueError, match="does not match the model's image size"):
        _run(model, images[:, :8, :8], known[:, :8, :8], labels[:, :8, :8])
    with pytest.raises(ValueError, match="jump_n_sample"):
        _run(model, images, known, labels, jump_n_sample=0)
    with pytest.raises(TypeError, match="generator"):
        inpaint(*model, images, known, labels, generator=None)


def test_v_to_epsilon_inverts_diffusers_velocity():
    from diffusers import DDPMScheduler

    from difflung.diffusion.inpaint import make_repaint_scheduler, v_to_epsilon

    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn((3, 1, S, S), generator=g), torch.randn((3, 1, S, S), generator=g)
    ddpm = DDPMScheduler(**{k: v for k, v in NOISE_SCHEDULE.items() if k != "prediction_type"})
    ac = make_repaint_scheduler({**NOISE_SCHEDULE, "prediction_type": "v_prediction"}).alphas_cumprod
    for t in (0, 500, 999):
        tt = torch.full((3,), t, dtype=torch.long)
        x_t, v = ddpm.add_noise(x0, eps, tt), ddpm.get_velocity(x0, eps, tt)
        assert torch.allclose(v_to_epsilon(v, x_t, t, ac), eps, atol=1e-4)


def test_a_v_prediction_model_inpaints_and_keeps_the_outside(model):
    unet, meta = model
    v_meta = {**meta, "noise_schedule": {**NOISE_SCHEDULE, "prediction_type": "v_prediction"}}
    images, known, labels = _patches()
    out = _run((unet, v_meta), images, known, labels)
    assert np.array_equal(out[known].view(np.uint32), images[known].view(np.uint32))  # bit-identical
    assert np.all(out[~known] != images[~known]) and out.min() >= -1.0 and out.max() <= 1.0
    as_eps = _run(model, images, known, labels)  # same net, same noise, read as eps: the conversion matters
    assert not np.allclose(out[~known], as_eps[~known])
    with pytest.raises(ValueError, match="v_prediction"):
        _run((unet, {**meta, "noise_schedule": {**NOISE_SCHEDULE, "prediction_type": "sample"}}), images, known,
             labels)
