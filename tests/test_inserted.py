"""`+insert` augmentation: lesions repainted into whole slices, every pixel outside the dilated lesions kept."""
import numpy as np
import pytest
import torch

from difflung import labels as L
from difflung.insertion.whole_slice import insert_into_slices, insertion_arm, new_lesions, slice_edit_region
from difflung.insertion.patches import save_untrained_model

CLASSES = [L.BACKGROUND, L.BODY, L.LUNG, L.EMPHYSEMA, L.GGO]
S = 16


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return save_untrained_model(tmp_path_factory.mktemp("m") / "model", CLASSES, S)


def _slices(n=3, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (n, S, S)).astype(np.float32)
    labels = np.full((n, S, S), L.BODY, np.uint8)
    labels[:, 3:13, 2:14] = L.LUNG
    lesions = np.zeros((n, S, S), np.uint8)
    lesions[0, 6:9, 5:8] = L.GGO
    lesions[1, 8:11, 9:12] = L.EMPHYSEMA
    return images, labels, lesions  # slice 2: no lesion


def _insert(model, images, labels, lesions, seed=1, **kw):
    kw = {"steps": 4, "jump_length": 2, "jump_n_sample": 2, "device": "cpu", **kw}
    return insert_into_slices(model, images, labels, lesions, generator=torch.Generator().manual_seed(seed), **kw)


def test_outside_the_dilated_lesions_every_pixel_is_the_input(model):
    images, labels, lesions = _slices()
    out = _insert(model, images, labels, lesions)
    region = slice_edit_region(lesions, labels, 1)
    assert region[0].sum() == 25 and region[1].sum() == 25 and not region[2].any()  # 3x3 lesions grown by 1 px
    assert np.array_equal(out[~region].view(np.uint32), images[~region].view(np.uint32))  # bit-identical
    assert np.all(out[region] != images[region]) and out.min() >= -1 and out.max() <= 1
    assert np.array_equal(out, _insert(model, images, labels, lesions))  # same generator, same slices
    assert not np.array_equal(out[region], _insert(model, images, labels, lesions, seed=2)[region])


def test_the_region_stays_in_the_lung_and_bad_lesions_are_refused(model):
    images, labels, lesions = _slices()
    lesions[0, 3, 2] = L.GGO  # lung corner: its dilation must not reach the body
    region = slice_edit_region(lesions, labels, 2)
    assert not (region & (labels == L.BODY)).any()
    bad = lesions.copy()
    bad[0, 0, 0] = L.GGO  # body
    with pytest.raises(ValueError, match="outside the slices' lung field"):
        _insert(model, images, labels, bad)
    bad = lesions.copy()
    bad[0, 6, 6] = L.LUNG
    with pytest.raises(ValueError, match="not pathology"):
        _insert(model, images, labels, bad)
    bad = lesions.copy()
    bad[0, 6, 6] = L.FIBROSIS  # pathology the model has no channel for
    with pytest.raises(ValueError, match="cannot paint"):
        _insert(model, images, labels, bad)


def test_the_arm_inserts_each_masks_new_lesions_into_its_base_slice(model):
    images, labels, _ = _slices()
    masks = labels[[2, 0]].copy()
    masks[0, 5:8, 5:8] = L.GGO
    masks[1, 9:11, 9:11] = L.EMPHYSEMA
    assert np.array_equal(new_lesions(labels[[2, 0]], masks) > 0, masks != labels[[2, 0]])
    arm = insertion_arm(model, images, labels, masks, [2, 0], seed=0, steps=4, jump_length=2, device="cpu")
    assert arm.images.shape == (2, S, S) and np.array_equal(arm.labels, masks)
    region = slice_edit_region(new_lesions(labels[[2, 0]], masks), labels[[2, 0]], 1)
    assert np.array_equal(arm.images[~region], images[[2, 0]][~region])
