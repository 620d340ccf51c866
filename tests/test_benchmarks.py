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
    label, rec, over = bench.parse_arm("eps=difflung:prediction_type=epsilon,lr=0.003")
    assert (label, rec, over) == ("eps", "difflung", {"prediction_type": "epsilon", "lr": 0.003})
