"""Training recipes, checkpoint weights and the convergence criteria measured on a toy dataset."""
import numpy as np
import pytest
import torch

from difflung.judging.convergence import checkpoint_model, criteria_classes, fit_judge, measure_criteria
from difflung.diffusion import TrainConfig, train_diffusion
from difflung.diffusion.recipes import RECIPES, recipe_config, recipe_difference
from difflung.diffusion.toy import toy_dataset
from difflung.segmentation import SegConfig


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
    assert (meta_e["step"], meta_e["weights"], meta_r["weights"]) == (3, "ema", "raw")
    assert meta_e["noise_schedule"]["prediction_type"] == "v_prediction"  # the default
    assert any(not torch.equal(a, b) for a, b in zip(ema.parameters(), raw.parameters()))
    train_diffusion(ds, cfg, tmp_path / "m", device="cpu", progress=False)  # finished: the saved EMA model
    fin, meta_f = checkpoint_model(tmp_path / "m", ds)
    assert meta_f["step"] == 6


def test_real_slices_meet_the_air_and_hu_criteria_and_lung_is_always_judged(ds, tmp_path):
    judge = fit_judge(tmp_path / "judge", ds, config=SegConfig(channels=(4, 8), strides=(2,), num_res_units=1,
                                                               steps=5, shift_prob=0, noise_prob=0), progress=False)
    real = ds.split("test")
    table, info = measure_criteria(lambda m, g: real.images.copy(), ds, judge, classifier_steps=5)
    rows = dict(zip(table["criterion"], table["value"]))
    assert rows["slices with air within 30 HU"] == 1.0
    assert all(v == 0.0 for k, v in rows.items() if k.startswith("HU Wasserstein"))
    assert "judge Dice ratio, lung" in rows
    judged, _ = criteria_classes({"lung": 0.1, "ggo": 0.9, "body": 0.9, "emphysema": 0.1})
    assert judged == ["lung", "ggo"]
    shifted, _ = measure_criteria(lambda m, g: np.clip(real.images + 0.1, -1, 1), ds, judge, classifier_steps=5)
    assert dict(zip(shifted["criterion"], shifted["met"]))["slices with air within 30 HU"] == False  # noqa: E712
