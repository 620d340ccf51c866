import csv

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from difflung import labels as L
from difflung.judging.metrics import dice_per_class
from difflung.segmentation import SegConfig, Segmenter, train_segmenter

CLASSES = [L.BACKGROUND, L.LUNG, L.EMPHYSEMA]
TINY = dict(channels=(8, 16), strides=(2,), num_res_units=1, batch_size=8, lr=1e-2)


def threshold_task(n, seed, s=16):
    """Smooth random images; label = intensity band (a task defined by absolute intensity, as HU classes are)."""
    rng = np.random.default_rng(seed)
    f = np.stack([gaussian_filter(rng.normal(size=(s, s)), 2.0, mode="wrap") for _ in range(n)])
    img = (f / np.abs(f).max(axis=(1, 2), keepdims=True)).astype(np.float32)
    lab = np.zeros(img.shape, np.uint8)
    lab[img > 0.2] = L.LUNG
    lab[img < -0.4] = L.EMPHYSEMA
    return img, lab


@pytest.fixture(scope="module")
def data():
    return threshold_task(48, 0), threshold_task(16, 1)


def _mean_dice(seg, test):
    d = dice_per_class(seg.predict(test[0]), test[1], CLASSES)
    return d.groupby("class")["dice"].mean()


def test_learns_threshold_segmentation(data):
    train, test = data
    seg = train_segmenter(*train, CLASSES, SegConfig(steps=100, augment=False, **TINY),
                          torch.Generator().manual_seed(0), progress=False)
    d = _mean_dice(seg, test)
    assert (d > 0.9).all(), d.to_dict()
    # instance norm (MONAI's default) discards the absolute level the task is defined by: why batch is the default
    inst = train_segmenter(*train, CLASSES, SegConfig(steps=100, augment=False, norm="instance", **TINY),
                           torch.Generator().manual_seed(0), progress=False)
    assert _mean_dice(inst, test).mean() < d.mean() - 0.05


def test_deterministic_with_augmentation_and_independent_of_global_rng(data, tmp_path):
    train, test = data
    cfg = SegConfig(steps=12, augment=True, **TINY)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = train_segmenter(*train, CLASSES, cfg, torch.Generator().manual_seed(7), progress=False,
                        log_path=tmp_path / "log.csv")
    assert torch.equal(torch.get_rng_state(), state)  # the caller's global RNG is untouched
    torch.manual_seed(999)  # a different global state must not matter
    b = train_segmenter(*train, CLASSES, cfg, torch.Generator().manual_seed(7), progress=False)
    c = train_segmenter(*train, CLASSES, cfg, torch.Generator().manual_seed(8), progress=False)
    pa, pb = a.predict_proba(test[0]), b.predict_proba(test[0])
    assert pa.tobytes() == pb.tobytes()
    assert a.predict(test[0]).tobytes() == b.predict(test[0]).tobytes()
    assert not np.array_equal(pa, c.predict_proba(test[0]))
    assert a.info["images_seen"] == 12 * 8  # every step draws exactly one batch
    # golden values (CPU, torch 2.13, monai 1.6.1): the logged Dice+CE loss at steps 10 and 12
    assert [h["loss"] for h in a.history] == pytest.approx([1.111914, 1.089205], abs=1e-4)
    rows = list(csv.DictReader(open(tmp_path / "log.csv")))
    assert [int(r["step"]) for r in rows] == [10, 12] and all(np.isfinite(float(r["loss"])) for r in rows)


def test_sample_weights_restrict_training_data(data):
    (img, lab), _ = data
    # all weight on slices without emphysema: the model never sees it and never predicts it
    w = (lab == L.EMPHYSEMA).sum((1, 2)) == 0
    assert w.sum() >= 2
    seg = train_segmenter(img, lab, CLASSES, SegConfig(steps=40, augment=False, **TINY),
                          torch.Generator().manual_seed(0), sample_weights=w.astype(float), progress=False)
    assert (seg.predict(img) != L.EMPHYSEMA).all()
    with pytest.raises(ValueError, match="sample_weights"):
        train_segmenter(img, lab, CLASSES, SegConfig(steps=1, **TINY), torch.Generator(),
                        sample_weights=np.zeros(len(img)), progress=False)


def test_weighted_draws_with_dropout_are_golden(data):
    """Pins the weighted batch stream and the dropout noise (global RNG scope) on a fixed generator."""
    (img, lab), _ = data
    cfg = SegConfig(steps=4, augment=False, dropout=0.2, log_every=1, **TINY)
    seg = train_segmenter(img, lab, CLASSES, cfg, torch.Generator().manual_seed(3),
                          sample_weights=np.linspace(0, 1, len(img)), progress=False)
    # golden values (CPU, torch 2.13, monai 1.6.1)
    assert [h["loss"] for h in seg.history] == pytest.approx([1.922597, 1.634065, 1.484412, 1.425401], abs=1e-4)


def test_save_load_round_trip_and_bad_files(data, tmp_path):
    train, test = data
    seg = train_segmenter(*train, CLASSES, SegConfig(steps=5, **TINY), torch.Generator().manual_seed(0),
                          progress=False)
    seg.save(tmp_path / "seg")
    back = Segmenter.load(tmp_path / "seg")
    assert back.classes == CLASSES and back.config == seg.config
    assert back.predict(test[0]).tobytes() == seg.predict(test[0]).tobytes()
    assert back.predict(test[0]).dtype == np.uint8
    assert set(np.unique(back.predict(test[0]))) <= set(CLASSES)
    (tmp_path / "seg" / "model.safetensors").write_bytes(b"\x80\x04 not safetensors")
    with pytest.raises(ValueError, match="model.safetensors"):
        Segmenter.load(tmp_path / "seg")
    with pytest.raises(FileNotFoundError, match="segmenter.json"):
        Segmenter.load(tmp_path / "nothing")


def test_bad_input(data):
    (img, lab), _ = data
    g = torch.Generator()
    with pytest.raises(ValueError, match=r"label values \[4\]"):
        train_segmenter(img, lab, [0, 2], SegConfig(steps=1, **TINY), g, progress=False)
    with pytest.raises(ValueError, match="divisible"):
        train_segmenter(img[:, :15, :15], lab[:, :15, :15], CLASSES, SegConfig(steps=1, **TINY), g, progress=False)
    with pytest.raises(ValueError, match="must both be"):
        train_segmenter(img, lab[:3], CLASSES, SegConfig(steps=1, **TINY), g, progress=False)
    with pytest.raises(ValueError, match="unknown SegConfig keys"):
        SegConfig.from_dict({"chanels": [1]})


@pytest.mark.gpu
def test_trains_and_predicts_on_cuda_with_bf16(data):
    train, test = data
    seg = train_segmenter(*train, CLASSES, SegConfig(steps=20, amp=True, **TINY), torch.Generator().manual_seed(0),
                          device="cuda", progress=False)
    pred = seg.predict(test[0])
    assert pred.shape == test[0].shape and set(np.unique(pred)) <= set(CLASSES)
    assert np.isfinite(seg.info["final_loss"]) and "cuda" in seg.info["provenance"]["device"]


def test_class_weights_inverse_sqrt_frequency():
    from difflung.segmentation import class_weights

    channel = np.zeros((1, 10, 10), np.uint8)
    channel[0, :1, :4] = 1  # 4 % of the pixels
    w = class_weights(channel, 3, "inverse_sqrt_frequency")
    assert w[0].item() == pytest.approx(1.0) and w[1].item() == pytest.approx((0.96 / 0.04) ** 0.5, rel=1e-4)
    assert w[2].item() == 20.0  # absent class: capped
    assert class_weights(channel, 3, "none") is None
    with pytest.raises(ValueError, match="class_weighting 'x'"):
        class_weights(channel, 3, "x")
