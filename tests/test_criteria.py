"""Measurable classes and convergence criteria computed from scored images."""
import numpy as np
import pandas as pd
import torch

import pytest

from difflung.judging import criteria
from difflung.judging import instruments as I
from difflung import labels as L
from difflung.data.dataset import window
from difflung.judging.scoring import SCHEMA, Scored


def _scored(gen_fn, judge_dice=0.9, lesion=False):
    rng = np.random.default_rng(0)
    n, s = 16, 16
    labels = np.full((n, s, s), L.BODY, np.uint8)
    labels[:, :2] = L.BACKGROUND
    labels[:, 4:12, 4:12] = L.LUNG
    if lesion:  # emphysema 110 HU below healthy lung
        labels[:, 6:10, 6:10] = L.EMPHYSEMA
    hu = np.where(labels == L.BACKGROUND, -1000.0, np.where(labels == L.LUNG, -850.0, 40.0))
    hu = np.where(labels == L.EMPHYSEMA, -960.0, hu)
    real = window(hu + rng.normal(0, 10, hu.shape)).astype(np.float32)
    patient = np.repeat(np.array(["p0", "p1", "p2", "p3"]), 4)
    rows = []
    for model, d in (("real", judge_dice), ("m", judge_dice)):
        for i in range(n):
            for c in ("body", "lung"):
                rows.append({"model": model, "train_seed": -1 if model == "real" else 0, "condition": "full",
                             "seed": -1 if model == "real" else 0, "slice": i, "patient": patient[i],
                             "metric": "dice", "class": c, "value": d})
    images = {("m", 0, "full", 0): gen_fn(real, rng).astype(np.float32)}
    return Scored(pd.DataFrame(rows)[list(SCHEMA)], np.arange(n), patient, real, labels, images)


def test_a_faithful_generator_converges_and_a_noisy_one_does_not():
    good = _scored(lambda r, rng: r + rng.normal(0, 0.005, r.shape))
    meas = criteria.measurable_classes(good)
    assert meas["lung"][0] and meas["body"][0]
    res = criteria.measure(good, "m", train=good.real, measurable=meas, generator=torch.Generator().manual_seed(0),
                           classifier_steps=300)
    t = res["table"].set_index("criterion")
    assert t.loc["judge Dice ratio, lung", "value"] == 1.0 and t.loc["judge Dice ratio, lung", "threshold"] == \
        "0.8 .. 1.25"
    assert t.loc["HU Wasserstein-1, lung (HU)", "value"] < 10
    assert res["controls"] == {"lung +40 HU": 1.0, "Gaussian blur 1 px": 1.0}  # the classifier has power here
    assert res["converged"], res["table"]
    # at 30 steps the classifier still cannot tell real lung from lung 40 HU brighter: its "cannot tell" (0.5 on
    # the generated slices) certifies nothing, so the generator is not called converged
    weak = criteria.measure(good, "m", train=good.real, measurable=meas, generator=torch.Generator().manual_seed(0),
                            classifier_steps=30, details=True)  # what the convergence benchmark reads besides
    w = weak["table"].set_index("criterion")
    assert w.loc["real-vs-generated classifier accuracy", "met"] and not weak["converged"]
    assert w.loc[~w["met"]].index.tolist() == ["classifier detects positive control: lung +40 HU"]
    assert set(weak) - set(res) == {"air", "classifier"} and "features" not in weak and "contrast" not in weak
    assert len(weak["air"]) == len(good.real) and weak["air"]["ok"].all()
    assert weak["classifier"]["accuracy"] == w.loc["real-vs-generated classifier accuracy", "value"]
    bad = _scored(lambda r, rng: r + rng.normal(0.3, 0.2, r.shape))
    res = criteria.measure(bad, "m", train=bad.real, measurable=meas, generator=torch.Generator().manual_seed(0),
                           classifier_steps=30)
    assert not res["converged"]
    assert not res["table"].set_index("criterion").loc["slices with air within 30 HU", "met"]


def test_a_caricature_is_flagged():
    real = {"lung": 0.9, "fibrosis": 0.4}
    ratio = I.dice_ratios({"lung": 0.9, "fibrosis": 0.52}, real, I.judge_validity(real))
    assert ratio == pytest.approx({"lung": 1.0, "fibrosis": 1.3})
    t = I.convergence(dice_ratio=ratio, hu_w1={}, air_share=1.0, classifier_accuracy=0.5).set_index("criterion")
    assert t["met"].to_dict() == {"judge Dice ratio, lung": True, "judge Dice ratio, fibrosis": False,
                                  "slices with air within 30 HU": True, "real-vs-generated classifier accuracy": True}
    edge = I.convergence(dice_ratio={"a": 0.8, "b": 1.25, "c": 0.79, "d": 1.26}, hu_w1={}, air_share=1.0,
                         classifier_accuracy=0.5)
    assert edge["met"].tolist()[:4] == [True, True, False, False]


def test_lesion_w1_is_read_against_its_contrast_with_lung():
    rng = np.random.default_rng(0)
    labels = np.full((4, 8, 8), L.LUNG)
    labels[:, :4, :4] = L.EMPHYSEMA
    labels[:, 6:, 6:] = L.BODY
    hu = np.select([labels == L.LUNG, labels == L.EMPHYSEMA], [-850.0, -960.0], 40.0) + rng.normal(0, 5, labels.shape)
    contrast = I.hu_contrast(hu, labels, ["lung", "emphysema", "body", "ggo"])
    assert contrast["lung"] == 0.0 and np.isnan(contrast["ggo"])
    assert contrast["emphysema"] == pytest.approx(110.0, abs=3.0) and contrast["body"] == pytest.approx(890, abs=3.0)
    exact = I.hu_contrast(np.array([-850.0, -840.0, -860.0, -950.0, -970.0]), np.array([2, 2, 2, 4, 4]), ["emphysema"])
    assert exact == {"emphysema": 110.0}  # |median(-950, -970) - median(lung)| = |-960 + 850|
    # emphysema drawn 45 HU towards lung: inside the absolute 50 HU, but 0.41 of its contrast
    rel = I.relative_w1({"lung": 3.0, "emphysema": 45.0, "body": 45.0, "ggo": 5.0}, {"emphysema": 110.0, "body": 890.0,
                                                                                 "lung": 0.0, "ggo": float("nan")})
    assert rel == pytest.approx({"emphysema": 45 / 110})  # lesions only; no contrast, no row
    assert I.relative_w1({"ggo": 1.0}, {"ggo": 0.0}) == {"ggo": float("inf")}
    t = I.convergence(dice_ratio={}, hu_w1={"emphysema": 45.0}, air_share=1.0, classifier_accuracy=0.5,
                      hu_w1_relative=rel).set_index("criterion")
    assert t.loc["HU Wasserstein-1, emphysema (HU)", "met"]
    assert not t.loc["HU Wasserstein-1 / contrast with lung, emphysema", "met"]
    assert t.loc["HU Wasserstein-1 / contrast with lung, emphysema", "threshold"] == "<= 0.25"
    assert not I.convergence(dice_ratio={}, hu_w1={}, air_share=1.0, classifier_accuracy=0.5,
                             hu_w1_relative={"ggo": float("inf")})["met"].iloc[0]


def test_measure_reads_lesion_contrast_on_the_training_slices():
    from difflung.data.dataset import unwindow, window

    shift = lambda r, rng: window(unwindow(r) + 45.0 * (s.labels == L.EMPHYSEMA))  # emphysema 45 HU too bright
    s = _scored(lambda r, rng: r, lesion=True)
    s.images[("m", 0, "full", 0)] = shift(s.real, None)
    train_labels = s.labels.copy()
    train_labels[:, 6:10, 6:10] = L.LUNG  # training slices without emphysema: no contrast, no relative row
    kw = dict(measurable={"body": (True, ""), "lung": (True, "")}, generator=torch.Generator().manual_seed(0),
              classifier_steps=5)
    res = criteria.measure(s, "m", train=s.real, train_labels=s.labels, **kw)
    t = res["table"].set_index("criterion")
    assert res["contrast"]["emphysema"] == pytest.approx(110.0, abs=2.0) and res["contrast"]["lung"] == 0.0
    assert t.loc["HU Wasserstein-1, emphysema (HU)", "value"] == pytest.approx(45.0, abs=1.0)
    assert t.loc["HU Wasserstein-1, emphysema (HU)", "met"]
    assert t.loc["HU Wasserstein-1 / contrast with lung, emphysema", "value"] == pytest.approx(45 / 110, abs=0.02)
    assert not t.loc["HU Wasserstein-1 / contrast with lung, emphysema", "met"] and not res["converged"]
    none = criteria.measure(s, "m", train=s.real, train_labels=train_labels, **kw)
    assert not any("contrast" in c for c in none["table"]["criterion"]) and np.isnan(none["contrast"]["emphysema"])


def test_judge_below_floor_makes_class_not_measurable_and_round_trip(tmp_path):
    s = _scored(lambda r, rng: r, judge_dice=0.5)
    meas = criteria.measurable_classes(s, signature={"body": (True, ""), "lung": (True, "")})
    assert not meas["lung"][0] and "0.7" in meas["lung"][1]
    meas = criteria.measurable_classes(_scored(lambda r, rng: r), signature={"lung": (False, "at 32 px: lost")})
    assert meas["lung"] == (False, "at 32 px: lost")
    res = criteria.measure(s, "m", train=s.real, measurable={"body": (True, "")}, generator=torch.Generator(),
                           classifier_steps=10)
    criteria.write_criteria(tmp_path, {"m": res}, meas, size=16)
    back = criteria.read_criteria(tmp_path)
    assert back["measurable"]["lung"] == (False, "at 32 px: lost") and back["converged"]["m"] == res["converged"]
    assert back["instruments"]["m"] == {"controls": res["controls"]} and set(res["controls"]) == {
        "lung +40 HU", "Gaussian blur 1 px"}
    assert criteria.validity(["lung"], back["measurable"], {"m": True}, ["m"]) == {"measurable": False,
                                                                                  "reason": "at 32 px: lost"}
    assert criteria.validity(["all"], back["measurable"], {"m": False}, ["m"])["converged"] is False
    assert criteria.validity(["body"], back["measurable"], {"m": True}, ["m"]) == {}


def test_tables_say_not_measurable_and_region_and_hu_rows_follow_the_schema():
    from difflung.judging import realism as quality, stats

    s = _scored(lambda r, rng: r + rng.normal(0, 0.005, r.shape))
    meas = {"body": (True, ""), "lung": (False, "judge Dice on real lung 0.50 < floor 0.7")}
    summary = stats.slice_intervals(s.rows, ["model", "metric", "class"], generator=np.random.default_rng(0),
                                    n_resamples=99)
    from difflung.chapters import criteria_tables  # the page's tables live in the chapter layer

    dice = criteria_tables.dice_frame(summary, meas, ["m", "real"])
    assert dice.loc["lung", "m"] == "not measurable" and dice.loc["lung", "judged"].startswith("not measurable: judge")
    assert dice.loc["body", "m"] == "0.900 (no spread)" and dice.loc["body", "judged"] == "yes"  # every slice agrees
    assert criteria_tables.judge_frame(summary, meas).loc["lung", "floor"] == 0.7
    region = quality.region_metric_rows(s)
    assert set(region["metric"]) == {"psnr_body", "ssim_body", "psnr_lung", "ssim_lung"}
    assert list(region.columns) == list(SCHEMA) and len(region) == 4 * len(s.index)
    w1 = quality.hu_w1_rows(s).set_index("class")
    assert set(w1.index) == {"body", "lung"} and (w1["slice"] == -1).all() and (w1["value"] < 20).all()


def test_hu_distance_needs_no_judge_but_skips_classes_whose_signature_is_lost():
    s = _scored(lambda r, rng: r + rng.normal(0.3, 0.2, r.shape))
    res = criteria.measure(s, "m", train=s.real, measurable={}, generator=torch.Generator().manual_seed(0),
                           classifier_steps=10, signature={"lung": (False, "at 16 px: lost")})
    rows = set(res["table"]["criterion"])
    assert "HU Wasserstein-1, body (HU)" in rows and "HU Wasserstein-1, lung (HU)" not in rows
    assert not any(r.startswith("judge Dice ratio") for r in rows) and not res["converged"]


def test_validity_names_a_model_once():
    v = criteria.validity(["all"], {}, {"difflung": False}, ["difflung", "difflung"])
    assert v == {"converged": False, "reason": "difflung did not meet the convergence criteria"}


def test_judge_ratio_is_of_the_same_training_seed_as_the_images():
    # a second training seed the judge reads at half the Dice: the criteria of the first seed (the default image
    # set) must not average it in, and asking for the second seed gives its own ratio
    one = _scored(lambda r, rng: r + rng.normal(0, 0.005, r.shape))
    second = one.rows[one.rows.model == "m"].assign(train_seed=1, value=0.45)
    two = Scored(pd.concat([one.rows, second], ignore_index=True), one.index, one.patient, one.real, one.labels,
                 {**one.images, ("m", 1, "full", 0): one.images[("m", 0, "full", 0)]})
    meas = criteria.measurable_classes(two)
    ratio = {}
    for ts in (None, 1):
        res = criteria.measure(two, "m", train=two.real, measurable=meas, train_seed=ts, classifier_steps=30,
                               generator=torch.Generator().manual_seed(0))
        ratio[ts] = res["table"].set_index("criterion").loc["judge Dice ratio, lung", "value"]
    assert ratio == {None: 1.0, 1: 0.5}


def test_judge_feature_distances_sit_beside_the_criteria(tmp_path):
    from difflung.judging.scoring import judge_config
    from difflung.segmentation import Segmenter, build_unet

    torch.manual_seed(0)
    seg = Segmenter(build_unet(3, judge_config(1)), [L.BACKGROUND, L.BODY, L.LUNG], judge_config(1))
    s = _scored(lambda r, rng: r)  # a generator that returns the real slices
    measure = lambda **kw: criteria.measure(s, "m", train=s.real, measurable={"body": (True, ""), "lung": (True, "")},
                                            generator=torch.Generator().manual_seed(0), classifier_steps=5, **kw)
    res = measure(judge=seg)
    f = res["features"]
    assert list(f) == ["generated", "real training slices", "lung +40 HU", "Gaussian blur 1 px"]
    assert f["real training slices"]["frechet"] == pytest.approx(0.0, abs=1e-6)  # train=s.real: the same slices
    assert f["generated"]["frechet"] == pytest.approx(0.0, abs=1e-6)
    assert f["generated"]["density"] == 1.0 and f["generated"]["coverage"] == 1.0 and f["generated"]["n_real"] == 16
    assert all(f[c]["frechet"] > 1e-4 for c in ("lung +40 HU", "Gaussian blur 1 px"))
    assert res["table"].equals(measure()["table"])  # reported, not a criterion
    assert "features" not in measure(judge=tmp_path / "no_judge")
    criteria.write_criteria(tmp_path, {"m": res}, {})
    back = criteria.read_criteria(tmp_path)["instruments"]["m"]
    assert back["features"]["generated"]["coverage"] == 1.0 and back["controls"] == res["controls"]


def test_pages_show_the_instruments_power_and_name_a_missed_control_as_the_instruments_failure():
    from difflung.chapters import criteria_tables

    table = I.convergence(dice_ratio={"lung": 0.9}, hu_w1={"lung": 10.0}, air_share=1.0, classifier_accuracy=0.55,
                          controls={"lung +40 HU": 0.5, "Gaussian blur 1 px": 1.0})
    feats = {"generated": {"frechet": 2.5, "precision": 0.9, "recall": 0.8, "density": 0.95, "coverage": 0.875},
             "lung +40 HU": {"frechet": 0.4, "precision": 1.0, "recall": 1.0, "density": 1.0, "coverage": 1.0}}
    res = {"table": table, "converged": I.converged(table), "controls": {"lung +40 HU": 0.5,
                                                                         "Gaussian blur 1 px": 1.0}, "features": feats}
    from difflung.chapters import cbmat_training

    p = criteria_tables.power_table(res)
    assert cbmat_training.table_power({"difflung": res}).data.equals(p)  # chapter 3's cell shows it
    assert p.index.tolist() == ["generated slices", "real training slices (floor)", "control: lung +40 HU",
                                "control: Gaussian blur 1 px"]
    assert p["classifier reading"].tolist() == ["cannot tell (criterion met)",
                                                "not tested (reference for the distances)",
                                                "missed: the classifier lacks power", "detected"]
    assert p.loc["generated slices", "coverage"] == 0.875 and np.isnan(p.loc["control: Gaussian blur 1 px", "density"])
    s = criteria_tables.sentence("M", res)
    assert "missed its positive control (lung +40 HU)" in s and "of 5 missed" not in s
    assert criteria_tables.cannot_show({}, {"m": res}, {"m": "M"}) == [
        "M at its best: the classifier missed its positive control (lung +40 HU) (its comparisons are judged anyway, "
        "with this note)."]
    wide = criteria_tables.wide_table({"m": res}, {"m": "M"})
    assert wide.loc["Fréchet distance, judge features", "M"] == "2.50" and wide.loc["converged", "M"] == "no"
    assert wide.loc["coverage, judge features", "threshold"] == "reported"
    assert wide.loc["classifier detects positive control: lung +40 HU", "M"] == "0.500 (missed)"
    plain = {k: v for k, v in res.items() if k != "features"}
    assert "Fréchet distance, judge features" not in criteria_tables.wide_table({"m": plain}).index
