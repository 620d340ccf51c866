"""The capacity check: a generator trained on a handful of training slices must redraw their masks."""
import numpy as np
import pytest

from difflung.capacity import CAPACITY_MIN, CapacityJob, capacity_check, handful_dataset
from difflung.generators import diffusion_config, gan_config
from difflung.training_curves import JudgeSpec


def test_handful_is_the_same_slices_in_every_split(toy_ds, tmp_path):
    ds = handful_dataset(toy_ds, tmp_path / "h", 3)
    tr, va, te = (ds.split(s) for s in ("train", "val", "test"))
    assert len(tr) == len(va) == len(te) == 3
    np.testing.assert_array_equal(tr.images, va.images)
    np.testing.assert_array_equal(tr.labels, te.labels)
    assert not set(tr.patient) & set(va.patient)  # patients stay disjoint by name
    assert set(tr.patient) <= set(toy_ds.split("train").patient)
    assert handful_dataset(toy_ds, tmp_path / "h", 3).root == ds.root  # written once


@pytest.mark.parametrize("key", ["difflung", "pix2pix"])
def test_capacity_check_scores_the_lung_ratio_on_the_handful(toy_ds, tmp_path, key):
    cfg = (diffusion_config(key, preset="tiny", steps=3, batch_size=2, seed=0, warmup=1) if key == "difflung"
           else gan_config(key, "T", steps=3, batch_size=2, seed=0))
    row = capacity_check(CapacityJob(key, cfg, str(tmp_path / key), str(toy_ds.root),
                                     JudgeSpec(str(tmp_path / "judge"), 4), n_slices=3, sampler="ddim",
                                     sampler_steps=2))
    assert row["model"] == key and row["slices"] == 3 and row["steps"] == 3
    assert row["lung Dice real"] > 0 and np.isfinite(row["lung ratio"])
    assert row["passed"] == (row["lung ratio"] >= CAPACITY_MIN)
    assert row["lung ratio"] == pytest.approx(row["lung Dice generated"] / row["lung Dice real"])
