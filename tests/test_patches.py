"""Patches at physical scale: resampling on the patch grid, the patch dataset, and its model recording the spacing."""
import json

import numpy as np
import pytest

from _ct_fixtures import toy_chest
from difflung import labels as L
from difflung.data.dataset import Dataset, DatasetError, Volume
from difflung.diffusion.patch_model import SPACING_KEY, dataset_spacing, lesion_focused, train_patch_model
from difflung.insertion.patches import (build_patch_dataset, cut_patches, grid_coords, phantom_volumes, sample_plane,
                                        to_grid_index)


def test_sample_plane_is_physical_and_grid_index_inverts_it():
    img = np.add.outer(np.arange(100.0), np.zeros(100)).astype(np.float32)  # value = row index
    p = sample_plane(img, (50.0, 50.0), (0.5, 0.5), 8, out_mm=1.0)  # 1 mm grid on 0.5 mm pixels: 2 rows apart
    assert np.diff(p[:, 4]) == pytest.approx(2.0, abs=1e-4)
    assert p[:, 4].mean() == pytest.approx(50.0, abs=1e-4)
    ys, xs = grid_coords((50.0, 40.0), (0.5, 0.8), 8, 1.0)
    gi, gj = to_grid_index(ys, xs, (50.0, 40.0), (0.5, 0.8), 8, 1.0)
    assert gi == pytest.approx(np.arange(8)) and gj == pytest.approx(np.arange(8))
    lab = (img > 60).astype(np.uint8)
    q = sample_plane(lab, (60.0, 50.0), (1.0, 1.0), 8, order=0, cval=0)
    assert q.dtype == np.uint8 and set(np.unique(q)) == {0, 1}
    assert np.all(sample_plane(img, (-50.0, 50.0), (1.0, 1.0), 4) == L.MODEL_WINDOW[0])  # off the slice: air


def _toy_volume(name, spacing=(5.0, 4.0, 4.0), lesion_cls=None):
    hu, truth, lab = toy_chest(shape=(8, 80, 80), spacing=spacing, lesion=lesion_cls is not None)
    if lesion_cls is not None:
        truth[lab > 0] = lesion_cls
    return Volume(name, hu, truth, spacing, source=f"toy:{name}")


def test_patches_are_cut_around_lung_and_lesions_at_the_patch_spacing():
    v = _toy_volume("r0", lesion_cls=L.GGO)
    s = cut_patches(v, 16, np.random.default_rng(0), per_slice=4, out_mm=3.0, lesion_share=0.5)
    assert s.images.shape[1:] == (16, 16) and len(s) == len(s.labels) == len(s.z)
    assert all(np.isin(lab, L.LUNG_IDS).mean() >= 0.25 for lab in s.labels)
    assert (s.labels == L.GGO).any(axis=(1, 2)).sum() >= 2  # the lesion slices' lesion-centred patches
    assert set(s.patient) == {"r0"} and -1.0 <= s.images.min() and s.images.max() <= 1.0
    again = cut_patches(v, 16, np.random.default_rng(0), per_slice=4, out_mm=3.0, lesion_share=0.5)
    assert np.array_equal(s.images, again.images)


def test_patch_dataset_trains_unchanged_and_the_model_records_its_spacing(tmp_path):
    from difflung.diffusion.train import TrainConfig

    phantom = phantom_volumes(3, np.random.default_rng(0), slices_per_patient=3, out_mm=3.0, fov_mm=360.0,
                              ggo=0.3, emphysema=0.0, fibrosis=0.0)
    real = [_toy_volume("real0")]
    ds = build_patch_dataset(tmp_path / "ds", phantom, real, size=16, rng=np.random.default_rng(1), per_slice=2,
                             out_mm=3.0)
    assert dataset_spacing(ds) == 3.0 and ds.size == 16
    assert "real0" in ds.manifest["splits"]["train"]["patients"]
    cfg = TrainConfig(preset="tiny", steps=2, batch_size=4, warmup=0, ema_decay=None)
    res = train_patch_model(ds, cfg, tmp_path / "model", device="cpu", progress=False)
    meta = json.loads((res.model_dir / "difflung_config.json").read_text())
    assert res.finished and meta[SPACING_KEY] == 3.0 and meta["sample_size"] == 16
    assert train_patch_model(ds, cfg, tmp_path / "model", device="cpu", progress=False).reused


def test_whole_slice_dataset_and_missing_lesion_loss_are_refused(tmp_path):
    from difflung.data.dataset import Slices, write_dataset
    from difflung.diffusion.train import TrainConfig

    sl = Slices(np.zeros((2, 8, 8), np.float32), np.full((2, 8, 8), L.LUNG, np.uint8), np.array(["a", "a"]),
                np.zeros(2, np.float32))
    ds = write_dataset(tmp_path / "whole", sl, source="x", params={}, seed=0, split={"train": ["a"], "val": [],
                                                                                        "test": []})
    with pytest.raises(DatasetError, match="not a patch dataset"):
        dataset_spacing(Dataset(ds.root))
    cfg = TrainConfig()
    if not hasattr(cfg, "lesion_weight"):
        with pytest.raises(NotImplementedError, match="lesion_weight"):
            lesion_focused(cfg, 5.0, [L.GGO])
    else:
        assert lesion_focused(cfg, 5.0, [L.GGO]).lesion_weight == 5.0
