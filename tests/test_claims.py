"""The poster's claims judged once per run: verdicts from toy chapter files, validity carried into the verdict."""
import numpy as np
import pandas as pd

from difflung.judging import claims
from difflung.core import runs
from difflung.judging.criteria import write_criteria
from difflung.core.metrics_csv import write_metrics
from difflung.judging.reported import ALL_CLAIMS

GENS = {"difflung": 1.0, "segguided": 0.0, "spade": -0.5, "pix2pix": -1.0}  # PSNR offsets


def _ch4(root, n_patients=10, converged=None):
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
    table = pd.DataFrame({"criterion": ["x"], "value": [1.0], "threshold": [">= 0"], "met": [True]})
    write_criteria(d, {g: {"converged": c, "table": table} for g, c in conv.items()}, {})


def _ch5(root, n_seeds=6, delta=0.05):
    rows = [{"model": arm, "metric": "dice", "class": c, "seed": s, "dataset": "phantom",
             "value": 0.6 + (delta if arm == "+difflung" else 0.0) + 0.001 * s}
            for arm in ("ref", "+segguided", "+difflung") for c in ("lung", "emphysema", "fibrosis")
            for s in range(n_seeds)]
    rows += [{"model": "all", "metric": "test_pixels", "class": c, "seed": -1, "dataset": "phantom",
              "value": 0.0 if c == "fibrosis" else 100.0} for c in ("lung", "emphysema", "fibrosis")]
    write_metrics(runs.chapter_dir(root, runs.SEGMENTATION_AUGMENTATION), rows)


def test_verdicts_from_chapter_files(tmp_path):
    _ch4(tmp_path)
    _ch5(tmp_path)
    t = claims.judge_run(tmp_path).set_index("key")
    assert list(t.index) == [c.key for c in ALL_CLAIMS]
    assert t.loc["dice_emphysema_insert_vs_difflung", "verdict"].startswith("not measurable: chapter 5 has no")
    assert t.loc["psnr_difflung_vs_segguided", "verdict"] == "reproduced"
    assert t.loc["psnr_difflung_vs_segguided", "unit"] == "test patients" and t.loc["psnr_difflung_vs_segguided", "n"] == 10
    assert 0.9 < t.loc["psnr_difflung_vs_segguided", "estimate"] < 1.1
    # six seeds: an interval exists, but the exact Wilcoxon p (>= 2/64) cannot survive Holm over the run's claims
    assert t.loc["dice_emphysema_difflung_vs_ref", "verdict"] == "inconclusive"
    assert t.loc["dice_fibrosis_difflung_vs_ref", "verdict"] == "not measurable: fibrosis absent from the test truth"
    assert t.loc["dice_emphysema_difflung_vs_segguided", "p (Holm)"] == 0.125  # 2/2^6, times 4 measurable claims


def test_a_generator_that_did_not_converge_makes_its_claims_not_measurable(tmp_path):
    _ch4(tmp_path, converged={"difflung": True, "segguided": False, "spade": True, "pix2pix": True})
    t = claims.judge_run(tmp_path).set_index("key")
    assert t.loc["psnr_difflung_vs_segguided", "verdict"] == ("not measurable: segguided did not meet the "
                                                              "convergence criteria")
    assert t.loc["psnr_difflung_vs_spade", "verdict"] == "reproduced"
    assert t.loc["dice_lung_difflung_vs_ref", "verdict"] == "not measurable: chapter 5 did not run"


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
    assert t.loc["dice_emphysema_difflung_vs_segguided", "p (Holm)"] == 0.125


def test_main_model_convergence_is_chapter_3s_record(tmp_path):
    # chapter 4 scores the shared main model on fewer test slices; chapter 3's record (every slice) decides it
    import pandas as pd

    from difflung.judging import claims, criteria

    def record(met):
        return {"converged": met, "table": pd.DataFrame([{"criterion": "c", "value": 1.0, "threshold": 1.0,
                                                          "met": met}])}

    criteria.write_criteria(tmp_path / "03_cbmat_training", {"difflung": record(True)}, {})
    criteria.write_criteria(tmp_path / "04_baseline_comparison",
                            {"difflung": record(False), "segguided": record(False)}, {})
    assert claims._converged(tmp_path) == {"difflung": True, "segguided": False}
