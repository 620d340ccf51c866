"""The generator registry and loader, and the scoring layer: diffusion and GAN folders load the same way,
sampling is deterministic, every generator gets the same noise for the same mask and seed, one long schema."""
import numpy as np
import pytest
import torch

from difflung.judging import scoring
from difflung.baselines import train_gan
from difflung.diffusion import train_diffusion
from difflung.diffusion.toy import toy_dataset
from difflung.generators import (DIFFUSION, DISPLAY_NAMES, GAN, REGISTRY, Generator, diffusion_config, gan_config,
                                 load_generator)

TINY = dict(preset="tiny", steps=2, batch_size=2, seed=0)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("gens")
    ds = toy_dataset(root / "ds", n_patients=5, n_slices=3, size=16)
    out = {"dataset": ds}
    for key in ("difflung", "segguided"):
        train_diffusion(ds, diffusion_config(key, **TINY), root / key, device="cpu", progress=False)
        out[key] = root / key
    for key in ("pix2pix", "spade"):
        train_gan(ds, gan_config(key, "T", steps=2, batch_size=2, seed=0), root / key, progress=False)
        out[key] = root / key
    return out


@pytest.mark.parametrize("key, kind", [("difflung", DIFFUSION), ("segguided", DIFFUSION), ("pix2pix", GAN),
                                       ("spade", GAN)])
def test_every_folder_loads_as_one_generator_type(folders, key, kind):
    ds = folders["dataset"]
    g = load_generator(folders[key], dataset=ds, sampler="ddim", sampler_steps=2)
    assert isinstance(g, Generator) and (g.key, g.kind) == (key, kind)  # key and kind read from the folder
    assert g.classes == ds.classes and g.size == 16 and g.train_seed == 0 and g.params > 0
    assert g.display_name == DISPLAY_NAMES[key] and g.gflops_per_image() > 0
    masks = ds.split("test").labels[:3]
    a = g.sample(masks, generator=torch.Generator().manual_seed(0))
    b = g.sample(masks, generator=torch.Generator().manual_seed(0))
    assert a.shape == (3, 16, 16) and a.dtype == np.float32 and a.min() >= -1 and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    if kind == DIFFUSION:  # x_T is drawn up front: the batch size does not matter (Pix2Pix draws dropout per batch)
        c = g.sample(masks, generator=torch.Generator().manual_seed(0), batch_size=1)
        np.testing.assert_allclose(a, c, atol=1e-5)
    if key != "spade":  # SPADE without its encoder is deterministic: no noise at all
        c = g.sample(masks, generator=torch.Generator().manual_seed(1))
        assert not np.allclose(a, c)


def test_sampling_settings_count_in_the_cost(folders):
    g = load_generator(folders["difflung"], sampler="ddim", sampler_steps=4)
    assert g.gflops_per_image() == pytest.approx(2 * g.with_sampling("ddim", 2).gflops_per_image())
    assert g.gflops_per_image("dpm", 2) == pytest.approx(g.gflops_per_image() / 2)


def test_common_random_numbers(folders):
    """Two different diffusion models get the same x_T for the same (seed, test slice), whatever the subset."""
    masks = folders["dataset"].split("test").labels
    first = {}
    for key in ("difflung", "segguided"):
        g = load_generator(folders[key], sampler="ddim", sampler_steps=1)
        seen = []
        hook = g.module.register_forward_pre_hook(lambda m, args: seen.append(args[0][:, :1].clone()))
        g.sample(masks[[0, 2]], generator=[scoring.slice_generator(5, i) for i in (0, 2)])
        g.sample(masks[[2]], generator=[scoring.slice_generator(5, 2)])
        hook.remove()
        assert torch.equal(seen[0][1], seen[1][0])  # slice 2's noise does not depend on the other masks
        first[key] = seen[0]
    assert torch.equal(first["difflung"], first["segguided"])
    assert not torch.equal(first["difflung"][0], first["difflung"][1])


def test_pix2pix_noise_per_slice_does_not_depend_on_the_subset(folders):
    g = load_generator(folders["pix2pix"])
    masks = folders["dataset"].split("test").labels
    a = g.sample(masks[[0, 2]], generator=[scoring.slice_generator(3, i) for i in (0, 2)])
    b = g.sample(masks[[2]], generator=[scoring.slice_generator(3, 2)])
    np.testing.assert_array_equal(a[1], b[0])


def test_registry_and_errors(folders, tmp_path):
    assert set(REGISTRY) <= set(DISPLAY_NAMES)
    assert (diffusion_config("segguided", **TINY).mask_mode, diffusion_config("segguided", **TINY).strategy) == \
        ("single", "uniform")
    assert gan_config("spade", "S").model == "spade-S"
    # one recipe for every diffusion model: difflung's by default (min-SNR, v-prediction), the parent's on request
    for key in ("difflung", "segguided", "uniform"):
        cfg = diffusion_config(key, **TINY)
        assert (cfg.snr_gamma, cfg.prediction_type) == (5.0, "v_prediction")
    parent = diffusion_config("segguided", recipe="parent", **TINY)
    assert (parent.snr_gamma, parent.prediction_type, parent.ema_decay) == (None, "epsilon", None)
    with pytest.raises(ValueError, match="recipe 'fast'"):
        diffusion_config("difflung", recipe="fast", **TINY)
    with pytest.raises(ValueError, match="defined by"):
        diffusion_config("difflung", strategy="uniform", **TINY)
    with pytest.raises(ValueError, match="unknown generator 'vae'"):
        diffusion_config("vae")
    with pytest.raises(ValueError, match="not a GAN"):
        gan_config("difflung", "S")
    with pytest.raises(FileNotFoundError, match="not a finished generator folder"):
        load_generator(tmp_path)
    with pytest.raises(ValueError, match="is a gan generator"):
        load_generator(folders["difflung"], key="pix2pix")
    with pytest.raises(ValueError, match="full masks only"):
        load_generator(folders["spade"]).sample(np.full((1, 16, 16), 255, np.uint8), generator=torch.Generator())


def test_generate_and_score_schema(folders):
    ds = folders["dataset"]
    test = ds.split("test")
    gens = [load_generator(folders[k], sampler="ddim", sampler_steps=1) for k in ("difflung", "spade")]
    seg = scoring.judge(ds, folders["difflung"].parent / "judge", steps=2, batch_size=2, device="cpu")
    scored = scoring.generate_and_score(gens, ds, seg, n_test=2, seeds=[0, 1])
    rows = scored.rows
    assert tuple(rows.columns) == scoring.SCHEMA
    idx = scoring.subset_indices(len(test), 2)
    assert idx.tolist() == [0, len(test) - 1]  # spread evenly, both ends
    assert sorted(set(rows["slice"])) == idx.tolist()
    assert all(rows["patient"] == test.patient[rows["slice"].to_numpy()])  # patient id kept for clustering
    n_cls = len(ds.classes) - 1  # background is not scored
    per = rows.groupby(["model", "seed"]).size()
    assert per[("real", -1)] == 2 * n_cls and per[("difflung", 0)] == 2 * (n_cls + 2) == per[("spade", 1)]
    assert set(rows.loc[rows["model"] == "real", "metric"]) == {"dice"}
    assert scored.generated("difflung", seed=1).shape == (2, 16, 16)
    # the judge is reused while its key is unchanged, and the scores are deterministic
    again = scoring.generate_and_score(gens, ds, scoring.judge(ds, folders["difflung"].parent / "judge", steps=2,
                                                               batch_size=2, device="cpu"), n_test=2, seeds=[0, 1])
    assert again.rows.equals(rows)


def test_slice_generator_and_subset_indices():
    a = torch.randn(3, generator=scoring.slice_generator(0, 7))
    assert torch.equal(a, torch.randn(3, generator=scoring.slice_generator(0, 7)))
    assert not torch.equal(a, torch.randn(3, generator=scoring.slice_generator(0, 8)))
    assert not torch.equal(a, torch.randn(3, generator=scoring.slice_generator(1, 7)))
    assert scoring.subset_indices(5, 10).tolist() == [0, 1, 2, 3, 4]
    assert scoring.subset_indices(9, 3).tolist() == [0, 4, 8]
    with pytest.raises(ValueError, match="empty"):
        scoring.subset_indices(0, 3)


def test_one_name_per_model_on_every_page():
    from difflung.augment.arms import ARM_NAMES
    from difflung.generators import DISPLAY_NAMES
    from difflung.judging.reported import POSTER_NAMES

    for key, name in POSTER_NAMES.items():  # claims, chapters and figures say the same name
        assert name == (DISPLAY_NAMES.get(key) or ARM_NAMES[key]), key
