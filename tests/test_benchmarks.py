"""The benchmark scripts keep up with the library: each imports, and the convergence benchmark builds its data."""
import importlib.util
from argparse import Namespace
from pathlib import Path

import pytest

from difflung import labels as L

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("name", sorted(p.stem for p in BENCH.glob("*.py")))
def test_benchmark_imports_and_has_main(name):
    assert callable(getattr(_load(name), "main", None))


def test_convergence_benchmark_builds_then_reuses_its_dataset(tmp_path):
    bench = _load("bench_convergence")
    args = Namespace(out=str(tmp_path), n_patients=3, slices=2, phantom_size=64, size=32, seed=0)
    ds = bench.dataset(args)
    assert ds.size == 32 and (tmp_path / "data_3p_32px" / "dataset" / "manifest.json").is_file()
    assert bench.dataset(args).manifest == ds.manifest  # the second call reads the cached artifact
    # chapter 1's HU-signature check beside it: the classes the criteria may judge at this size
    sig = bench.signature(args)
    assert set(sig) == {L.BY_ID[c].name for c in ds.classes if L.BY_ID[c].in_lung}
    assert all(isinstance(ok, bool) and (ok or why.startswith("at 32 px")) for ok, why in sig.values())
    (tmp_path / "data_3p_32px" / "hu_signature.json").unlink()  # an older cache: rebuilt, the same bytes
    assert bench.dataset(args).manifest["splits"] == ds.manifest["splits"] and bench.signature(args) == sig
    with pytest.raises(ValueError, match="2 slices per patient"):  # never another data set under the same name
        bench.dataset(Namespace(**{**vars(args), "slices": 24}))
    label, rec, over = bench.parse_arm("eps=difflung:prediction_type=epsilon,lr=0.003")
    assert (label, rec, over) == ("eps", "difflung", {"prediction_type": "epsilon", "lr": 0.003})


def test_convergence_summary_reports_each_sampler_and_a_ratio_per_parent_arm(capsys):
    bench = _load("bench_convergence")
    row = lambda rec, step, w, smp, ok, cpu, final=False: {
        "recipe": rec, "step": step, "weights": w, "sampler": smp, "converged": ok,
        "criteria": {"judge Dice ratio, ggo": [0.9 if ok else 0.7, ok]},
        "air_share_ddim50": 1.0, "air_mean_hu": -980.0, "cpu_min": cpu, "final": final}
    d, p = lambda *a, **k: row("difflung", *a, **k), lambda *a, **k: row("parent", *a, **k)
    arms = {"difflung": [d(500, "ema", "dpm", False, 1.0), d(500, "ema", "dpm-sde", False, 1.0),
                         d(1000, "ema", "dpm", False, 2.0), d(1000, "ema", "dpm-sde", True, 2.0, True)],
            "parent": [p(1000, "raw", "dpm", False, 5.0), p(2000, "raw", "dpm", False, 10.0, True)],
            "parent-long": [p(4000, "raw", "dpm", False, 20.0), p(8000, "raw", "dpm", True, 40.0, True)],
            "lr": [d(1000, "ema", "dpm", True, 3.0, True)]}  # a difflung lever: no ratio of its own
    bench.summary(arms, cap=10)
    out = capsys.readouterr().out
    assert "difflung                 ema dpm-sde: 2.0 min (step 1000)" in out
    assert "difflung                 ema dpm    : not reached in 2.0 min (cap 10; step 1000)" in out
    assert "ratio parent / difflung: > 5.0x (parent not reached in 10.0 min)" in out
    assert "ratio parent-long / difflung: 20.0x" in out and "ratio lr" not in out


def test_convergence_counts_the_judges_false_positives_on_real_and_generated():
    import numpy as np

    bench = _load("bench_convergence")
    lung, ggo = L.BY_NAME["lung"].id, L.BY_NAME["ggo"].id
    labels = np.full((2, 4, 4), lung, np.uint8)
    real, gen = np.zeros((2, 4, 4)), np.ones((2, 4, 4))

    class Judge:  # calls one lung pixel GGO on real slices, five on generated ones
        def predict(self, images):
            out = labels.copy()
            out.reshape(-1)[: 5 if images.mean() > 0.5 else 1] = ggo
            return out

    assert bench.judge_false_positives(Judge(), real, gen, labels, ["lung", "ggo"]) == {"ggo": [1, 5]}
    assert bench.judge_false_positives(Judge(), real, gen, labels, ["lung"]) == {}
    assert "fp/ggo=1/5 tex/lung=0.50" in bench.short({"criteria": {}, "air_share_ddim50": 1.0, "air_mean_hu": -980.0,
                                        "false_positives": {"ggo": [1, 5]}, "texture_ratio": {"lung": 0.5}})


def test_convergence_texture_ratio_of_generated_over_real():
    import numpy as np

    bench = _load("bench_convergence")
    lung = L.BY_NAME["lung"].id
    labels = np.full((1, 16, 16), lung, np.uint8)
    real = np.random.default_rng(0).normal(-0.7, 0.05, (1, 16, 16))  # model window: [-1, 1]
    gen = -0.7 + (real + 0.7) * 0.5  # the same texture at half the amplitude
    assert bench.texture_ratios([0, lung], real, gen, labels) == {"lung": pytest.approx(0.5)}


def test_convergence_judges_a_checkpoint_by_the_chapters_rule_on_the_validation_split(tmp_path):
    """`evaluate` scores a stopped run's EMA and raw weights on every validation mask with `criteria.measure`:
    its criteria are the chapters' table for the same images, and it never reads the test split."""
    import numpy as np
    import torch

    from difflung.diffusion import TrainConfig, train_diffusion
    from difflung.diffusion.toy import toy_dataset
    from difflung.diffusion.train import checkpoint_model
    from difflung.generators import DIFFUSION, Generator
    from difflung.judging import criteria, scoring
    from difflung.segmentation import SegConfig, fit_segmenter

    bench = _load("bench_convergence")
    ds = toy_dataset(tmp_path / "ds", n_patients=10, n_slices=2, size=16)
    train_diffusion(ds, TrainConfig(preset="tiny", steps=4, batch_size=4, warmup=1, ema_decay=0.9,
                                    checkpoint_every=100), tmp_path / "m", device="cpu", progress=False, stop_after=2)
    tr = ds.split("train")
    judge = fit_segmenter(tmp_path / "judge", tr.images, tr.labels, ds.classes,
                          SegConfig(channels=(4, 8), strides=(2,), num_res_units=1, steps=5, shift_prob=0,
                                    noise_prob=0), 0, dataset_sha256="x", device="cpu", progress=False)
    args = Namespace(samplers=["dpm"], sampler_steps=2, seed=0, split="val", classifier_steps=3)

    class NoTest:  # the dataset with its test split out of reach
        def __getattr__(self, name):
            return getattr(ds, name)

        def split(self, name):
            assert name != "test", "the benchmark read the test split"
            return ds.split(name)

    rows = bench.evaluate(tmp_path / "m", NoTest(), judge, {}, args)
    assert [(r["weights"], r["step"], r["sampler"], r["split"]) for r in rows] == [("ema", 2, "dpm", "val"),
                                                                                   ("raw", 2, "dpm", "val")]
    unet, meta = checkpoint_model(tmp_path / "m", ds)  # the EMA weights, judged the chapters' way
    g = Generator("dpm", DIFFUSION, tmp_path / "m", meta, unet, "dpm", 2)
    scored = scoring.generate_and_score([g], ds, judge, n_test=10**6, seeds=[0], split="val")
    assert len(scored.index) == len(ds.split("val"))
    res = criteria.measure(scored, "dpm", train=tr.images, measurable=criteria.measurable_classes(scored, {}),
                           generator=torch.Generator().manual_seed(0), classifier_steps=3, signature={},
                           train_labels=tr.labels)
    want = {t.criterion: [t.value, bool(t.met)] for t in res["table"].itertuples()}
    got = rows[0]["criteria"]
    assert got.keys() == want.keys() and "real-vs-generated classifier accuracy" in got
    assert all(np.isclose(got[k][0], want[k][0], equal_nan=True) and got[k][1] == want[k][1] for k in want)
    assert rows[0]["converged"] == res["converged"] and rows[0]["memorisation"] == res["memorisation"]
    assert 0.0 <= rows[0]["air_share_ddim50"] <= 1.0


def test_time_to_quality_counts_generator_criteria_not_the_classifiers_controls():
    bench = _load("bench_convergence")
    row = {"converged": False, "criteria": {"judge Dice ratio, lung": [0.95, True],
                                            "classifier detects positive control: lung +40 HU": [0.5, False]}}
    assert bench.quality(row)
    row["criteria"]["judge Dice ratio, ggo"] = [0.7, False]
    assert not bench.quality(row)
    assert bench.parse_arm("l=difflung:lesion_classes=[4,5,6],lr=0.001")[2] == {"lesion_classes": [4, 5, 6],
                                                                              "lr": 0.001}
