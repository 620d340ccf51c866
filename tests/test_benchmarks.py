"""The benchmark scripts keep up with the library: each imports, and the convergence benchmark builds its data."""
import importlib.util
from argparse import Namespace
from pathlib import Path

import pytest

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
    with pytest.raises(ValueError, match="2 slices per patient"):  # never another data set under the same name
        bench.dataset(Namespace(**{**vars(args), "slices": 24}))
    label, rec, over = bench.parse_arm("eps=difflung:prediction_type=epsilon,lr=0.003")
    assert (label, rec, over) == ("eps", "difflung", {"prediction_type": "epsilon", "lr": 0.003})


def test_convergence_summary_reports_each_sampler_and_a_ratio_per_parent_arm(capsys):
    bench = _load("bench_convergence")
    crit = {"judge Dice ratio, ggo": [0.7, False]}
    row = lambda rec, step, w, smp, ok, cpu, final=False: {
        "recipe": rec, "step": step, "weights": w, "sampler": smp, "converged": ok, "criteria": crit,
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

    from difflung import labels as L

    bench = _load("bench_convergence")
    lung, ggo = L.BY_NAME["lung"].id, L.BY_NAME["ggo"].id
    labels = np.full((2, 4, 4), lung, np.uint8)
    real, gen = np.zeros((2, 4, 4)), np.ones((2, 4, 4))

    class Judge:  # calls one lung pixel GGO on real slices, five on generated ones
        def predict(self, images):
            out = labels.copy()
            out.reshape(-1)[: 5 if images.mean() > 0.5 else 1] = ggo
            return out

    ds = Namespace(split=lambda name: Namespace(images=real, labels=labels))
    info = {"judged": ["lung", "ggo"], "generated": gen}
    assert bench.judge_false_positives(Judge(), ds, info) == {"ggo": [1, 5]}
    assert bench.judge_false_positives(Judge(), ds, {"judged": ["lung"], "generated": gen}) == {}
    assert "fp/ggo=1/5 tex/lung=0.50" in bench.short({"criteria": {}, "air_share_ddim50": 1.0, "air_mean_hu": -980.0,
                                        "false_positives": {"ggo": [1, 5]}, "texture_ratio": {"lung": 0.5}})


def test_convergence_texture_ratio_of_generated_over_real():
    import numpy as np

    from difflung import labels as L

    bench = _load("bench_convergence")
    lung = L.BY_NAME["lung"].id
    labels = np.full((1, 16, 16), lung, np.uint8)
    real = np.random.default_rng(0).normal(-0.7, 0.05, (1, 16, 16))  # model window: [-1, 1]
    gen = -0.7 + (real + 0.7) * 0.5  # the same texture at half the amplitude
    ds = Namespace(classes=[0, lung], split=lambda name: Namespace(images=real, labels=labels))
    assert bench.texture_ratios(ds, gen) == {"lung": pytest.approx(0.5)}
