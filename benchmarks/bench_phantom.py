"""Phantom generation speed on one core: slices/s at 256x256 and 64x64, against the 50 slices/s target.

    .venv/bin/python benchmarks/bench_phantom.py [--patients 6]

End to end (`phantom_patient`: patient anatomy, vessel trees and lesions, then 16 slices), with numpy/BLAS held to
one thread. CPU time of this process is the headline (the machine may be shared); wall time is printed beside
it. As a machine reference measured in the same run, the script also times making one 256x256 image of
correlated Gaussian noise (numpy draw + scipy Gaussian filter) and prints the phantom's cost in those units.
"""
from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from difflung import phantom as P

TARGET = 50.0  # slices/s at 256x256 on one core


def _reference(n: int = 40) -> float:
    """CPU seconds to make one 256x256 correlated-noise image (the same-run machine reference)."""
    rng = np.random.default_rng(0)
    ndimage.gaussian_filter(rng.standard_normal((256, 256)), 1.0)
    t = time.process_time()
    for _ in range(n):
        ndimage.gaussian_filter(rng.standard_normal((256, 256)), 1.0)
    return (time.process_time() - t) / n


def bench(size: int, patients: int, seed: int = 0) -> dict:
    cfg = P.PhantomConfig(size=size)
    P.phantom_patient("warm", np.random.default_rng(10_000 + seed), cfg)  # caches, imports
    cpu0, wall0 = time.process_time(), time.perf_counter()
    n = 0
    for i in range(patients):
        v = P.phantom_patient(f"P{i:03d}", np.random.default_rng(seed + i), cfg)
        n += v.hu.shape[0]
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    # split: patient sampling vs slice rendering
    t = time.process_time()
    pats = [P.sample_patient(np.random.default_rng(seed + i), cfg) for i in range(patients)]
    t_pat = (time.process_time() - t) / patients
    return {"size": size, "slices": n, "cpu_s": cpu, "wall_s": wall, "slices_per_s_cpu": n / cpu,
            "slices_per_s_wall": n / wall, "patient_ms": 1000 * t_pat,
            "slice_ms": 1000 * (cpu / n - t_pat / cfg.slices_per_patient),
            "lesions": sum(sum(p.summary()["lesions"].values()) for p in pats)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=6, help="patients per size (16 slices each)")
    args = ap.parse_args(argv)
    ref = _reference()
    print(f"reference: one 256x256 correlated-noise image = {1000 * ref:.2f} ms CPU")
    print(f"{'size':>5} {'slices':>6} {'slices/s (cpu)':>15} {'slices/s (wall)':>16} {'patient ms':>11} "
          f"{'slice ms':>9} {'x target':>9} {'ref units/slice':>16}")
    ok = True
    for size in (256, 64):
        r = bench(size, args.patients)
        ratio = r["slices_per_s_cpu"] / TARGET
        units = (1.0 / r["slices_per_s_cpu"]) / ref
        print(f"{size:>5} {r['slices']:>6} {r['slices_per_s_cpu']:>15.1f} {r['slices_per_s_wall']:>16.1f} "
              f"{r['patient_ms']:>11.1f} {r['slice_ms']:>9.2f} {ratio:>9.2f} {units:>16.2f}")
        if size == 256:
            ok = ratio >= 1.0
    print(f"target {TARGET:.0f} slices/s at 256x256 on one core: {'met' if ok else 'NOT met'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
