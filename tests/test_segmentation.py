import csv

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from difflung import labels as L
from difflung.evaluation import dice_per_class
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


# ---------------------------------------------------------------------------------------------------------------
# chapter 5 helpers (difflung.chapters.segmentation_augmentation)

from difflung.chapters import segmentation_augmentation as ch5  # noqa: E402
from difflung.dataset import Slices  # noqa: E402


def test_oversampling_matches_target_class_balance():
    rng = np.random.default_rng(0)
    lab = np.full((30, 8, 8), L.LUNG, np.uint8)
    for i in range(30):  # slices with 0..15 emphysema pixels, fibrosis on every third
        lab[i].flat[: i % 16] = L.EMPHYSEMA
        if i % 3 == 0:
            lab[i, 7, : 2 + i % 5] = L.FIBROSIS
    rare = [L.EMPHYSEMA, L.FIBROSIS]
    target = np.full((10, 8, 8), L.LUNG, np.uint8)
    target[:, 0, :] = L.EMPHYSEMA
    target[:, 1, :2] = L.EMPHYSEMA  # 10 / 64 = 16%: above the real mean (11%), below the richest slice (23%)
    target[:, 7, :3] = L.FIBROSIS  # 3 / 64
    want = np.array([(target == c).mean() for c in rare])
    idx = ch5.oversample_indices(lab, target, rare, 300, np.random.default_rng(1))
    got = np.array([(lab[idx] == c).mean() for c in rare])
    np.testing.assert_allclose(got, want, rtol=0.05)
    assert np.isin(lab[idx], rare).any((1, 2)).all()  # only slices with a rare class are repeated
    assert len(set(idx.tolist())) >= 2
    np.testing.assert_array_equal(idx, ch5.oversample_indices(lab, target, rare, 300, np.random.default_rng(1)))
    w = ch5.balance_weights(np.array([[0.1, 0.0], [0.0, 0.1], [0.05, 0.05]]), np.array([0.05, 0.05]))
    assert w.min() >= 0 and w.sum() == pytest.approx(1) and w.max() < 1  # spread, not all on the exact match
    with pytest.raises(ValueError, match="nothing to oversample"):
        ch5.oversample_indices(np.full((3, 8, 8), L.LUNG, np.uint8), target, rare, 5, rng)


def _fake_results(tmp_path):
    """Six seeds; +difflung beats ref on emphysema on every seed; lung is a three-way tie; GGO absent from test."""
    test_labels = np.full((4, 8, 8), L.LUNG, np.uint8)
    test_labels[:, 0, 0] = L.EMPHYSEMA
    test = Slices(np.zeros((4, 8, 8), np.float32), test_labels, np.array(["p1"] * 4), np.zeros(4, np.float32))
    rows = []
    for arm, gain in (("ref", 0.0), ("oversample", -0.02), ("+difflung", 0.1)):
        for s in range(6):
            for i in range(4):
                rows += [{"arm": arm, "seed": s, "image": i, "class": "emphysema", "class_id": L.EMPHYSEMA,
                          "dice": 0.5 + 0.01 * s + 0.01 * i + gain},
                         {"arm": arm, "seed": s, "image": i, "class": "lung", "class_id": L.LUNG, "dice": 0.9},
                         {"arm": arm, "seed": s, "image": i, "class": "ggo", "class_id": L.GGO,
                          "dice": 0.0 if (arm == "oversample" and i == 0) else np.nan}]
    import pandas as pd

    dice = pd.DataFrame(rows)
    return ch5.Results("phantom", [L.LUNG, L.EMPHYSEMA, L.GGO], list(range(6)), dice, ch5.per_seed_dice(dice),
                       test, np.arange(2), {}, [], 2)


def test_statistics_tables_and_winners(tmp_path):
    res = _fake_results(tmp_path)
    cmp = ch5.compare_to_ref(res).set_index(["class", "arm"])
    assert cmp.loc[("emphysema", "+difflung"), "delta"] == pytest.approx(0.1)
    assert cmp.loc[("emphysema", "+difflung"), "p_wilcoxon"] == pytest.approx(2 / 2**6)  # 6 positive pairs
    assert cmp.loc[("emphysema", "+difflung"), "n_seeds"] == 6
    cfg = SegConfig(steps=1, **TINY)
    path = ch5.write_chapter_metrics(tmp_path, [res], config=cfg, seed=0)
    first = path.read_bytes()
    ch5.write_chapter_metrics(tmp_path, [res], config=cfg, seed=0)
    assert path.read_bytes() == first  # deterministic: timings live in timings.json, not metrics.csv
    w = ch5.winners(tmp_path)
    assert w.loc["emphysema", "winner"] == "+difflung" and w.loc["emphysema", "verdict"].startswith("better than ref")
    assert w.loc["lung", "winner"] == "ref = oversample = +difflung"
    assert "tie with ref" in w.loc["lung", "verdict"]
    assert "not measurable" in w.loc["ggo", "verdict"]
    t = ch5.results_table(tmp_path)
    assert t.loc[("DiffLung-UNet", "ours"), "Dice emphysema"].startswith("0.640 [")
    assert t.loc[("DiffLung-UNet", "reported (poster)"), "Dice emphysema"] == "0.80"
    assert t.loc[("ref-UNet", "reported (poster)"), "Dice GGO"] == "not reported"
    assert t.loc[("ref-UNet", "ours"), "Dice GGO"] == "no ggo in test truth"
    assert t.loc[("ref-UNet", "ours"), "seeds"] == "6"
    tt = ch5.tests_table(tmp_path)
    assert tt.loc[("emphysema", "+difflung"), "p signed-rank (seeds)"] == pytest.approx(0.03125)
    assert tt.loc[("emphysema", "oversample"), "difference"] == pytest.approx(-0.02)


def test_chapter_experiment_end_to_end(tmp_path):
    """Toy data, two tiny diffusion models, every arm: same extra count, deterministic metrics, outputs written."""
    from difflung.diffusion.toy import toy_dataset
    from difflung.diffusion.train import TrainConfig, train_diffusion

    ds = toy_dataset(tmp_path / "runs" / "01_data_preparation" / "dataset", n_patients=5, n_slices=2, size=32)
    for folder, mode, strategy in (("03_cbmat_training/model", "onehot", "cbmat"),
                                   ("04_baseline_comparison/models/segguided", "single", "uniform")):
        train_diffusion(ds, TrainConfig(preset="tiny", steps=1, batch_size=4, mask_mode=mode, strategy=strategy),
                        tmp_path / "runs" / folder, device="cpu", progress=False)
    inputs = ch5.locate_inputs(tmp_path / "runs")
    assert set(inputs.models) == {"+difflung", "+segguided"} and inputs.real_dataset is None
    cfg = SegConfig(channels=(4, 8), strides=(2,), num_res_units=0, steps=3, batch_size=4)
    run_dir = tmp_path / "ch5"
    kw = dict(tag="phantom", models=inputs.models, config=cfg, seeds=[0, 1], seed=0, mix_ratio=0.5,
              sample_steps=2, device="cpu", n_examples=2)
    res, syn, balance = ch5.run_experiment(inputs.dataset, run_dir, **kw)
    n = round(0.5 * len(ds.split("train")))
    assert set(res.dice.arm) == set(ch5.ARMS) and res.n_extra == n
    assert (balance.loc[["oversample-UNet", "Seg-Guided-UNet", "DiffLung-UNet"], "images"] == len(ds.split("train")) + n).all()
    assert all(s.images.shape == (n, 32, 32) and np.array_equal(s.labels, syn.masks) for s in syn.sets.values())
    ch5.write_chapter_metrics(run_dir, [res], config=cfg, seed=0, synthetic=syn.sets)
    first = (run_dir / "metrics.csv").read_bytes()
    res2, _, _ = ch5.run_experiment(inputs.dataset, run_dir, **kw)
    ch5.write_chapter_metrics(run_dir, [res2], config=cfg, seed=0, synthetic=syn.sets)
    assert (run_dir / "metrics.csv").read_bytes() == first  # same seeds on CPU: byte-identical metrics
    for f in ("phantom/synthetic_difflung.npz", "phantom/dice_per_slice.csv", "phantom/segmenters/ref/segmenter.json",
              "timings.json"):
        assert (run_dir / f).is_file(), f
    assert ch5.winners(run_dir).index.tolist() == ["lung", "emphysema", "fibrosis", "ggo"]
    folder, summary = ch5.export_nnunet_example(inputs.dataset, syn.sets["+difflung"], run_dir)
    assert summary["numTraining"] == len(ds.split("train")) + n and summary["synthetic cases"] == n


@pytest.mark.gpu
def test_trains_and_predicts_on_cuda_with_bf16(data):
    train, test = data
    seg = train_segmenter(*train, CLASSES, SegConfig(steps=20, amp=True, **TINY), torch.Generator().manual_seed(0),
                          device="cuda", progress=False)
    pred = seg.predict(test[0])
    assert pred.shape == test[0].shape and set(np.unique(pred)) <= set(CLASSES)
    assert np.isfinite(seg.info["final_loss"]) and "cuda" in seg.info["provenance"]["device"]
