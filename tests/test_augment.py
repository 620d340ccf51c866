"""difflung.augment (arms, oversampling control, training and scoring over seeds) and chapter 5's tables."""
import numpy as np
import pandas as pd
import pytest

from difflung import augment as A
from difflung import labels as L
from difflung.chapters import segmentation_augmentation as ch5
from difflung.data.dataset import Slices
from difflung.core.metrics_csv import read_metrics
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


def _fake_results(n_seeds=6):
    """+difflung beats ref on emphysema on every seed (+0.1), +segguided by +0.05, oversample loses 0.02, each gain
    drifting a little with the seed (so paired differences vary, around the same means); lung is a tie; GGO is
    absent from the test truth."""
    test_labels = np.full((4, 8, 8), L.LUNG, np.uint8)
    test_labels[:, 0, 0] = L.EMPHYSEMA
    test = Slices(np.zeros((4, 8, 8), np.float32), test_labels, np.array(["p1"] * 4), np.zeros(4, np.float32))
    rows = []
    for arm, gain, drift in (("ref", 0.0, 0.0), ("oversample", -0.02, 0.0005), ("+segguided", 0.05, 0.002),
                             ("+difflung", 0.1, 0.001)):
        for s in range(n_seeds):
            for i in range(4):
                rows += [{"arm": arm, "seed": s, "image": i, "class": "emphysema", "class_id": L.EMPHYSEMA,
                          "dice": 0.5 + 0.01 * s + 0.01 * i + gain + drift * (s - (n_seeds - 1) / 2)},
                         {"arm": arm, "seed": s, "image": i, "class": "lung", "class_id": L.LUNG, "dice": 0.9},
                         {"arm": arm, "seed": s, "image": i, "class": "ggo", "class_id": L.GGO,
                          "dice": 0.0 if (arm == "oversample" and i == 0) else np.nan}]
    dice = pd.DataFrame(rows)
    dice["truth"] = dice["class"] != "ggo"
    # one test patient: its pooled Dice is the mean of its four slices' values here
    patients = dice[dice.truth].groupby(["arm", "seed", "class", "class_id"], as_index=False)["dice"].mean()
    patients = pd.concat([patients, dice[~dice.truth].drop_duplicates(["arm", "seed", "class"])[patients.columns]])
    patients = patients.assign(patient="p1", dice=patients.dice.where(patients["class"] != "ggo"))
    return A.Results("phantom", [L.LUNG, L.EMPHYSEMA, L.GGO], list(range(n_seeds)), dice,
                     A.per_seed_dice(dice, patients), test, np.arange(2), {}, [], 2, patients=patients)


def _upstream(root, *, difflung_converged=True, emphysema_signature=True, segguided_record=False, lung_ratio=0.95):
    """Chapter 1's HU signature and chapters 3/4's convergence records, as those chapters write them (the main
    model's judge Dice ratio on lung `lung_ratio`: below 0.8 it never learned its masks)."""
    from difflung.judging import criteria, instruments

    sig = pd.DataFrame([{"class": "emphysema", "size": 32, "measurable": emphysema_signature,
                         "reason": "" if emphysema_signature else "at 32 px: HU signature lost"},
                        {"class": "lung", "size": 32, "measurable": True, "reason": ""}])
    instruments.write_signature(root / "01_data_preparation", sig)
    table = pd.DataFrame([{"criterion": "c", "value": 1.0, "threshold": 1.0, "met": difflung_converged},
                          {"criterion": "judge Dice ratio, lung", "value": lung_ratio, "threshold": ">= 0.8",
                           "met": lung_ratio >= 0.8}])
    criteria.write_criteria(root / "03_cbmat_training", {"difflung": {"converged": difflung_converged,
                                                                       "table": table}}, {})
    if segguided_record:
        criteria.write_criteria(root / "04_baseline_comparison", {"segguided": {"converged": True, "table": table}},
                                {})


def _chapter(tmp_path, n_seeds=6, **upstream):
    root = tmp_path / "runs"
    _upstream(root, **upstream)
    run_dir = root / "05_segmentation_augmentation"
    path = ch5.write_chapter_metrics(run_dir, [_fake_results(n_seeds)], config=SegConfig(steps=1, **TINY), seed=0)
    return root, run_dir, path


def test_metrics_rows_and_results_table(tmp_path):
    root, run_dir, path = _chapter(tmp_path)
    first = path.read_bytes()
    ch5.write_chapter_metrics(run_dir, [_fake_results()], config=SegConfig(steps=1, **TINY), seed=0)
    assert path.read_bytes() == first  # deterministic: timings live in timings.json, not metrics.csv
    m = read_metrics(run_dir)
    per_seed = m[(m.metric == "dice") & (m.seed >= 0)]  # the rows difflung.judging.claims reads
    assert set(per_seed.model) == {"ref", "oversample", "+segguided", "+difflung"} and per_seed.seed.nunique() == 6
    assert (per_seed.dataset == "phantom").all()
    e = m[(m.seed == -1) & (m.model == "+difflung") & (m["class"] == "emphysema")].set_index("metric").value
    assert e["dice_mean"] == pytest.approx(0.64) and 0.615 <= e["dice_lo"] < 0.64 < e["dice_hi"] <= 0.665
    assert e["dice_image_mean"] == pytest.approx(0.64) and e["n_patients"] == 1 and e["n_slices"] == 4
    g = m[(m.seed == -1) & (m.model == "oversample") & (m["class"] == "ggo")].set_index("metric").value
    assert g["n_slices"] == 0 and g["n_patients"] == 0 and np.isnan(g["dice_mean"])  # a false positive: no slice
    assert set(m[m.seed >= 0].metric) == {"dice", "dice_image"} and "synthetic_share" not in set(m.metric)
    t = ch5.table_results(run_dir, runs_root=root)
    assert t.loc[("Diff-Lung-UNet", "ours"), "Dice emphysema"].startswith("0.640 [")
    assert t.loc[("Diff-Lung-UNet", "reported (poster)"), "Dice emphysema"] == "0.80"
    assert t.loc[("ref-UNet", "reported (poster)"), "Dice GGO"] == "not reported"
    assert t.loc[("ref-UNet", "ours"), "Dice GGO"] == "not measurable: no ggo in the test truth"
    assert t.loc[("ref-UNet", "ours"), "seeds"] == 6


def test_comparisons_one_rule_holm_and_validity(tmp_path):
    from scipy import stats as sps

    from difflung.judging.stats import holm

    root, run_dir, _ = _chapter(tmp_path)
    t = ch5.table_comparisons(run_dir, runs_root=root).set_index("comparison")
    # the claims (the poster's, the extension's, the controls') are judged once for the run
    # (table_poster_claims), not here
    assert "Dice emphysema: Diff-Lung-UNet > ref-UNet" not in t.index
    assert "Dice emphysema: Diff-Lung-UNet > oversample-UNet" not in t.index
    r = t.loc["Dice emphysema: Seg-Guided-UNet > oversample-UNet"]
    d = 0.07 + 0.0 * np.arange(6)
    assert r.difference == pytest.approx(0.07, abs=0.005) and r.seeds == 6 and r.verdict == "reproduced"
    assert t.loc["Dice emphysema: oversample-UNet > ref-UNet", "verdict"] == "contradicted"
    assert t.loc["Dice ggo: oversample-UNet > ref-UNet", "verdict"] == "not measurable: no ggo in the test truth"
    # Seg-Guided has no convergence record: a note beside its verdict, never a gate
    assert r["training notes (not a gate)"] == "Seg-Guided has no convergence record (chapter 4 wrote no criteria)"
    assert t.loc["Dice lung: oversample-UNet > ref-UNet", "verdict"] == "inconclusive"  # a tie: no evidence
    tested = t["p (Holm)"].notna()
    # Holm over the 2 tested emphysema comparisons only (lung ties and ggo, not measurable, are not counted)
    assert tested.sum() == 2 and set(t.index[tested].str.split(":").str[0]) == {"Dice emphysema"}
    assert t.loc[tested, "p (Holm)"].to_numpy() == pytest.approx(holm(t.loc[tested, "p"]))
    # the controls family, judged with the run's claims: the synthetic arm against oversampling, t over seeds
    claims = ch5.table_poster_claims(root).set_index("claim")
    c = claims.loc["Dice emphysema: Diff-Lung-UNet > oversample-UNet"]
    d = 0.12 + 0.0005 * (np.arange(6) - 2.5)  # the per-seed differences of _fake_results
    assert c.family == "controls" and c.estimate == pytest.approx(0.12) and c.n == 6
    assert c.p == pytest.approx(sps.ttest_1samp(d, 0.0).pvalue, rel=1e-4) and c.verdict == "reproduced"


def test_fewer_than_five_seeds_gives_no_interval_and_at_best_inconclusive(tmp_path):
    root, run_dir, _ = _chapter(tmp_path, n_seeds=4)
    m = read_metrics(run_dir)
    assert m[m.metric.isin(["dice_lo", "dice_hi"])].value.isna().all()
    assert "[" not in ch5.table_results(run_dir, runs_root=root).loc[("Diff-Lung-UNet", "ours"), "Dice emphysema"]
    t = ch5.table_comparisons(run_dir, runs_root=root)
    measured = ~t.verdict.str.startswith("not measurable")
    assert measured.any() and (t.loc[measured, "95 % interval"] == "none (fewer than 5 seeds)").all()
    assert (t.loc[~measured, "95 % interval"] == "n/a").all()  # not measurable: its reason, no numbers
    assert set(t.verdict) <= {"inconclusive"} | {v for v in t.verdict if v.startswith("not measurable")}
    s = ch5.scope("smoke", run_dir, runs_root=root).html()
    assert "fewer than the 5 an interval and a test need" in s and "do not test the paper" in s


def test_non_converged_generator_gets_a_verdict_and_lost_signature_is_not_measurable(tmp_path):
    root, run_dir, _ = _chapter(tmp_path, difflung_converged=False, emphysema_signature=False)
    t = ch5.table_comparisons(run_dir, runs_root=root).set_index("comparison")
    r = t.loc["Dice lung: Diff-Lung-UNet > oversample-UNet"]  # a tie on lung, but judged, not gated
    assert r.verdict == "inconclusive" and r["training notes (not a gate)"] == (
        "Diff-Lung (CBMAT) did not meet its convergence criteria (chapter 3)")
    assert t.loc["Dice emphysema: oversample-UNet > ref-UNet", "verdict"] == (
        "not measurable: at 32 px: HU signature lost")
    assert t.loc[("Dice emphysema: oversample-UNet > ref-UNet"), "p (Holm)"] != t.loc[
        ("Dice emphysema: oversample-UNet > ref-UNet"), "p (Holm)"]  # not measurable: not counted by Holm (NaN)
    assert ch5.table_results(run_dir, runs_root=root).loc[("ref-UNet", "ours"), "Dice emphysema"] == (
        "not measurable: at 32 px: HU signature lost")
    box = ch5.scope("standard", run_dir, runs_root=root)
    assert not any("Diff-Lung-UNet" in c for c in box.cannot)
    assert any(c.startswith("Dice of emphysema: not measurable") for c in box.cannot)
    # the main model never learned its masks (lung ratio 0.5 < 0.8): its arms' comparisons are not measurable
    root2, run2, _ = _chapter(tmp_path / "unlearned", lung_ratio=0.5)
    t2 = ch5.table_comparisons(run2, runs_root=root2).set_index("comparison")
    assert t2.loc["Dice lung: Diff-Lung-UNet > oversample-UNet", "verdict"] == (
        "not measurable: Diff-Lung (CBMAT) never learned its masks (judge Dice ratio on lung 0.5 < 0.8)")
    assert t2.loc["Dice emphysema: Seg-Guided-UNet > oversample-UNet", "verdict"] == "reproduced"
    box2 = ch5.scope("standard", run2, runs_root=root2)
    assert any("Diff-Lung-UNet" in c and "never learned its masks" in c for c in box2.cannot)
    ours, poster = ch5.figure_dice(run_dir, runs_root=root).axes
    assert (run_dir / "dice_phantom.png").is_file()
    assert ours.get_title().startswith("ours (phantom): 6 training seeds") and ours.get_ylabel().startswith("Dice")
    assert [t.get_text() for t in ours.get_xticklabels()] == ["healthy", "emphysema\n(not measurable)",
                                                              "GGO\n(not measurable)"]
    assert len(ours.patches) == 2  # the grey band behind each class that is not measurable
    assert [t.get_text() for t in ours.get_legend().get_texts()] == ["ref-UNet", "oversample-UNet", "Seg-Guided-UNet",
                                                                     "Diff-Lung-UNet"]
    assert len(ours.collections[0].get_offsets()) == 6  # one dot per training seed
    assert poster.get_title().startswith("reported (poster)")


def test_poster_claims_come_from_the_one_judge(tmp_path, monkeypatch):
    """table_poster_claims shows difflung.judging.claims.judge_run's segmentation rows, unchanged."""
    from difflung.judging import claims

    judged = pd.DataFrame({"key": ["a", "b"], "kind": ["image quality", "segmentation"], "verdict": ["x", "y"]})
    monkeypatch.setattr(claims, "judge_run", lambda runs_root: judged if runs_root == tmp_path else None)
    t = ch5.table_poster_claims(tmp_path)
    assert t.to_dict("list") == {"key": ["b"], "verdict": ["y"]}


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
    assert set(inputs.models) == {"+difflung", "+segguided", "+insert"} and inputs.real_dataset is None
    # the optional +uniform arm joins once the run holds chapter 2's uniform model
    train_diffusion(ds, TrainConfig(preset="tiny", steps=1, batch_size=4, strategy="uniform"),
                    tmp_path / "runs" / "02_mask_ablation_study/models/uniform", device="cpu", progress=False)
    inputs = ch5.locate_inputs(tmp_path / "runs")
    assert set(inputs.models) == {"+difflung", "+segguided", "+insert", "+uniform"}
    cfg = SegConfig(channels=(4, 8), strides=(2,), num_res_units=0, steps=3, batch_size=4)
    run_dir = tmp_path / "ch5"
    kw = dict(tag="phantom", models=inputs.models, config=cfg, seeds=[0, 1], seed=0, mix_ratio=0.5,
              boost=0.15, sampler="ddim", sampler_steps=2, device="cpu", n_examples=2, dose_shares=(0, 0.5, 1.0))
    res, syn, balance = A.run_experiment(inputs.dataset, run_dir, **kw)
    n_real = len(ds.split("train"))
    n = round(0.5 * n_real)
    dose = ["+difflung@0.5", "+difflung@1"]
    assert set(res.dice.arm) == set(A.ARMS) | set(dose) and res.n_extra == n
    assert len(syn.dose.images) == n_real and (run_dir / "phantom/synthetic_difflung-dose.npz").is_file()
    assert res.timings[-1]["n_train"] == 2 * n_real and {t["n_train"] for t in res.timings} == {
        n_real, n_real + n, 2 * n_real}
    extra_arms = ["oversample-UNet", "copy-paste-UNet", "Seg-Guided-UNet", "Diff-Lung-UNet", "Insert-UNet",
                  "uniform-UNet"]
    assert (balance.loc[extra_arms, "images"] == len(ds.split("train")) + n).all()
    assert all(s.images.shape == (n, 32, 32) and np.array_equal(s.labels, syn.masks) for s in syn.sets.values())
    ch5.write_chapter_metrics(run_dir, [res], config=cfg, seed=0, synthetic=syn.sets)
    first = (run_dir / "metrics.csv").read_bytes()
    again = tmp_path / "ch5-again"  # a fresh folder: nothing reused
    res2, _, _ = A.run_experiment(inputs.dataset, again, **kw)
    ch5.write_chapter_metrics(again, [res2], config=cfg, seed=0, synthetic=syn.sets)
    assert (again / "metrics.csv").read_bytes() == first  # same seeds on CPU: byte-identical metrics
    m = read_metrics(run_dir)
    assert m.set_index(["model", "metric"]).loc[[("ref", "synthetic_share"), ("+difflung@1", "synthetic_share")],
                                                 "value"].tolist() == [0.0, 1.0]
    curve = A.dose_response(m)
    assert sorted(set(curve.share)) == [0.0, 0.5, 1.0] and len(curve) == 3 * 2 * len(ds.classes)
    p = pd.read_csv(run_dir / "phantom/dice_per_patient.csv")
    assert set(p.patient) == set(ds.split("test").patient) and len(p) == 9 * 2 * len(ds.classes)  # 9 arms, 2 seeds
    res3, _, _ = A.run_experiment(inputs.dataset, run_dir, **kw)  # every segmenter reused from its folder
    assert res3.dice.equals(res.dice) and (run_dir / "phantom/segmenters/ref-seed1/segmenter.json").is_file()
    for f in ("phantom/synthetic_difflung.npz", "phantom/dice_per_slice.csv", "phantom/segmenters/ref/segmenter.json",
              "timings.json"):
        assert (run_dir / f).is_file(), f
    t = ch5.table_comparisons(run_dir, runs_root=tmp_path / "runs").set_index("comparison")
    # no criteria.json from chapters 3/4 (whether the main model learned its masks) and no HU signature from
    # chapter 1 in this toy run: not measurable
    assert t.loc["Dice lung: Diff-Lung-UNet > oversample-UNet", "verdict"].startswith(
        "not measurable: no record of whether Diff-Lung (CBMAT) learned its masks")
    assert "Dice lung: Diff-Lung-UNet > copy-paste-UNet" in t.index  # the second control
    assert not any("@" in c for c in t.index)  # the dose-response is a curve, not a comparison
    assert t.loc["Dice emphysema: oversample-UNet > ref-UNet", "verdict"].startswith(
        "not measurable: HU signature not checked")
    folder, summary = ch5.export_nnunet_example(inputs.dataset, syn.sets["+difflung"], run_dir)
    assert summary.loc["training cases", "value"] == len(ds.split("train")) + n
    assert summary.loc["synthetic cases", "value"] == n


def test_training_seeds_floor():
    assert A.training_seeds(3, 4, min_seeds=2) == [3, 4, 5, 6]
    with pytest.raises(ValueError, match="min_seeds=5"):
        A.training_seeds(0, 2, min_seeds=5)


def test_a_new_arm_is_one_registry_entry(monkeypatch, tmp_path):
    """A synthetic arm added to ARMS gets its training set from build_arms, its model folder from locate_inputs,
    its comparisons and its convergence check, with no other change."""
    from difflung.diffusion.toy import toy_dataset

    spec = A.ArmSpec("+insert", "Insert-UNet", "synthetic", "07_insert/model", "chapter 7 (07_insert)", "07_insert",
                     "insert")
    monkeypatch.setitem(A.ARMS, "+insert", spec)  # the one registry every module of difflung.augment reads
    monkeypatch.setattr(ch5, "SYNTHETIC_ARMS", tuple(k for k, a in A.ARMS.items() if a.extra == "synthetic"))
    assert A.comparison_triples(["emphysema"], ["ref", "oversample", "+insert"]) == [
        ("emphysema", "oversample", "ref"), ("emphysema", "+insert", "ref"), ("emphysema", "+insert", "oversample")]
    assert A.arm_convergence(tmp_path, ["+insert"])["+insert"][1].startswith("insert has no convergence record")
    lab = np.full((4, 8, 8), L.LUNG, np.uint8)
    lab[:2, :2, :2] = L.EMPHYSEMA  # one 4-pixel lesion per slice: a patch for the copy-paste control
    train = Slices(np.zeros((4, 8, 8), np.float32), lab, np.array(["p"] * 4), np.zeros(4, np.float32))
    syn = A.SyntheticSet("+insert", np.ones((2, 8, 8), np.float32), lab[:2], tmp_path, 1.0, 2.0)
    built = A.build_arms(train, 2, lab[:2], {"+insert": syn}, rare=[L.EMPHYSEMA], seed=0)
    assert list(built) == ["ref", "oversample", "copypaste", "+insert"]  # synthetic arms without a set left out
    assert built["+insert"].n_extra == 2 and built["+insert"].images[-1].max() == 1.0
    toy_dataset(tmp_path / "01_data_preparation" / "dataset", n_patients=3, n_slices=1, size=16)
    with pytest.raises(FileNotFoundError, match=r"run chapter 7 \(07_insert\) first"):
        ch5.locate_inputs(tmp_path, models={"+insert": tmp_path / "07_insert" / "model"})
