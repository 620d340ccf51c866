"""Chapters 2, 3 and 4 on a toy runs folder: their sections run, write their artifacts, reuse models, chapters
3 and 4 report the same PSNR for the same model, test slices and seeds, and a comparison involving a model that
missed its convergence criteria reads "not measurable"."""
import ast
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from difflung.chapters import criteria_tables
from difflung.judging import criteria, instruments, stats
from difflung.core import runs
from difflung.diffusion.toy import toy_dataset
from difflung.core.metrics_csv import read_metrics
from difflung.plots import sig

EVAL = dict(n_test=3, sampler="dpm", sampler_steps=2, seeds=(0, 1), device="cpu")


@pytest.fixture(scope="module")
def runs_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    toy_dataset(runs.phantom_dataset_dir(root), n_patients=10, n_slices=4, size=16)  # 2 test patients
    sig = pd.DataFrame([{"class": "lung", "size": 16, "measurable": True, "reason": ""},
                        {"class": "fibrosis", "size": 16, "measurable": False, "reason": "at 16 px: lost (toy)"}])
    instruments.write_signature(runs.chapter_dir(root, runs.DATA_PREPARATION), sig)  # chapter 1's HU check
    return root


def test_ablation_chapter_sections(runs_root):
    from difflung.chapters import ablation_study as ch

    run = runs.chapter_dir(runs_root, runs.MASK_ABLATION)
    assert ch.table_probabilities(runs_root, steps=10).loc[("cbmat", "t=T"), "fibrosis"] == 0
    ch.figure_schedules(runs_root, run, steps=10)
    kw = dict(steps=3, batch_size=4, preset="tiny", strategies=("none", "cbmat"), device="cpu", judge_steps=3,
              n_val=3, curve_evals=2, sampler_steps=2)
    assert not ch.train_strategies(runs_root, run, **kw)["reused from an earlier run"].any()
    assert ch.train_strategies(runs_root, run, **kw)["reused from an earlier run"].all()  # same config and data: reused
    ch.figure_losses(run, strategies=("none", "cbmat"))
    ev = dict(EVAL, judge_steps=3, strategies=("none", "cbmat"))
    scored = ch.evaluate(runs_root, run, **ev)
    assert (runs.judge_dir(runs_root) / "segmenter.json").is_file()
    assert len(read_metrics(runs.per_image_path(run))) == len(scored.rows)
    files = {p: p.read_bytes() for p in (runs.per_image_path(run), runs.metrics_path(run))}
    pd.testing.assert_frame_equal(scored.rows, ch.evaluate(runs_root, run, **ev).rows)  # deterministic
    assert all(p.read_bytes() == b for p, b in files.items())  # byte-identical files on re-run
    rows = scored.rows
    assert {"full", "no fibrosis", "no body"} <= set(rows["condition"])
    assert set(rows.loc[rows["condition"] == "no lung", "seed"]) == {0}  # partial masks: first seed
    measurable, results = ch.check(runs_root, run, scored, sampler="dpm", steps=3)
    assert set(results) == {"none", "cbmat"} and criteria.read_criteria(run)["converged"].keys() == results.keys()
    assert ch.run_facts(scored) == {"n_test_slices": 3, "n_test_patients": 2, "n_seeds": 2, "confidence": "95%",
                                    "alpha": 0.05}
    assert ch.table_measurable(scored, measurable).loc["fibrosis", "measurable"].startswith("not measurable")
    assert list(ch.table_criteria(results).columns) == ["threshold", "no ablation", "CBMAT (Diff-Lung)"]
    assert not measurable["fibrosis"][0]  # a 3-step judge, and chapter 1's signature: not measurable
    table = ch.table_quality(scored, measurable, results)
    assert list(table.columns) == ["real slices", "no ablation", "CBMAT (Diff-Lung)", "why not measurable"]
    assert table.loc["PSNR (dB)", "real slices"] == "-" and table.loc["converged", "CBMAT (Diff-Lung)"] == "no"
    assert (table.loc["Dice fibrosis"].iloc[:-1] == "not measurable").all()
    assert table.loc["Dice fibrosis", "why not measurable"] == measurable["fibrosis"][1]
    cmp = ch.comparisons(scored, measurable, results)
    assert cmp["claim"].str.contains("PSNR").sum() == 1 and cmp["n"].eq(2).all()  # n: test patients
    assert ch.claim_facts(cmp) == {"n_claims": len(cmp), "min_patients": stats.min_units(len(cmp))}
    # a 3-step judge cannot judge lung, so whether CBMAT learned its masks cannot be told: every comparison with it
    # is not measurable, with the reason (a missed convergence criterion alone would only be a note)
    assert not results["cbmat"]["converged"] and cmp["verdict"].str.startswith("not measurable").all()
    assert cmp.loc[cmp["claim"].str.contains("PSNR"), "verdict"].iloc[0] == (
        "not measurable: CBMAT (Diff-Lung)'s masks could not be checked (no judge Dice ratio on lung)")
    ch.figure_dice(scored, measurable, run)
    ch.figure_partial(scored, measurable, run)
    ch.figure_samples(scored, run, n=2)
    box = ch.scope("smoke", scored, measurable, results, len(cmp)).html()
    assert "What this run can and cannot show" in box and "fibrosis: not measurable" in box
    m = read_metrics(run)
    psnr = m[(m["model"] == "cbmat") & (m["metric"] == "psnr") & (m["condition"] == "full")]
    assert psnr["seed"].tolist() == [-1] and psnr["n"].tolist() == [2]  # seeds averaged, interval over patients
    assert {p.name for p in run.glob("*.png")} == {"ablation_schedules.png", "ablation_losses.png", "ablation_dice.png",
                                                  "ablation_partial.png", "ablation_samples.png"}


def _chapter3(runs_root):
    from difflung.chapters import cbmat_training as ch

    run = runs.chapter_dir(runs_root, runs.CBMAT_TRAINING)
    r = ch.train_main(runs_root, steps=3, batch_size=2, preset="tiny", device="cpu", judge_steps=3, n_val=3,
                      curve_evals=2, sampler_steps=2)
    return ch, run, r


def test_cbmat_chapter_sections(runs_root):
    ch, run, r = _chapter3(runs_root)
    assert (runs.main_model_dir(runs_root) / "diffusion_pytorch_model.safetensors").is_file() and r.finished
    assert ch.table_training(r).loc["steps x batch", "value"] == "3 x 2"
    ch.figure_loss(r, run)
    scored = ch.evaluate(runs_root, run, r, judge_steps=3, **EVAL)
    assert scored.generated("difflung", seed=1).shape == (3, 16, 16)
    measurable, results = ch.check(runs_root, run, scored, sampler="dpm", steps=3)
    assert ch.run_facts(scored) == {"n_test_slices": 3, "n_test_patients": 2, "n_seeds": 2, "confidence": "95%"}
    assert ch.criteria_facts(results)["converged_sentence"].startswith("Diff-Lung (CBMAT) did **not** meet")
    assert list(ch.table_criteria(results).columns) == ["value", "threshold", "met"]
    assert ch.train_facts(r) == {"train_device": r.device, "prediction": "v-prediction"} and r.device.startswith("cpu")
    back = criteria.read_criteria(run)
    assert back["converged"] == {"difflung": False} and back["measurable"]["fibrosis"][0] is False
    assert set(back["tables"]["difflung"].columns) == {"criterion", "value", "threshold", "met"}
    assert "did **not** meet" in criteria_tables.sentence("Diff-Lung", results["difflung"])
    assert list(ch.table_judge_errors(runs_root, scored, {"ggo": (False, "floor")}, judge_steps=3).columns) == ["note"]
    every = {c: (True, "") for c in measurable}  # as if the judge met every floor: the table's path
    errors = ch.table_judge_errors(runs_root, scored, every, judge_steps=3)
    assert list(errors.columns) == ["real slices", "generated slices"]
    assert errors.index.names == ["judge says", "mask says"]
    assert set(errors.index.get_level_values(0)) <= {"emphysema", "fibrosis", "ggo"} and (errors.values >= 0).all()
    tex = ch.table_texture(scored)
    assert list(tex.columns) == ["real (HU)", "generated (HU)", "generated / real"] and "lung" in tex.index
    assert tex.loc["lung", "generated / real"] == pytest.approx(
        tex.loc["lung", "generated (HU)"] / tex.loc["lung", "real (HU)"]) and (tex["real (HU)"] > 0).all()
    regions = ch.table_regions(scored)
    assert list(regions.index) == ["full frame", "body", "lung"] and list(regions.columns) == ["PSNR (dB)", "SSIM"]
    ch.figure_samples(scored, run, n=2)
    ch.figure_hu(scored, run)
    ch.write_cost(r, run)
    box = ch.scope("smoke", scored, measurable, results).html()
    assert "Diff-Lung (CBMAT) at its best: it missed" in box and "judged anyway" in box
    m = read_metrics(run)
    assert {"psnr", "ssim", "psnr_lung", "ssim_body", "final_loss"} <= set(m["metric"])
    assert set(m["model"]) == {"difflung"}
    full = m[m["metric"] == "psnr"].iloc[0]
    full_ps = regions.loc["full frame", "PSNR (dB)"].split()[0]
    assert full["seed"] == -1 and full["n"] == 2 and full_ps == sig(full["value"])  # the table shows metrics.csv's
    assert json.loads((run / "cost.json").read_text())["steps"] == 3


def test_baseline_chapter_reuses_chapter3_and_reports_its_psnr(runs_root):
    from difflung.chapters import baseline_comparison as bc

    ch3, run3, r = _chapter3(runs_root)  # reused from the test above when it ran
    psnr3 = ch3.evaluate(runs_root, run3, r, judge_steps=3, **EVAL).rows
    run = runs.chapter_dir(runs_root, runs.BASELINE_COMPARISON)
    with pytest.raises(ValueError, match="at least 3"):
        bc.open_comparison(runs_root, run, seed=0, n_seeds=1, min_seeds=3, gan_size="T")
    with pytest.raises(ValueError, match="comparators"):
        bc.open_comparison(runs_root, run, seed=0, gan_size="T", comparators=["none"])
    cmp = bc.open_comparison(runs_root, run, seed=0, n_seeds=1, gan_size="T", device="cpu", comparators=["uniform"])
    curve = dict(judge_steps=3, n_val=3, curve_evals=2, sampler="dpm", sampler_steps=2)
    tuned = bc.tune_segguided(cmp, levers=["shared", "parent"], **curve)
    assert list(tuned.index) == [bc.SEGGUIDED_LEVERS["shared"], bc.SEGGUIDED_LEVERS["parent"]]
    assert (tuned["chosen"] == "yes").sum() == 1 and cmp.segguided_lever in ("shared", "parent")
    assert tuned["images seen"].tolist() == [6, 16]  # the parent batch of 16: one step at least
    cmp.segguided_lever = "shared"  # whichever the toy chose: the shared recipe shows the equal budget below
    models = bc.train_models(cmp, max_budgets=1, **curve)
    assert models.groupby("model")["source"].first()["Diff-Lung (CBMAT)"] == "chapter 3"
    assert cmp.budget == {"steps": 3, "batch_size": 2, "max_budgets": 1}  # chapter 3's budget, for every model
    assert set(models["budgets"]) == {1} and (run / "training_curves.csv").is_file()
    bc.figure_curves(cmp)
    cap = bc.check_capacity(cmp, steps=2, n_slices=2, judge_steps=3, sampler_steps=2)
    assert len(cap) == 4 and set(cap["passed"]) <= {"yes", "no: a defect to find"}
    seg_meta = json.loads((cmp.models["segguided"][0] / "difflung_config.json").read_text())
    assert (seg_meta["mask_mode"], seg_meta["train_config"]["strategy"]) == ("single", "uniform")
    assert models["images seen"].tolist() == [6, 6, 6, 6, 6]  # same steps x batch for every generator
    assert len(bc.table_models(models)) == 5 and "uniform" in cmp.models  # the four and the comparator
    bc.figure_gan_losses(cmp)
    ev = {k: v for k, v in EVAL.items() if k != "device"}
    scored = bc.evaluate(cmp, judge_steps=3, timing_batch=2, timing_repeats=1, classifier_steps=2, **ev)
    files = {p: p.read_bytes() for p in (runs.metrics_path(run), run / "criteria.json")}
    bc.evaluate(cmp, judge_steps=3, timing_batch=2, timing_repeats=1, classifier_steps=2, **ev)
    assert all(p.read_bytes() == b for p, b in files.items())  # same seeds on CPU: byte-identical files
    df = read_metrics(run)
    assert set(df["model"]) == {*cmp.keys, "real"}  # keys, never display names
    per_model = df[df["model"] != "real"].groupby("model")["metric"].apply(set)
    assert all(m == {*bc.QUALITY, "dice", "hu_w1", "gflops_per_image", "params"} for m in per_model)
    # the full-frame rows difflung.judging.claims reads: per (train_seed, sampling seed, slice, patient), class "all"
    psnr = df[(df["model"] == "difflung") & (df["metric"] == "psnr")]
    assert set(psnr["class"]) == {"all"} and set(psnr["condition"]) == {"full"} and set(psnr["seed"]) == {0, 1}
    assert (psnr["slice"] >= 0).all() and psnr["patient"].str.startswith("toy").all()
    # chapter 4 reports chapter 3's PSNR for the same model, test slices and sampling seeds
    key = ["slice", "seed"]
    a = psnr3[psnr3["metric"] == "psnr"].set_index(key)["value"].sort_index()
    b = psnr.set_index(key)["value"].sort_index()
    assert len(a) == 2 * len(scored.index) and np.allclose(a.to_numpy(), b.to_numpy(), rtol=1e-5)
    # every generator's criteria, written once; on a 3-step toy run none converges
    crit = criteria.read_criteria(run)
    assert set(crit["converged"]) == set(cmp.keys) and not any(crit["converged"].values())
    s = bc.summary(run)
    assert (s.loc[s.metric == "psnr", "patients"] == 2).all()  # the unit is the test patient
    quality = bc.table_quality(s)
    assert quality.loc[("Diff-Lung (CBMAT)", "reported (poster)"), "PSNR (dB)"] == "20.7"
    assert quality.loc[("SPADE", "reported (poster)"), "SSIM lung"] == "not reported"
    crit_table, memo = bc.table_criteria(run)
    assert "(missed)" in crit_table.to_string() and len(memo) == len(cmp.keys)
    assert bc.page_run_facts(run)["n_patients"] == "2" and bc.page_run_facts(run)["size"] == "16"
    inst = bc.table_instruments(run, s)
    assert inst.loc["lung", "floor"] == 0.7
    faith = bc.table_faithfulness(run, s)
    assert "real slices" in faith.columns
    for c, ok in crit["measurable"].items():  # a class the judge cannot judge shows no Dice, only the reason
        assert (faith.loc[c, "Pix2Pix"] == "not measurable") == (not ok[0])
    assert "lung" in bc.table_hu(run).index
    per_model, ratios = bc.table_cost(run)
    assert per_model.loc["SPADE", "GFLOPs/image, reported"] == 25 and len(ratios) == 4
    assert per_model.loc["Diff-Lung (CBMAT)", "GFLOPs/image, ours"] > 2 * per_model.loc["Pix2Pix", "GFLOPs/image, ours"]
    timings = json.loads((run / "metrics.json").read_text())["timings"]  # run-dependent: not in the CSV
    assert set(timings) == set(cmp.keys) and all(t["s_per_image"] > 0 for t in timings.values())
    bc.figure_samples(cmp, scored, n_masks=2)
    bc.figure_quality_cost(run, s)
    assert (run / "samples.png").is_file() and (run / "quality_vs_cost.json").is_file()
    box = bc.scope("smoke", run)
    assert any("convergence criteria" in c for c in box.cannot) and "What this run" in box.html()
    assert "training seed" in bc.table_realism_by_seed(run).index.names
    before = (run / "models" / "spade" / "generator" / "model.safetensors").stat().st_mtime_ns
    bc.train_models(cmp, max_budgets=1, **curve)  # a second pass reuses every model
    assert (run / "models" / "spade" / "generator" / "model.safetensors").stat().st_mtime_ns == before


def _learned(gen: dict, ratio: float = 0.95) -> None:
    """Set a criteria.json generator entry's judge Dice ratio on lung (the main model's mask check)."""
    rows = [r for r in gen["criteria"] if r["criterion"] != "judge Dice ratio, lung"]
    gen["criteria"] = rows + [{"criterion": "judge Dice ratio, lung", "value": ratio, "threshold": ">= 0.8",
                               "met": ratio >= 0.8}]


def test_a_generator_failing_its_criteria_is_still_compared(runs_root):
    from difflung.chapters import baseline_comparison as bc

    run = runs.chapter_dir(runs_root, runs.BASELINE_COMPARISON)
    if not (run / "criteria.json").is_file():
        pytest.skip("needs the chapter 4 toy run of the test above")
    doc = json.loads((run / "criteria.json").read_text())
    for k in doc["generators"]:  # every generator converged: the comparisons are measured
        doc["generators"][k]["converged"] = True
    _learned(doc["generators"]["difflung"])  # the 3-step main model "learned its masks": only that gates
    (run / "criteria.json").write_text(json.dumps(doc))
    ch3 = runs.chapter_dir(runs_root, runs.CBMAT_TRAINING) / "criteria.json"  # the main model's record
    if ch3.is_file():
        main = json.loads(ch3.read_text())
        for k in main["generators"]:
            main["generators"][k]["converged"] = True
            _learned(main["generators"][k])
        ch3.write_text(json.dumps(main))
    t = bc.comparisons(runs_root)
    assert len(t) == 10 and (t["status"] == bc.MEASURED).all()  # Diff-Lung's pairs and the baselines' order
    assert (t["convergence"] == "").all()
    doc["generators"]["spade"]["converged"] = False  # SPADE fails its criteria: a note, never a gate
    (run / "criteria.json").write_text(json.dumps(doc))
    shown = bc.table_comparisons(bc.comparisons(runs_root))
    status, spade = shown["status"], shown.index.str.contains("SPADE")
    assert spade.sum() == 6 and (status == bc.MEASURED).all()
    assert (shown.loc[spade, "training notes (not a gate)"] == "SPADE missed its convergence criteria").all()
    assert (shown.loc[~spade, "training notes (not a gate)"] == "").all()
    assert shown["ours (a - b)"].str.contains(r"\[").all()
    if ch3.is_file():  # the main model never learned its masks: now every claim is not measurable
        for k in main["generators"]:
            _learned(main["generators"][k], 0.5)
        ch3.write_text(json.dumps(main))
        shown = bc.table_comparisons(bc.comparisons(runs_root))
        main = shown.index.str.contains("Diff-Lung")  # the baselines' order does not involve the main model
        assert shown.loc[main, "status"].str.contains("never learned its masks").all()
        assert (shown.loc[main, "ours (a - b)"] == "n/a").all() and (shown.loc[~main, "status"] == bc.MEASURED).all()


def test_chapters_need_the_dataset(tmp_path):
    from difflung.chapters import ablation_study, baseline_comparison, cbmat_training

    with pytest.raises(FileNotFoundError, match="01_data_preparation"):
        ablation_study.train_strategies(tmp_path, tmp_path / "02", steps=2, batch_size=2)
    with pytest.raises(FileNotFoundError, match="01_data_preparation"):
        cbmat_training.train_main(tmp_path, steps=2, batch_size=2)
    with pytest.raises(FileNotFoundError, match="01_data_preparation"):
        baseline_comparison.open_comparison(tmp_path, tmp_path / "04", seed=0)


def test_page_facts_are_the_library_constants():
    from difflung.chapters import baseline_comparison, cbmat_training, results

    assert results.page_facts() == {"alpha": stats.ALPHA, "confidence": "95 %", "min_seeds": stats.MIN_SEEDS,
                                    "model_window": "HU [-1000, 400]", "data_range": 2.0}
    f = cbmat_training.page_facts()
    assert (f["n_timesteps"], f["beta_schedule"], f["rare_floor"]) == (1000, "linear", instruments.JUDGE_FLOOR_RARE)
    assert f["parent_recipe"] == "AdamW at 0.0001 with 500 warm-up steps, epsilon prediction, no EMA, batch 16, fp32"
    f = baseline_comparison.page_facts()
    assert f["hu_w1_max"] == instruments.HU_W1_MAX and f["confidence"] == "95 %" and len(f) == 10


def test_results_prose_and_figure_quote_the_statistics_constants(tmp_path):
    from difflung.chapters import results

    claims = pd.DataFrame({"claim": ["PSNR: a > b", "SSIM: c > d"],
                           "verdict": ["inconclusive", "not measurable: judge floor"],
                           "unit": ["test patients", "test patients"], "n": [1, 1], "estimate": [0.5, np.nan],
                           "lo": [-1.0, np.nan], "hi": [2.0, np.nan], "reported": [1.0, 0.3],
                           "family": ["poster", "poster"]})
    text = results.summary_markdown(claims, "laptop")
    assert "0 reproduced, 0 contradicted, 1 inconclusive, 1 not measurable" in text
    need = stats.min_units()
    assert f"needs at least {need} units per comparison to reach p < {stats.ALPHA:g}; this run has 1 test" in text
    fig = results.figure_claims(claims, tmp_path)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "ours (95 % interval)" in labels and (tmp_path / "claims.png").is_file()
    # dB and SSIM never share an axis: one panel each
    assert [ax.get_xlabel().split(",")[0] for ax in fig.axes] == ["PSNR difference (dB)", "SSIM difference"]


def test_segmentation_chapter_sections_without_real_ct_or_difflung_arm(tmp_path):
    from types import SimpleNamespace

    from difflung.chapters import segmentation_augmentation as ch5

    (skipped,) = ch5.real_ct_tables(None, tmp_path, runs_root=tmp_path)
    assert skipped.data == "This run has no real-CT dataset; the section is skipped."
    assert ch5.figure_dice_real(None, tmp_path, runs_root=tmp_path) is None
    assert ch5.table_nnunet_export(None, SimpleNamespace(sets={}), tmp_path) is None and not any(tmp_path.iterdir())


def test_lesion_insertion_facts_from_its_tables():
    from difflung.chapters import lesion_insertion as li

    checks = pd.DataFrame({"outside_differences": [0, 0], "w1_after": [10.0, 30.0], "w1_before": [20.0, 25.0]},
                          index=["ggo", "fibrosis"])
    assert li.check_facts(checks) == {"outside": 0, "n_w1_better": 1, "n_classes": 2}
    summary = {"seconds_by_stage": {"painting": 4.0}, "lesions": 2, "seconds_placement": 1.0, "seconds": 9.0,
               "windows": 3, "network_calls_per_window": 10, "device": "cpu"}
    assert li.cost_facts(li.cost(summary, 60.0), summary) == {"device": "cpu", "s_per_lesion": 5.0}
    f = li.page_facts(patch_size=64, per_class=2, steps=60, target_ml=3.0, margin_mm=2.0)
    assert f["n_phantom"] == 6 and f["patch_mm"] == 1.0 and f["lung_window"].startswith("lung window")


SHARED = {"common", "scope", "criteria_tables"}  # chapter-layer modules every chapter may import
ALLOWED_IN_NOTEBOOKS = {"difflung.plots", "difflung.progress", "IPython", "myst_nb"}


def _imported(tree, package: str = "difflung.chapters") -> list[str]:
    """Every module an AST imports, absolute dotted names; `from difflung.chapters import x` gives
    `difflung.chapters.x`, and relative imports are read as imports inside `package`."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            if base == "difflung.chapters":  # the names are modules of the chapter layer
                out += [f"{base}.{a.name}" for a in node.names]
            else:
                out.append(base)
    return out


def chapter_import_problems(source: str, name: str) -> list[str]:
    """Chapters imported by chapter-layer module `name` other than the shared ones (and itself)."""
    bad = []
    for mod in _imported(ast.parse(source)):
        parts = mod.split(".")
        if parts[:2] == ["difflung", "chapters"]:
            if len(parts) < 3:
                bad.append(f"{name} imports the package difflung.chapters")
            elif parts[2] not in SHARED | {name}:
                bad.append(f"{name} imports chapter {parts[2]}")
    return bad


def notebook_import_problems(source: str, chapters: set[str]) -> list[str]:
    """What a notebook imports beyond one chapter module of `chapters`, `plots`, `progress`, IPython, myst_nb and
    the standard library."""
    import sys

    bad, used = [], set()
    for mod in _imported(ast.parse(source), package="notebooks"):
        parts = mod.split(".")
        if parts[:2] == ["difflung", "chapters"] and len(parts) >= 3 and parts[2] in chapters:
            used.add(parts[2])
        elif not (mod in ALLOWED_IN_NOTEBOOKS or parts[0] in ALLOWED_IN_NOTEBOOKS
                  or parts[0] in sys.stdlib_module_names):
            bad.append(f"imports {mod}")
    if len(used) != 1:
        bad.append(f"imports {len(used)} chapter modules ({', '.join(sorted(used)) or 'none'}), not one")
    return bad


def _chapter_paths():
    import difflung.chapters as chapters

    return [p for p in Path(chapters.__file__).parent.glob("*.py") if p.stem != "__init__"]


def test_no_chapter_imports_another():
    paths = _chapter_paths()
    assert {p.stem for p in paths} >= SHARED | {"ablation_study", "results"}
    problems = [m for p in paths for m in chapter_import_problems(p.read_text(), p.stem)]
    assert not problems, problems


def test_the_chapter_import_check_catches_each_form():
    for line in ("from difflung.chapters import results", "from difflung.chapters.results import judge",
                 "import difflung.chapters.results", "from . import results", "from .results import judge",
                 "import difflung.chapters", "def f():\n    from difflung.chapters import cbmat_training as c"):
        assert chapter_import_problems(line, "ablation_study"), line
    ok = ("from difflung.chapters import common, criteria_tables\nfrom difflung.chapters.scope import Scope\n"
          "from . import scope\nfrom difflung.judging import criteria")
    assert chapter_import_problems(ok, "ablation_study") == []


def test_notebooks_import_only_their_chapter():
    """A notebook's door to the library is its chapter module (the one whose docstring names the notebook),
    `plots` and `progress`; everything else is the chapter's business."""
    repo = Path(__file__).resolve().parents[1]
    chapters = {p.stem: p.read_text() for p in _chapter_paths() if p.stem not in SHARED}
    notebooks = sorted((repo / "notebooks").glob("[0-9][0-9]_*.py"))
    assert len(notebooks) == 8  # 7 chapters and chapter 1 on your own dataset
    for nb in notebooks:
        source = nb.read_text()
        problems = notebook_import_problems(source, set(chapters))
        assert not problems, f"{nb.name}: {problems}"
        own = [c for c, text in chapters.items() if f"notebooks/{nb.name}" in text]
        assert len(own) == 1 and f"from difflung.chapters import {own[0]} as ch" in source, (nb.name, own)


def test_the_notebook_import_check_catches_library_imports():
    chapters = {"ablation_study", "results"}
    good = ("from IPython.display import Markdown, display\nfrom myst_nb import glue\nimport json\n"
            "from difflung.progress import quiet_notebook_tqdm\nfrom difflung.plots import table\n"
            "from difflung.chapters import ablation_study as ch\n")
    assert notebook_import_problems(good, chapters) == []
    assert notebook_import_problems(good + "from difflung.judging import stats\n", chapters) == [
        "imports difflung.judging"]
    assert notebook_import_problems(good + "import pandas as pd\n", chapters) == ["imports pandas"]
    assert notebook_import_problems(good + "from difflung.chapters import results\n", chapters) == [
        "imports 2 chapter modules (ablation_study, results), not one"]
    assert notebook_import_problems(good + "from difflung.chapters import common\n", chapters) == [
        "imports difflung.chapters.common"]
    assert notebook_import_problems("import numpy", chapters) == [
        "imports numpy", "imports 0 chapter modules (none), not one"]


@pytest.mark.slow
@pytest.mark.parametrize("stem", ["02_mask_ablation_study", "03_cbmat_training"])
def test_notebook_runs_clean_on_a_toy_runs_folder(runs_root, stem, tmp_path):
    """The page itself, executed with papermill on the toy runs folder: no error, nothing on stderr, no stream
    output at all (progress bars, warnings, prints), and it ends with the "can and cannot show" box."""
    from pathlib import Path

    import papermill

    from difflung.chapters.scope import TITLE

    repo = Path(__file__).resolve().parents[1]
    params = dict(runs_root=str(runs_root), run_dir=str(runs.chapter_dir(runs_root, stem)), device="cpu",
                  judge_steps=3, preset="tiny", steps=3, batch_size=2, warmup=1, n_test=3, sampler_steps=2)
    if stem.startswith("03"):
        params["n_samples"] = 2
    out = tmp_path / f"{stem}.ipynb"
    papermill.execute_notebook(str(repo / "notebooks" / f"{stem}.ipynb"), str(out), parameters=params,
                               cwd=str(repo), kernel_name="python3", progress_bar=False)
    cells = json.loads(out.read_text())["cells"]
    outputs = [o for c in cells if c["cell_type"] == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] in ("stream", "error")]
    assert TITLE in "".join(cells[-1]["outputs"][0]["data"]["text/html"])


def test_one_seg_guided_lever_compares_nothing(runs_root):
    from difflung.chapters import baseline_comparison as bc

    cmp = bc.open_comparison(runs_root, runs.chapter_dir(runs_root, runs.BASELINE_COMPARISON) / "one", seed=0,
                             gan_size="T", device="cpu")
    t = bc.tune_segguided(cmp, levers=["half-lr"], steps=3, batch_size=2)
    assert cmp.segguided_lever == "half-lr" and t["chosen"].iloc[0].startswith("yes (the profile gives one")
    assert not (cmp.run_dir / "tuning").exists()  # nothing trained
    with pytest.raises(ValueError, match="unknown Seg-Guided lever"):
        bc.tune_segguided(cmp, levers=["fast"])
