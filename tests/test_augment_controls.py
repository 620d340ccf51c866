"""Chapter 5's fair comparison: one segmenter chosen on validation, Dice pooled per patient, the copy-paste control
and the Diff-Lung dose-response arms (`difflung.augment`)."""
import json

import numpy as np
import pandas as pd
import pytest

from difflung import augment as A
from difflung import labels as L
from difflung.data.dataset import Dataset, Slices
from difflung.segmentation import SegConfig

E, G = L.EMPHYSEMA, L.GGO
TINY = SegConfig(channels=(4, 8), strides=(2,), num_res_units=0, steps=3, batch_size=4)


def _no_test(monkeypatch):
    real = Dataset.split

    def split(self, name, verify=True):
        if name == "test":
            raise AssertionError("choosing code read the test split")
        return real(self, name, verify)

    monkeypatch.setattr(Dataset, "split", split)


def test_chooser_reads_only_train_and_val_and_records_its_choice(toy_ds, tmp_path, monkeypatch):
    _no_test(monkeypatch)
    choice = A.choose_segmenter(toy_ds.root, TINY, tmp_path, tag="phantom", seed=0)
    rec = json.loads(A.choice_path(tmp_path, "phantom").read_text())
    assert rec["chosen_on"] == "val" and [c["name"] for c in rec["candidates"]] == list(A.CANDIDATES)
    scores = {c["name"]: c["score"] for c in rec["candidates"]}
    assert all(np.isnan(c["se"]) for c in rec["candidates"])  # one validation patient: no standard error...
    assert rec["chosen"] == choice.name == max(scores, key=scores.get)  # ...so the best score wins
    assert all(0.0 <= v <= 1.0 for v in scores.values()) and "git_revision" in rec["provenance"]
    want = A.CANDIDATES[choice.name]
    assert choice.config.shift_prob == want["shift_prob"] and choice.config.class_weighting == want["class_weighting"]
    assert choice.config.steps == TINY.steps and choice.config.channels == TINY.channels  # only the settings change
    assert set(choice.scores.candidate) == set(A.CANDIDATES) and choice.path == A.choice_path(tmp_path, "phantom")
    assert rec["n_val_patients"] == 1 and rec["rare_classes"] == ["emphysema", "ggo", "fibrosis"]
    # candidates are kept and reused: the same scores without training again
    import difflung.segmentation as S

    monkeypatch.setattr(S, "train_segmenter", lambda *a, **k: pytest.fail("retrained a kept candidate"))
    again = A.choose_segmenter(toy_ds.root, TINY, tmp_path, tag="phantom", seed=0)
    assert again.scores.equals(choice.scores)


def test_chooser_breaks_exact_ties_by_candidate_order(toy_ds, monkeypatch):
    _no_test(monkeypatch)
    same = {"shift_prob": 0.0, "class_weighting": "inverse_sqrt_frequency"}
    choice = A.choose_segmenter(toy_ds.root, TINY, None, candidates={"b": same, "a": dict(same)}, steps=2)
    assert choice.name == "b" and choice.path is None and choice.config.steps == 3
    s = choice.scores.groupby("candidate").score.first()
    assert s["a"] == s["b"]  # same settings and seed: the same segmenter
    with pytest.raises(ValueError, match="no candidate"):
        A.choose_segmenter(toy_ds.root, TINY, None, candidates={})


def _hand_made():
    """Patient a: two 4x4 slices, patient b: one. Emphysema: a slice 0 truth 4 px, prediction 2 of them + 1 false
    positive; a slice 1 no truth, 1 false positive; b truth 2 px, not predicted. GGO predicted on a, never true."""
    truth = np.full((3, 4, 4), L.LUNG, np.uint8)
    pred = truth.copy()
    truth[0, 0, :] = E
    pred[0, 0, :2] = E
    pred[0, 3, 3] = E
    pred[1, 2, 2] = E
    truth[2, 1, :2] = E
    pred[0, 2, 0] = G
    return pred, truth, np.array(["a", "a", "b"])


def test_pooled_per_patient_dice_exact():
    pred, truth, patient = _hand_made()
    p = A.pooled_patient_dice(pred, truth, patient, [L.LUNG, E, G]).set_index(["patient", "class"])
    a = p.loc[("a", "emphysema")]
    assert (a.intersection, a.pred_pixels, a.truth_pixels) == (2, 4, 4) and a.dice == 0.5  # 2*2 / (4 + 4)
    assert p.loc[("b", "emphysema"), "dice"] == 0.0
    assert np.isnan(p.loc[("a", "ggo"), "dice"]) and p.loc[("a", "ggo"), "pred_pixels"] == 1  # not in a's truth
    # lung: 28 true and 27 predicted pixels, of which 3 of the true ones are predicted as lesions
    assert p.loc[("a", "lung"), "dice"] == pytest.approx(2 * 25 / (27 + 28))
    per_slice = A.per_image_dice(pred, truth, [L.LUNG, E, G])
    per_slice, p = (d.assign(arm="ref", seed=0) for d in (per_slice, p.reset_index()))
    s = A.per_seed_dice(per_slice, p).set_index("class")
    assert s.loc["emphysema", "dice"] == 0.25 and s.loc["emphysema", "n_patients"] == 2  # (0.5 + 0) / 2
    assert s.loc["emphysema", "dice_image"] == pytest.approx((4 / 7 + 0) / 2)  # truth slices 0 and 2 only
    assert s.loc["emphysema", "n_slices"] == 2  # slice 1 (a false positive only) is not in the fixed set
    assert np.isnan(s.loc["ggo", "dice"]) and s.loc["ggo", "n_patients"] == 0 and s.loc["ggo", "n_slices"] == 0
    with pytest.raises(ValueError, match="one id per slice"):
        A.pooled_patient_dice(pred, truth, patient[:2], [E])


def test_validation_score_is_the_rare_class_mean_of_the_primary_dice():
    pred, truth, patient = _hand_made()
    val = Slices(np.zeros(truth.shape, np.float32), truth, patient, np.zeros(3, np.float32))
    score, se, per = A.validation_score(pred, val, [L.LUNG, E, G], [E, G])
    assert per == {"emphysema": 0.25} and score == 0.25  # no validation patient holds GGO: left out
    assert se == pytest.approx(np.std([0.5, 0.0], ddof=1) / np.sqrt(2))  # patients a (0.5) and b (0)
    with pytest.raises(ValueError, match="nothing to choose"):
        A.validation_score(pred, val, [L.LUNG, E, G], [G])


def test_one_standard_error_rule_keeps_the_preferred_candidate_within_noise():
    assert A.one_se_choice({"pref": (0.26, 0.05), "other": (0.27, 0.04)}) == "pref"  # 0.26 >= 0.27 - 0.04
    assert A.one_se_choice({"pref": (0.20, 0.05), "other": (0.27, 0.04)}) == "other"
    assert A.one_se_choice({"pref": (0.26, np.nan), "other": (0.27, np.nan)}) == "other"  # no se: the best
    assert A.one_se_choice({"a": (0.3, 0.0), "b": (0.3, 0.0)}) == "a"
    with pytest.raises(ValueError, match="no scores"):
        A.one_se_choice({})


def _slices(n=6, s=16, seed=0):
    """Lung fields with one emphysema blob (3x3) and one GGO bar (1x4) per slice, distinct image values."""
    rng = np.random.default_rng(seed)
    lab = np.full((n, s, s), L.BODY, np.uint8)
    lab[:, 2:14, 2:14] = L.LUNG
    for i in range(n):
        y, x = 3 + i % 3, 3 + i % 4
        lab[i, y:y + 3, x:x + 3] = E
        lab[i, 12, 6 + i % 3:10 + i % 3] = G
    img = rng.uniform(-1, 1, lab.shape).astype(np.float32)
    return img, lab


def test_copy_paste_keeps_lesion_values_and_stays_in_healthy_lung():
    img, lab = _slices()
    cp = A.copy_paste(img, lab, [E, G], 10, np.random.default_rng(3), boost={"emphysema": 0.2, "ggo": 0.1})
    assert cp.images.shape == (10, 16, 16) and len(cp.pastes) > 10
    bank = A.patch_bank(img, lab, [E, G])
    for m, b in enumerate(cp.base_index):
        changed = cp.labels[m] != lab[b]
        assert (lab[b][changed] == L.LUNG).all()  # only healthy lung of the base changes...
        assert np.isin(cp.labels[m][changed], [E, G]).all()  # ...into lesion classes
        np.testing.assert_array_equal(cp.images[m][~changed], img[b][~changed])  # the rest is the base, exact
        n_field = np.isin(cp.labels[m], L.LUNG_IDS).sum()
        assert (cp.labels[m] == E).sum() <= 0.2 * n_field and (cp.labels[m] == G).sum() <= 0.1 * n_field
    assert sum(r["pixels"] for r in cp.pastes) == sum((cp.labels[m] != lab[b]).sum()
                                                      for m, b in enumerate(cp.base_index))
    for r in cp.pastes:  # every pasted pixel holds the donor lesion's own value (turned and mirrored, not resampled)
        p = bank[r["class"]][r["patch"]]
        assert p.source == r["source"] != cp.base_index[r["slice"]]  # from another slice
        mask, vals = np.rot90(p.mask, r["rot90"]), np.rot90(p.values, r["rot90"])
        if r["flip"]:
            mask, vals = mask[:, ::-1], vals[:, ::-1]
        h, w = mask.shape
        window = (slice(r["y0"], r["y0"] + h), slice(r["x0"], r["x0"] + w))
        np.testing.assert_array_equal(cp.images[r["slice"]][window][mask], vals[mask])
        assert (cp.labels[r["slice"]][window][mask] == r["class"]).all()
        assert set(vals[mask].tolist()) <= set(img[p.source][lab[p.source] == r["class"]].tolist())
    again = A.copy_paste(img, lab, [E, G], 10, np.random.default_rng(3), boost={"emphysema": 0.2, "ggo": 0.1})
    assert np.array_equal(again.images, cp.images) and np.array_equal(again.labels, cp.labels)
    with pytest.raises(ValueError, match="no lesion of class fibrosis"):
        A.copy_paste(img, lab, [L.FIBROSIS], 2, np.random.default_rng(0))


def test_copy_paste_arm_is_registered_like_oversampling():
    img, lab = _slices()
    train = Slices(img, lab, np.array(["p"] * 6), np.zeros(6, np.float32))
    built = A.build_arms(train, 3, None, {}, rare=[E, G], seed=0, arms=["ref", "copypaste"], boost=0.1)
    cp = built["copypaste"]
    assert A.ARMS["copypaste"].extra == "copypaste" and "copypaste" in A.CONTROL_ARMS
    assert (cp.n_real, cp.n_extra, len(cp.images)) == (6, 3, 9) and np.array_equal(cp.images[:6], img)
    t = A.class_balance_table(built, [E, G])
    assert t.loc["copy-paste extra alone", "images"] == 3
    assert t.loc["copy-paste extra alone", "emphysema %"] == pytest.approx(100 * (cp.labels[6:] == E).mean())
    want = A.copy_paste(img, lab, [E, G], 3, np.random.default_rng(0), boost=0.1)
    assert np.array_equal(cp.images[6:], want.images) and np.array_equal(cp.labels[6:], want.labels)
    assert A.comparison_triples(["ggo"], ["ref", "oversample", "copypaste", "+difflung"]) == [
        ("ggo", "oversample", "ref"), ("ggo", "copypaste", "ref"), ("ggo", "+difflung", "ref"),
        ("ggo", "+difflung", "oversample"), ("ggo", "+difflung", "copypaste")]


def test_dose_response_arms_have_the_right_sizes():
    img, lab = _slices(8)
    train = Slices(img, lab, np.array(["p"] * 8), np.zeros(8, np.float32))
    dose = A.SyntheticSet("+difflung-dose", np.arange(8 * 256, dtype=np.float32).reshape(8, 16, 16), lab, None, 1.0,
                          8.0)
    assert A.dose_arms([1.0, 0, 0.25, 0.5, 0.25]) == {0.0: "ref", 0.25: "+difflung@0.25", 0.5: "+difflung@0.5",
                                                      1.0: "+difflung@1"}
    arms = A.build_dose_arms(train, dose, [0, 0.25, 0.5, 1.0])
    assert {k: (a.n_real, a.n_extra, len(a.images)) for k, a in arms.items()} == {
        "+difflung@0.25": (8, 2, 10), "+difflung@0.5": (8, 4, 12), "+difflung@1": (8, 8, 16)}
    assert np.array_equal(arms["+difflung@0.5"].images[8:], dose.images[:4])  # nested: the smaller share's prefix
    assert np.array_equal(arms["+difflung@0.25"].images[:8], img)
    assert [A.dose_share(k) for k in ("ref", "+difflung@0.25", "+difflung", "oversample")] == [0.0, 0.25, None, None]
    assert A.arm_label("+difflung@0.5") == "Diff-Lung-UNet @0.5"
    assert sorted(["+difflung@1", "zzz", "+difflung@0.25", "+insert", "ref"], key=A.arm_order) == [
        "ref", "+insert", "+difflung@0.25", "+difflung@1", "zzz"]
    with pytest.raises(ValueError, match="share 2: 16 images"):
        A.build_dose_arms(train, dose, [2.0])
    with pytest.raises(ValueError, match="share 0.01: 0 images"):
        A.build_dose_arms(train, dose, [0.01])
    with pytest.raises(ValueError, match="finite share"):
        A.dose_arm(-0.5)


def test_dose_response_curve_from_metrics():
    rows = [{"model": m, "metric": "dice", "class": "ggo", "seed": s, "value": v + s, "dataset": "phantom"}
            for m, v in (("ref", 0.1), ("+difflung@0.5", 0.3), ("+difflung", 0.9), ("+difflung@1", 0.5))
            for s in (0, 1)]
    curve = A.dose_response(pd.DataFrame(rows))
    assert curve.share.tolist() == [0, 0, 0.5, 0.5, 1, 1] and curve.value.tolist() == pytest.approx(
        [0.1, 1.1, 0.3, 1.3, 0.5, 1.5])
    assert A.dose_response(pd.DataFrame(rows[:2])).empty  # no dose-response arm: no curve


def test_chosen_segmenter_trains_to_its_own_plateau_on_validation(toy_ds, tmp_path, monkeypatch):
    from difflung.augment import choice as C

    _no_test(monkeypatch)
    fixed = {"x": {"shift_prob": 0.0, "class_weighting": "none"}}
    scores = iter([(0.30, 0.01), (0.40, 0.01), (0.405, 0.01)])  # 1x, 2x, 3x the steps: plateau at 3x
    monkeypatch.setattr(C, "validation_score", lambda *a: (*next(scores), {}))
    ch = A.choose_segmenter(toy_ds.root, TINY, tmp_path, tag="phantom", candidates=fixed, max_budgets=3)
    rec = json.loads(A.choice_path(tmp_path, "phantom").read_text())
    assert [b["steps"] for b in rec["steps_curve"]] == [3, 6, 9]
    assert ch.config.steps == 6 and [b.get("chosen", False) for b in rec["steps_curve"]] == [False, True, False]
    scores = iter([(0.30, 0.01), (0.40, 0.01), (0.50, 0.01)])  # still improving at the cap: the last
    ch = A.choose_segmenter(toy_ds.root, TINY, None, candidates=fixed, max_budgets=3)
    assert ch.config.steps == 9
    scores = iter([(0.30, 0.01)])
    assert A.choose_segmenter(toy_ds.root, TINY, None, candidates=fixed).config.steps == 3  # one budget: as given
