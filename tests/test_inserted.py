"""`+insert` augmentation: lesions repainted into whole slices, every pixel outside the dilated lesions kept."""
import numpy as np
import pytest
import torch

from difflung import labels as L
from difflung.diffusion.patch_model import save_untrained_model
from difflung.insertion import edit_region, insert_into_slices, insertion_arm, new_lesions

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


def _region(lesions, labels, margin_px):
    """The whole-slice edit region: the lesions grown by `margin_px` 8-connected pixels within the lung field."""
    return edit_region(lesions, np.isin(labels, L.LUNG_IDS), None, margin_px, metric="chessboard")


def test_one_edit_region_for_scans_in_mm_and_slices_in_pixels():
    from scipy import ndimage as ndi

    les = np.zeros((2, 15, 15), np.uint8)
    les[0, 7, 7] = L.GGO
    lung = np.ones(les.shape, bool)
    assert edit_region(les, lung, None, 2, metric="chessboard")[0].sum() == 25  # a 5 x 5 square
    assert edit_region(les, lung, (5.0, 1.0, 1.0), 2.0)[0].sum() == 13  # a disk of radius 2 mm
    assert edit_region(les, lung, (5.0, 1.0, 2.0), 2.0)[0].sum() == 7  # 2 mm: 2 rows but 1 column either side
    assert not edit_region(les, lung, (5.0, 1.0, 1.0), 2.0)[1].any()  # in-plane only
    rng = np.random.default_rng(0)  # chessboard margin m == m 8-connected dilations within the lung
    les = (rng.random((4, 20, 20)) > 0.97).astype(np.uint8) * L.GGO
    lung = rng.random(les.shape) > 0.3
    for m in (0, 1, 3):
        grown = ndi.binary_dilation(les > 0, structure=np.ones((1, 3, 3), bool), iterations=m) if m else les > 0
        assert np.array_equal(edit_region(les, lung, None, m, metric="chessboard"), (les > 0) | (grown & lung))
    with pytest.raises(ValueError, match="needs the scan's spacing"):
        edit_region(les, lung, None, 2.0)


def _insert(model, images, labels, lesions, seed=1, **kw):
    kw = {"steps": 4, "jump_length": 2, "jump_n_sample": 2, "device": "cpu", **kw}
    return insert_into_slices(model, images, labels, lesions, generator=torch.Generator().manual_seed(seed), **kw)


def test_outside_the_dilated_lesions_every_pixel_is_the_input(model):
    images, labels, lesions = _slices()
    out = _insert(model, images, labels, lesions)
    region = _region(lesions, labels, 1)
    assert region[0].sum() == 25 and region[1].sum() == 25 and not region[2].any()  # 3x3 lesions grown by 1 px
    assert np.array_equal(out[~region].view(np.uint32), images[~region].view(np.uint32))  # bit-identical
    assert np.all(out[region] != images[region]) and out.min() >= -1 and out.max() <= 1
    assert np.array_equal(out, _insert(model, images, labels, lesions))  # same generator, same slices
    assert not np.array_equal(out[region], _insert(model, images, labels, lesions, seed=2)[region])


def test_the_region_stays_in_the_lung_and_bad_lesions_are_refused(model):
    images, labels, lesions = _slices()
    lesions[0, 3, 2] = L.GGO  # lung corner: its dilation must not reach the body
    region = _region(lesions, labels, 2)
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
    region = _region(new_lesions(labels[[2, 0]], masks), labels[[2, 0]], 1)
    assert np.array_equal(arm.images[~region], images[[2, 0]][~region])
