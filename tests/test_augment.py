"""difflung.augment (arms, oversampling control, training and scoring over seeds) and chapter 5's tables."""
import numpy as np
import pandas as pd
import pytest

from difflung import augment as A
from difflung import labels as L
from difflung.chapters import segmentation_augmentation as ch5
from difflung.dataset import Slices
from difflung.segmentation import SegConfig

TINY = dict(channels=(8, 16), strides=(2,), num_res_units=1, batch_size=8, lr=1e-2)


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
    idx = A.oversample_indices(lab, target, rare, 300, np.random.default_rng(1))
    got = np.array([(lab[idx] == c).mean() for c in rare])
    np.testing.assert_allclose(got, want, rtol=0.05)
    assert np.isin(lab[idx], rare).any((1, 2)).all()  # only slices with a rare class are repeated
    assert len(set(idx.tolist())) >= 2
    np.testing.assert_array_equal(idx, A.oversample_indices(lab, target, rare, 300, np.random.default_rng(1)))
    w = A.balance_weights(np.array([[0.1, 0.0], [0.0, 0.1], [0.05, 0.05]]), np.array([0.05, 0.05]))
    assert w.min() >= 0 and w.sum() == pytest.approx(1) and w.max() < 1  # spread, not all on the exact match
    with pytest.raises(ValueError, match="nothing to oversample"):
        A.oversample_indices(np.full((3, 8, 8), L.LUNG, np.uint8), target, rare, 5, rng)


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
    dice = pd.DataFrame(rows)
    return A.Results("phantom", [L.LUNG, L.EMPHYSEMA, L.GGO], list(range(6)), dice, A.per_seed_dice(dice),
                       test, np.arange(2), {}, [], 2)


def test_statistics_tables_and_winners(tmp_path):
    res = _fake_results(tmp_path)
    cmp = A.compare_arms(res).set_index(["class", "arm"])
    assert cmp.loc[("emphysema", "+difflung"), "delta"] == pytest.approx(0.1)
    assert cmp.loc[("emphysema", "+difflung"), "p_wilcoxon"] == pytest.approx(2 / 2**6)  # 6 positive pairs
    assert cmp.loc[("emphysema", "+difflung"), "n_seeds"] == 6
    cfg = SegConfig(steps=1, **TINY)
    path = ch5.write_chapter_metrics(tmp_path, [res], config=cfg, seed=0)
    first = path.read_bytes()
    ch5.write_chapter_metrics(tmp_path, [res], config=cfg, seed=0)
    assert path.read_bytes() == first  # deterministic: timings live in timings.json, not metrics.csv
    w = ch5.table_winners(tmp_path)
    assert w.loc["emphysema", "winner"] == "+difflung" and w.loc["emphysema", "verdict"].startswith("better than ref")
    assert w.loc["lung", "winner"] == "ref = oversample = +difflung"
    assert "tie with ref" in w.loc["lung", "verdict"]
    assert "not measurable" in w.loc["ggo", "verdict"]
    t = ch5.table_results(tmp_path)
    assert t.loc[("DiffLung-UNet", "ours"), "Dice emphysema"].startswith("0.640 [")
    assert t.loc[("DiffLung-UNet", "reported (poster)"), "Dice emphysema"] == "0.80"
    assert t.loc[("ref-UNet", "reported (poster)"), "Dice GGO"] == "not reported"
    assert t.loc[("ref-UNet", "ours"), "Dice GGO"] == "no ggo in test truth"
    assert t.loc[("ref-UNet", "ours"), "seeds"] == "6"
    tt = ch5.table_tests(tmp_path)
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
              boost=0.15, sampler="ddim", sampler_steps=2, device="cpu", n_examples=2)
    res, syn, balance = A.run_experiment(inputs.dataset, run_dir, **kw)
    n = round(0.5 * len(ds.split("train")))
    assert set(res.dice.arm) == set(A.ARMS) and res.n_extra == n
    extra_arms = ["oversample-UNet", "Seg-Guided-UNet", "DiffLung-UNet"]
    assert (balance.loc[extra_arms, "images"] == len(ds.split("train")) + n).all()
    assert all(s.images.shape == (n, 32, 32) and np.array_equal(s.labels, syn.masks) for s in syn.sets.values())
    ch5.write_chapter_metrics(run_dir, [res], config=cfg, seed=0, synthetic=syn.sets)
    first = (run_dir / "metrics.csv").read_bytes()
    res2, _, _ = A.run_experiment(inputs.dataset, run_dir, **kw)
    ch5.write_chapter_metrics(run_dir, [res2], config=cfg, seed=0, synthetic=syn.sets)
    assert (run_dir / "metrics.csv").read_bytes() == first  # same seeds on CPU: byte-identical metrics
    for f in ("phantom/synthetic_difflung.npz", "phantom/dice_per_slice.csv", "phantom/segmenters/ref/segmenter.json",
              "timings.json"):
        assert (run_dir / f).is_file(), f
    assert ch5.table_winners(run_dir).index.tolist() == ["lung", "emphysema", "fibrosis", "ggo"]
    folder, summary = ch5.export_nnunet_example(inputs.dataset, syn.sets["+difflung"], run_dir)
    assert summary["numTraining"] == len(ds.split("train")) + n and summary["synthetic cases"] == n


def test_training_seeds_floor():
    assert A.training_seeds(3, 4, min_seeds=2) == [3, 4, 5, 6]
    with pytest.raises(ValueError, match="min_seeds=5"):
        A.training_seeds(0, 2, min_seeds=5)


def test_a_new_arm_is_one_registry_entry(monkeypatch, tmp_path):
    """A synthetic arm added to ARMS gets its training set from build_arms and its model folder from
    locate_inputs, with no other change."""
    from difflung.diffusion.toy import toy_dataset

    arms = dict(A.ARMS, **{"+insert": A.ArmSpec("+insert", "Insert-UNet", "synthetic", "07_insert/model",
                                                 "chapter 7 (07_insert)")})
    monkeypatch.setattr(A, "ARMS", arms)
    monkeypatch.setattr(ch5, "ARMS", arms)
    monkeypatch.setattr(ch5, "SYNTHETIC_ARMS", tuple(k for k, a in arms.items() if a.extra == "synthetic"))
    lab = np.full((4, 8, 8), L.LUNG, np.uint8)
    lab[:2, 0, 0] = L.EMPHYSEMA
    train = Slices(np.zeros((4, 8, 8), np.float32), lab, np.array(["p"] * 4), np.zeros(4, np.float32))
    syn = A.SyntheticSet("+insert", np.ones((2, 8, 8), np.float32), lab[:2], tmp_path, 1.0, 2.0)
    built = A.build_arms(train, 2, lab[:2], {"+insert": syn}, rare=[L.EMPHYSEMA], seed=0)
    assert list(built) == ["ref", "oversample", "+insert"]  # synthetic arms without a set are left out
    assert built["+insert"].n_extra == 2 and built["+insert"].images[-1].max() == 1.0
    toy_dataset(tmp_path / "01_data_preparation" / "dataset", n_patients=3, n_slices=1, size=16)
    with pytest.raises(FileNotFoundError, match=r"run chapter 7 \(07_insert\) first"):
        ch5.locate_inputs(tmp_path, models={"+insert": tmp_path / "07_insert" / "model"})
