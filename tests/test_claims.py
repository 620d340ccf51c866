"""The poster's claims judged once per run: verdicts from toy chapter files, validity carried into the verdict."""
import json

import numpy as np
import pandas as pd
import pytest

from difflung.judging import claims
from difflung.core import runs
from difflung.judging.criteria import write_criteria
from difflung.core.metrics_csv import write_metrics
from difflung.judging.reported import ALL_CLAIMS

GENS = {"difflung": 1.0, "segguided": 0.0, "spade": -0.5, "pix2pix": -1.0}  # PSNR offsets


def _ch4(root, n_patients=10, converged=None, lung_ratio=0.95):
    rng = np.random.default_rng(0)
    rows = []
    base = rng.normal(20, 1, (n_patients, 2))
    for g, off in GENS.items():
        for p in range(n_patients):
            for k in range(2):
                for seed in (0, 1):
                    for metric, scale in (("psnr", 1.0), ("ssim", 0.01)):
                        rows.append({"model": g, "train_seed": 0, "condition": "full", "seed": seed,
                                     "slice": 2 * p + k, "patient": f"p{p}", "metric": metric, "class": "all",
                                     "value": scale * (base[p, k] + off + rng.normal(0, 0.05))})
    d = runs.chapter_dir(root, runs.BASELINE_COMPARISON)
    write_metrics(d, rows)
    conv = converged or {g: True for g in GENS}
    table = pd.DataFrame({"criterion": ["x", claims.LUNG_RATIO], "value": [1.0, lung_ratio],
                          "threshold": [">= 0", ">= 0.8"], "met": [True, lung_ratio >= 0.8]})
    write_criteria(d, {g: {"converged": c, "table": table} for g, c in conv.items()}, {})


def _ch5(root, n_seeds=6, delta=0.05):
    # +difflung's gain drifts a little with the seed, so the paired differences vary (sd 0.0019 around delta)
    rows = [{"model": arm, "metric": "dice", "class": c, "seed": s, "dataset": "phantom",
             "value": 0.6 + (delta + 0.001 * (s - (n_seeds - 1) / 2) if arm == "+difflung" else 0.0) + 0.001 * s}
            for arm in ("ref", "+segguided", "+difflung") for c in ("lung", "emphysema", "fibrosis")
            for s in range(n_seeds)]
    rows += [{"model": "all", "metric": "test_pixels", "class": c, "seed": -1, "dataset": "phantom",
              "value": 0.0 if c == "fibrosis" else 100.0} for c in ("lung", "emphysema", "fibrosis")]
    write_metrics(runs.chapter_dir(root, runs.SEGMENTATION_AUGMENTATION), rows)


def _t_p(d, null=0.0):
    from scipy import stats as sps
    return sps.ttest_1samp(d, null).pvalue


def test_verdicts_from_chapter_files(tmp_path):
    _ch4(tmp_path)
    _ch5(tmp_path)
    t = claims.judge_run(tmp_path).set_index("key")
    assert list(t.index) == [c.key for c in ALL_CLAIMS]
    assert t.loc["dice_emphysema_insert_vs_difflung", "verdict"].startswith("not measurable: chapter 5 has no")
    q = t.loc["psnr_difflung_vs_segguided"]
    assert q.verdict == "reproduced" and q.unit.startswith("test patients x training seeds") and q.n == 10
    assert 0.9 < q.estimate < 1.1
    assert q.magnitude == "smaller than reported"  # [0.97, 1.04] dB against the poster's +1.06
    assert t.loc["psnr_difflung_vs_spade", "magnitude"] == "as reported"  # 1.51 [1.49, 1.54] against +1.50
    d = 0.05 + 0.001 * (np.arange(6) - 2.5)
    e = t.loc["dice_emphysema_difflung_vs_ref"]
    assert e.p == pytest.approx(_t_p(d), rel=1e-4) and e.verdict == "reproduced"
    assert e.magnitude == "smaller than reported"  # poster +0.20
    assert t.loc["dice_fibrosis_difflung_vs_ref", "verdict"] == "not measurable: fibrosis absent from the test truth"
    # lung: non-inferiority (against -0.01) and the reported gain (against 0), both measured on the same seeds
    assert t.loc["dice_lung_difflung_vs_ref", "p"] == pytest.approx(_t_p(d, -0.01), rel=1e-4)
    assert t.loc["dice_lung_difflung_vs_ref", "verdict"] == t.loc["dice_lung_difflung_vs_ref_gain", "verdict"] == (
        "reproduced")
    assert t.loc["dice_lung_difflung_vs_ref_gain", "magnitude"] == "larger than reported"  # 0.05 against 0.01
    # Holm within the poster's family over its tested claims: 10 quality (Diff-Lung's pairs and the baselines'
    # order) + 6 segmentation claims with a p (Seg-Guided-UNet equals ref-UNet on emphysema in the toy: no test)
    poster = t[t.family == "poster"]
    assert poster["p (Holm)"].notna().sum() == 16
    assert t.loc["psnr_segguided_vs_spade", "verdict"] == "reproduced"  # the toy's order: 0.0 > -0.5 > -1.0
    assert set(t.loc[t.family == "controls"].index) == {f"dice_{c}_difflung_vs_{o}" for c in (
        "emphysema", "fibrosis", "ggo") for o in ("oversample", "copypaste")}
    assert t.loc["dice_ggo_difflung_vs_ref", "source table"].startswith("the poster's problem statement")
    from difflung.judging.stats import holm
    assert poster["p (Holm)"].dropna().to_numpy() == pytest.approx(holm(poster.p[poster["p (Holm)"].notna()]))


def test_a_baseline_that_missed_convergence_still_gets_a_verdict(tmp_path):
    _ch4(tmp_path, converged={"difflung": True, "segguided": False, "spade": True, "pix2pix": True})
    t = claims.judge_run(tmp_path).set_index("key")
    assert t.loc["psnr_difflung_vs_segguided", "verdict"] == "reproduced"
    assert t.loc["psnr_difflung_vs_segguided", "convergence"] == (
        "Seg-Guided missed its convergence criteria")
    assert t.loc["psnr_difflung_vs_spade", "verdict"] == "reproduced" and t.loc["psnr_difflung_vs_spade",
                                                                                "convergence"] == ""
    assert t.loc["dice_lung_difflung_vs_ref", "verdict"] == "not measurable: chapter 5 did not run"


def test_a_main_model_that_never_learned_its_masks_makes_its_claims_not_measurable(tmp_path):
    _ch4(tmp_path, lung_ratio=0.6)
    _ch5(tmp_path)
    t = claims.judge_run(tmp_path).set_index("key")
    why = "not measurable: Diff-Lung (CBMAT) never learned its masks (judge Dice ratio on lung 0.6 < 0.8)"
    assert t.loc["psnr_difflung_vs_spade", "verdict"] == why
    assert t.loc["dice_emphysema_difflung_vs_ref", "verdict"] == why
    main = t.index.str.contains("difflung")
    assert t.loc[main, "p (Holm)"].isna().all()  # every claim about the main model
    assert t.loc["psnr_segguided_vs_spade", "verdict"] == "reproduced"  # the baselines' order does not involve it


def test_same_files_same_table(tmp_path):
    """Two runs' chapter files written independently give byte-identical claims.csv files, holding the verdicts."""
    paths = []
    for run in ("a", "b"):
        _ch4(tmp_path / run)
        _ch5(tmp_path / run)
        paths.append(claims.write_claims(tmp_path / run, tmp_path / run / "07")[1])
    assert paths[0] != paths[1] and paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_text().splitlines()[0].startswith("claim,family,kind,key")
    t = pd.read_csv(paths[0]).set_index("key")
    assert list(t.index) == [c.key for c in ALL_CLAIMS]
    assert t.loc["psnr_difflung_vs_segguided", "verdict"] == "reproduced"
    assert 0.9 < t.loc["psnr_difflung_vs_segguided", "estimate"] < 1.1
    assert {"magnitude", "convergence"} <= set(t.columns)


def test_main_model_record_is_chapter_3s(tmp_path):
    # chapter 4 scores the shared main model on fewer test slices; chapter 3's record (every slice) decides it
    from difflung.judging import criteria

    def record(met, ratio):
        return {"converged": met, "table": pd.DataFrame([{"criterion": claims.LUNG_RATIO, "value": ratio,
                                                          "threshold": ">= 0.8", "met": ratio >= 0.8}])}

    criteria.write_criteria(tmp_path / "03_cbmat_training", {"difflung": record(True, 0.9)}, {})
    criteria.write_criteria(tmp_path / "04_baseline_comparison",
                            {"difflung": record(False, 0.7), "segguided": record(False, 0.5)}, {})
    rec = claims._records(tmp_path)
    assert {k: v["converged"] for k, v in rec.items()} == {"difflung": True, "segguided": False}
    assert claims.main_learned(rec) == (True, "")
    assert claims.main_learned({})[0] is False and "no record" in claims.main_learned({})[1]


def test_a_failed_capacity_check_is_a_defect_and_an_unfinished_plateau_a_note(tmp_path):
    import json

    _ch4(tmp_path)
    _ch5(tmp_path)
    d = runs.chapter_dir(tmp_path, runs.BASELINE_COMPARISON)
    rows = {g: {"model": g, "seed": 0, "slices": 8, "steps": 100, "lung ratio": 0.5 if g == "segguided" else 0.97,
                "passed": g != "segguided"} for g in GENS}
    (d / "capacity.json").write_text(json.dumps({"threshold": 0.9, "rows": rows}))
    (d / "training_plateau.json").write_text(json.dumps({"budget": {"max_budgets": 3}, "curves": {
        "spade": {"0": {"plateaued": False, "budgets": 3}}, "difflung": {"0": {"plateaued": True, "budgets": 1}}}}))
    t = claims.judge_run(tmp_path).set_index("key")
    v = t.loc["psnr_difflung_vs_segguided", "verdict"]
    assert v.startswith("not measurable: Seg-Guided failed its capacity check (judge lung-Dice ratio 0.5 on 8")
    s = t.loc["psnr_difflung_vs_spade"]
    assert s.verdict == "reproduced" and "SPADE still improving at 3x budget" in s.convergence


def test_cbmat_conclusions_read_chapter_4s_comparator_and_chapter_2s_strategies(tmp_path):
    from difflung.judging.stats import crossed_t

    _ch4(tmp_path)
    d = runs.chapter_dir(tmp_path, runs.BASELINE_COMPARISON)
    rng = np.random.default_rng(1)
    rows = []
    for g, off in (("difflung", 0.05), ("uniform", 0.0)):  # judge Dice on generated GGO, three training seeds each
        for s in range(3):
            for p in range(6):
                for cls in ("ggo", "emphysema"):
                    rows.append({"model": g, "train_seed": s, "condition": "full", "seed": 0, "slice": p,
                                 "patient": f"p{p}", "metric": "dice", "class": cls,
                                 "value": 0.4 + off + 0.02 * p + rng.normal(0, 0.01)})
    from difflung.core.metrics_csv import read_metrics
    write_metrics(d, pd.concat([read_metrics(d), pd.DataFrame(rows)], ignore_index=True))
    doc = json.loads((d / "criteria.json").read_text())
    doc["measurable"] = {"ggo": {"measurable": True, "reason": ""},
                         "emphysema": {"measurable": False, "reason": "judge Dice on real emphysema 0.1 < floor 0.3"}}
    (d / "criteria.json").write_text(json.dumps(doc))
    t = claims.judge_run(tmp_path).set_index("key")
    g = t.loc["dice_ggo_generated_cbmat_vs_uniform"]
    df = pd.DataFrame(rows)
    df = df[df["class"] == "ggo"]
    want = crossed_t(df[df.model == "difflung"], df[df.model == "uniform"])
    assert g.estimate == pytest.approx(want.estimate, rel=1e-4)  # metrics.csv keeps 6 significant digits
    assert g.unit == "test patients x training seeds (3 and 3)"
    assert g.verdict == "reproduced" and g.family == "poster"
    assert t.loc["dice_emphysema_generated_cbmat_vs_uniform", "verdict"].startswith(
        "not measurable: judge Dice on real emphysema")
    assert t.loc["dice_ggo_generated_cosine_vs_constant", "verdict"] == "not measurable: chapter 2 did not run"


def test_a_class_the_dataset_lacks_reads_absent(tmp_path):
    """A run on a user's dataset without fibrosis: its fibrosis claims are not measurable for that reason."""
    _ch4(tmp_path)
    _ch5(tmp_path)
    ds = runs.phantom_dataset_dir(tmp_path)
    ds.mkdir(parents=True)
    (ds / "manifest.json").write_text(json.dumps({"class_names": ["background", "body", "lung", "emphysema"]}))
    t = claims.judge_run(tmp_path).set_index("key")
    assert t.loc["dice_fibrosis_difflung_vs_ref", "verdict"] == "not measurable: fibrosis absent from this dataset"
    assert t.loc["dice_emphysema_difflung_vs_ref", "verdict"] == "reproduced"
    assert t.loc["psnr_difflung_vs_spade", "verdict"] == "reproduced"  # class "all"


def test_cost_claims_read_chapter_4s_measurements_as_ratios(tmp_path):
    d = runs.chapter_dir(tmp_path, runs.BASELINE_COMPARISON)
    gflops = {"difflung": 40.0, "segguided": 38.0, "pix2pix": 0.05, "spade": 8.0}
    write_metrics(d, [{"model": k, "metric": "gflops_per_image", "class": "all", "seed": -1, "slice": -1, "value": v}
                      for k, v in gflops.items()])
    (d / "metrics.json").write_text(json.dumps({"timings": {k: {"s_per_image": s} for k, s in (
        ("difflung", 2.0), ("segguided", 5.0), ("pix2pix", 0.01), ("spade", 0.5))}}))
    t = claims.judge_run(tmp_path).set_index("key")
    cost = t[t.family == "cost"]
    assert len(cost) == 6 and cost["p (Holm)"].isna().all() and (cost.unit == "exact measurement").all()
    assert t.loc["cost_gflops_difflung_vs_segguided", "estimate"] == pytest.approx(40 / 38)
    assert t.loc["cost_gflops_difflung_vs_segguided", "verdict"] == "reproduced"  # within 2x
    assert t.loc["cost_s_difflung_vs_segguided", "verdict"] == "contradicted"  # 0.4x
    assert t.loc["cost_gflops_difflung_vs_pix2pix", "verdict"] == "reproduced"  # 800x >= 10x
    assert t.loc["cost_gflops_difflung_vs_spade", "verdict"] == "contradicted"  # 5x < 10x
    assert t.loc["cost_gflops_difflung_vs_pix2pix", "claim"] == "GFLOPs per image: Diff-Lung (CBMAT) at least 10x Pix2Pix"
    assert t.loc["cost_gflops_difflung_vs_pix2pix", "reported"] == pytest.approx(4000 / 15)
