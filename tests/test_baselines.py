"""Pix2Pix and SPADE baselines: shapes, golden sizes, losses, determinism, resume, VGG option, registry."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from difflung.baselines import (GanTrainConfig, baseline_name, build_models, generate, load_generator,
                                model_config, one_hot, rng_scope, train_gan)
from difflung.baselines import pix2pix, spade
from difflung.data.dataset import Slices, write_dataset

CLASSES = [0, 1, 2, 4]


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """10 slices of 16x16 from 5 patients: a disc of 'lung' (2) with an 'emphysema' (4) spot in 'body' (1)."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    imgs, labs = [], []
    for k in range(10):
        lab = np.zeros((16, 16), np.uint8)
        lab[2:14, 2:14] = 1
        lab[(yy - 8) ** 2 + (xx - 8) ** 2 < 16 + k % 3] = 2
        lab[(yy - 7 - k % 2) ** 2 + (xx - 8) ** 2 < 3] = 4
        img = np.select([lab == 1, lab == 2, lab == 4], [0.3, -0.7, -0.95], -1.0) + rng.normal(0, 0.02, lab.shape)
        imgs.append(np.clip(img, -1, 1).astype(np.float32))
        labs.append(lab)
    s = Slices(np.stack(imgs), np.stack(labs), np.array([f"p{k // 2}" for k in range(10)]), np.zeros(10, np.float32))
    return write_dataset(tmp_path_factory.mktemp("ds") / "dataset", s, source="test", params={}, seed=0)


def _build(name, size, seed=0):
    cfg = model_config(name, size, CLASSES)
    with rng_scope(torch.Generator().manual_seed(seed)):
        return cfg, *build_models(cfg)


# ---------------------------------------------------------------------------------------------------------------
# shapes and golden sizes

@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("kind", ["pix2pix", "spade"])
def test_generator_output_shape_and_range(kind, size):
    cfg, G, _ = _build(f"{kind}-T", size)
    x = G.eval()(one_hot(np.zeros((2, size, size), np.uint8), CLASSES))
    assert x.shape == (2, 1, size, size)
    assert x.abs().max() <= 1.0


def test_pix2pix_depth_and_patch_scale_with_size():
    assert [pix2pix.unet_depth(s) for s in (32, 64, 256)] == [5, 6, 8]
    assert [model_config("pix2pix-T", s, CLASSES)["receptive_field"] for s in (32, 64, 128, 256)] == [16, 16, 34, 70]


def test_pix2pix_discriminator_output_shapes():
    _, _, D = _build("pix2pix-T", 32)
    assert D(torch.zeros(2, 5, 32, 32)).shape == (2, 1, 14, 14)
    D256 = pix2pix.PatchDiscriminator(5, 2, n_layers=3)
    assert D256(torch.zeros(1, 5, 256, 256)).shape == (1, 1, 30, 30)  # the original's 30x30 patch map


def test_spade_discriminator_multiscale_features():
    _, _, D = _build("spade-T", 32)
    out = D(torch.zeros(2, 5, 32, 32))
    assert [[tuple(f.shape) for f in scale] for scale in out] == [
        [(2, 4, 17, 17), (2, 8, 18, 18), (2, 1, 19, 19)],
        [(2, 4, 9, 9), (2, 8, 10, 10), (2, 1, 11, 11)],
    ]


def test_paper_size_models_match_the_originals_parameter_counts():
    with torch.device("meta"):  # no memory, no init cost
        G = pix2pix.Pix2PixGenerator(3, 3, 256, 64)
        D = pix2pix.PatchDiscriminator(6, 64, 3)
        S = spade.SPADEGenerator(7, 1, 256, 64, 128)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(G) == 54_413_955  # pix2pix unet_256: 54.414 M
    assert n(D) == 2_768_705  # basic PatchGAN: 2.769 M
    assert pix2pix.receptive_field(D) == 70
    assert 92.0e6 < n(S) < 92.5e6  # SPADE generator: about 92 M


# ---------------------------------------------------------------------------------------------------------------
# losses

def test_one_step_losses_are_finite_and_golden():
    torch.manual_seed(123)  # the global RNG must not matter
    mask = one_hot(np.tile(np.array([[0, 1], [2, 4]], np.uint8).repeat(8, 0).repeat(8, 1), (2, 1, 1)), CLASSES)
    real = torch.linspace(-1, 1, 2 * 16 * 16).view(2, 1, 16, 16)
    got = {}
    for kind in ("pix2pix", "spade"):
        cfg, G, D = _build(f"{kind}-T", 16)
        opts = (pix2pix if kind == "pix2pix" else spade).optimizers(G, D)
        with rng_scope(torch.Generator().manual_seed(1)):
            step = pix2pix.train_step if kind == "pix2pix" else spade.train_step
            got[kind] = step(G, D, *opts, mask, real)
        assert all(np.isfinite(v) for v in got[kind].values())
    assert set(got["pix2pix"]) == {"d_real", "d_fake", "g_gan", "g_l1"}
    assert set(got["spade"]) == {"d_real", "d_fake", "g_gan", "g_feat"}
    # at init D outputs are near 0: BCE ~ log 2, hinge ~ 1
    assert got["pix2pix"]["d_real"] == pytest.approx(np.log(2), abs=0.05)
    assert got["spade"]["d_real"] == pytest.approx(1.0, abs=0.05)
    assert got["pix2pix"]["g_l1"] == pytest.approx(float(real.abs().mean()), abs=0.05)  # G output ~ 0 at init
    golden = {"pix2pix": GOLDEN_PIX2PIX, "spade": GOLDEN_SPADE}
    for kind in got:
        for k, v in golden[kind].items():
            assert got[kind][k] == pytest.approx(v, rel=1e-3, abs=1e-5), (kind, k)


# first-step losses of the tiny models with the fixed generators above (CPU, torch 2.13)
GOLDEN_PIX2PIX = {"d_real": 0.716119, "d_fake": 0.675639, "g_gan": 0.713023, "g_l1": 0.501474}
GOLDEN_SPADE = {"d_real": 0.998018, "d_fake": 1.00208, "g_gan": -0.00208289, "g_feat": 1.79081}


# ---------------------------------------------------------------------------------------------------------------
# training: determinism, resume, VGG option

def _weights(gen_dir):
    return load_generator(gen_dir).state_dict()


def _assert_same(a, b):
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("kind", ["pix2pix", "spade"])
def test_training_is_deterministic_under_a_fixed_seed(tiny_dataset, tmp_path, kind):
    cfg = GanTrainConfig(model=f"{kind}-T", steps=4, batch_size=3, seed=5, log_every=1)
    torch.manual_seed(0)
    a = _weights(train_gan(tiny_dataset, cfg, tmp_path / "a", progress=False))
    torch.manual_seed(99)  # global RNG differs: must not matter
    b = _weights(train_gan(tiny_dataset, cfg, tmp_path / "b", progress=False))
    _assert_same(a, b)
    assert (tmp_path / "a" / "losses.csv").read_text() == (tmp_path / "b" / "losses.csv").read_text()
    c = _weights(train_gan(tiny_dataset, GanTrainConfig(**{**cfg.__dict__, "seed": 6}), tmp_path / "c", progress=False))
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("kind", ["pix2pix", "spade"])
def test_killed_and_resumed_equals_uninterrupted(tiny_dataset, tmp_path, kind):
    cfg = GanTrainConfig(model=f"{kind}-T", steps=5, batch_size=4, seed=1, checkpoint_every=2, log_every=1)
    full = train_gan(tiny_dataset, cfg, tmp_path / "full", progress=False)
    part = tmp_path / "part"
    train_gan(tiny_dataset, cfg, part, stop_after=3, progress=False)  # "killed" after step 3, checkpoint at 2
    assert not (part / "generator" / "config.json").exists()
    torch.manual_seed(7)
    resumed = train_gan(tiny_dataset, cfg, part, progress=False)
    _assert_same(_weights(full), _weights(resumed))
    assert (tmp_path / "full" / "losses.csv").read_text() == (part / "losses.csv").read_text()
    meta = json.loads((resumed / "config.json").read_text())
    assert meta["images_seen"] == 20 and meta["model"]["classes"] == CLASSES


@pytest.mark.parametrize("kind", ["pix2pix", "spade"])
def test_training_losses_are_golden(tiny_dataset, tmp_path, kind):
    """Pins train_gan's loss stream (data order, init, dropout/spectral-norm noise) on a fixed seed."""
    cfg = GanTrainConfig(model=f"{kind}-T", steps=3, batch_size=3, seed=2, log_every=1)
    train_gan(tiny_dataset, cfg, tmp_path, progress=False)
    log = pd.read_csv(tmp_path / "losses.csv")
    got = log.drop(columns=["step", "lr_g", "lr_d"]).to_numpy()
    np.testing.assert_allclose(got, GOLDEN_TRAIN[kind], rtol=1e-4, atol=1e-5)


# losses.csv of 3 steps of the tiny models, seed 2 (CPU, torch 2.13): columns d_real, d_fake, g_gan, g_l1 | g_feat
GOLDEN_TRAIN = {
    "pix2pix": [[0.706667, 0.683236, 0.705902, 0.685582], [0.704318, 0.684187, 0.704532, 0.684884],
                [0.702617, 0.683403, 0.705486, 0.684928]],
    "spade": [[0.99972, 0.999905, 8.8e-05, 1.758388], [0.99267, 1.00507, -0.00505, 1.875698],
              [0.989329, 1.004037, -0.004007, 2.596256]],
}


def test_generator_saved_before_run_keys_were_stored_is_reused(tiny_dataset, tmp_path):
    cfg = GanTrainConfig(model="pix2pix-T", steps=2, batch_size=2)
    gen = train_gan(tiny_dataset, cfg, tmp_path, progress=False)
    meta = json.loads((gen / "config.json").read_text())
    del meta["run_key"]  # as written before the training shell: the key comes from its fingerprint
    (gen / "config.json").write_text(json.dumps(meta))
    stamp = (gen / "model.safetensors").stat().st_mtime_ns
    assert train_gan(tiny_dataset, cfg, tmp_path, progress=False) == gen
    assert (gen / "model.safetensors").stat().st_mtime_ns == stamp


def test_resume_refuses_a_different_configuration(tiny_dataset, tmp_path):
    cfg = GanTrainConfig(model="pix2pix-T", steps=4, batch_size=2, checkpoint_every=2)
    train_gan(tiny_dataset, cfg, tmp_path, stop_after=2, progress=False)
    with pytest.raises(ValueError, match="different configuration"):
        train_gan(tiny_dataset, GanTrainConfig(model="pix2pix-T", steps=4, batch_size=3, checkpoint_every=2),
                  tmp_path, progress=False)


def test_vgg_loss_is_off_by_default_and_needs_an_existing_file(tiny_dataset, tmp_path):
    gen = train_gan(tiny_dataset, GanTrainConfig(model="spade-T", steps=2, batch_size=2, log_every=1),
                    tmp_path / "run", progress=False)
    assert json.loads((gen / "config.json").read_text())["vgg_loss"] is False
    assert "g_vgg" not in (tmp_path / "run" / "losses.csv").read_text()
    missing = tmp_path / "vgg19.safetensors"
    with pytest.raises(FileNotFoundError, match="vgg19.safetensors"):
        spade.VGGLoss(missing)
    with pytest.raises(FileNotFoundError, match="VGG19 weights not found"):
        train_gan(tiny_dataset, GanTrainConfig(model="spade-T", steps=2, batch_size=2, vgg_weights=str(missing)),
                  tmp_path / "run2", progress=False)


def test_vgg_loss_with_user_weights(tmp_path):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    feats = spade.vgg19_features()
    path = tmp_path / "vgg19.safetensors"
    save_file({f"features.{k}": v for k, v in feats.state_dict().items()}, str(path))
    vgg = spade.VGGLoss(path)
    x = torch.linspace(-1, 1, 16 * 16).view(1, 1, 16, 16)
    assert vgg(x, x).item() == 0.0
    assert vgg(x, -x).item() > 0
    bad = tmp_path / "bad.safetensors"
    save_file({"x": torch.zeros(1)}, str(bad))
    with pytest.raises(ValueError, match="bad.safetensors"):
        spade.VGGLoss(bad)


# ---------------------------------------------------------------------------------------------------------------
# sampling and inputs

def test_generate_determinism_and_dropout_noise(tiny_dataset, tmp_path):
    gen = train_gan(tiny_dataset, GanTrainConfig(model="pix2pix-T", steps=2, batch_size=2), tmp_path, progress=False)
    G = load_generator(tmp_path)  # the training folder works too
    labels = tiny_dataset.split("test").labels
    classes = G.difflung_config["model"]["classes"]
    a = generate(G, labels, classes, batch_size=1)
    b = generate(load_generator(gen), labels, classes, batch_size=4)
    assert a.shape == labels.shape and a.dtype == np.float32 and np.abs(a).max() <= 1
    np.testing.assert_array_equal(a, b)  # no generator: deterministic, batch size irrelevant
    n1 = generate(G, labels, classes, 4, generator=torch.Generator().manual_seed(3))
    n2 = generate(G, labels, classes, 4, generator=torch.Generator().manual_seed(3))
    n3 = generate(G, labels, classes, 4, generator=torch.Generator().manual_seed(4))
    np.testing.assert_array_equal(n1, n2)
    assert not np.array_equal(n1, n3)  # test-time dropout is Pix2Pix's noise


def test_one_hot_and_bad_labels():
    oh = one_hot(np.array([[[0, 4], [2, 1]]], np.uint8), CLASSES)
    assert oh.shape == (1, 4, 2, 2)
    assert oh.argmax(1).tolist() == [[[0, 3], [2, 1]]]
    with pytest.raises(ValueError, match=r"\[5\]"):
        one_hot(np.array([[[0, 5]]], np.uint8), CLASSES)


def test_rng_scope_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with rng_scope(torch.Generator().manual_seed(1)):
        torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before)


def test_load_generator_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a trained baseline"):
        load_generator(tmp_path)


def test_registry_lookup_and_errors():
    assert baseline_name("spade", "S") == "spade-S"
    assert baseline_name("pix2pix", "L") == "pix2pix-L"
    with pytest.raises(ValueError, match="unknown baseline 'cyclegan-S'"):
        model_config("cyclegan-S", 32, CLASSES)
    with pytest.raises(ValueError, match="unknown baseline 'pix2pix-XL'"):
        baseline_name("pix2pix", "XL")
    with pytest.raises(ValueError, match="unknown baseline kind"):
        baseline_name("vae", "S")
    with pytest.raises(ValueError, match="power-of-two"):
        model_config("pix2pix-S", 48, CLASSES)
    with pytest.raises(ValueError, match="power-of-two"):
        model_config("spade-S", 8, CLASSES)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", ["pix2pix", "spade"])
def test_cuda_training_is_deterministic(tiny_dataset, tmp_path, kind):
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    cfg = GanTrainConfig(model=f"{kind}-T", steps=3, batch_size=3, seed=2, device="cuda")
    a = _weights(train_gan(tiny_dataset, cfg, tmp_path / "a", progress=False))
    b = _weights(train_gan(tiny_dataset, cfg, tmp_path / "b", progress=False))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)  # cuDNN may pick non-deterministic kernels
    G = load_generator(tmp_path / "a", device="cuda")
    x = generate(G, tiny_dataset.split("test").labels, CLASSES, 4, "cuda", generator=torch.Generator().manual_seed(0))
    assert x.shape == tiny_dataset.split("test").labels.shape and np.isfinite(x).all()
