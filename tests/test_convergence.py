"""Training recipes and a stopped run's checkpoint weights: what the convergence benchmark trains and scores."""
import pytest
import torch

from difflung.diffusion import TrainConfig, train_diffusion
from difflung.diffusion.recipes import RECIPES, recipe_config, recipe_difference
from difflung.diffusion.toy import toy_dataset
from difflung.diffusion.train import checkpoint_model


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return toy_dataset(tmp_path_factory.mktemp("toy") / "ds", n_patients=10, n_slices=2, size=16)


def test_parent_recipe_is_the_published_one():
    cfg = recipe_config("parent", steps=1000, preset="tiny")
    assert (cfg.lr, cfg.warmup, cfg.prediction_type, cfg.ema_decay, cfg.batch_size, cfg.mixed_precision) == \
        (1e-4, 500, "epsilon", None, 16, "no")
    assert cfg.snr_gamma is None and cfg.preset == "tiny" and cfg.steps == 1000
    assert set(recipe_difference()) and all(a != b for a, b in recipe_difference().values())
    # the parent draws timesteps uniformly; difflung draws half of each batch from the least noisy tenth
    assert cfg.low_t_share == 0.0 and recipe_difference()["low_t_share"] == (0.0, 0.5)
    assert set(RECIPES) >= {"parent", "difflung"}


def test_unknown_recipe_or_field_is_an_error():
    with pytest.raises(ValueError, match="recipe 'nope'"):
        recipe_config("nope")
    with pytest.raises(ValueError, match="unknown TrainConfig fields"):
        recipe_config("parent", learning_rate=1.0)


def test_checkpoint_model_reads_raw_and_ema_weights_of_a_stopped_run(ds, tmp_path):
    cfg = TrainConfig(preset="tiny", steps=6, batch_size=4, warmup=1, ema_decay=0.9, checkpoint_every=100)
    train_diffusion(ds, cfg, tmp_path / "m", device="cpu", progress=False, stop_after=3)
    ema, meta_e = checkpoint_model(tmp_path / "m", ds)
    raw, meta_r = checkpoint_model(tmp_path / "m", ds, ema=False)
    assert (meta_e["step"], meta_e["weights"], meta_r["weights"], meta_e["seed"]) == (3, "ema", "raw", cfg.seed)
    assert meta_e["noise_schedule"]["prediction_type"] == "v_prediction"  # the default
    assert any(not torch.equal(a, b) for a, b in zip(ema.parameters(), raw.parameters()))
    train_diffusion(ds, cfg, tmp_path / "m", device="cpu", progress=False)  # finished: the saved EMA model
    fin, meta_f = checkpoint_model(tmp_path / "m", ds)
    assert meta_f["step"] == 6
    with pytest.raises(FileNotFoundError, match="no finished model and no checkpoint"):
        checkpoint_model(tmp_path / "empty", ds)
