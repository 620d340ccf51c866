"""Speed of `prepare` on real chest CT (pyradiomics lung2, 512x512x61), one core, against a reference.

    .venv/bin/python benchmarks/bench_prepare.py

Reference, measured in the same run: reading the volume alone. Target: a whole case (read, anatomy, labels)
in under 20 s of CPU on one core.
"""
import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import resource  # noqa: E402
import time  # noqa: E402

from difflung.data.ct_anatomy import AnatomyConfig  # noqa: E402
from difflung.data.classmap import load_classmap  # noqa: E402
from difflung.data.ctio import read_volume  # noqa: E402
from difflung.data.prepare import Case, prepare_volume  # noqa: E402
from difflung.data.realdata import fetch_pyradiomics  # noqa: E402


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def main(target_s: float = 20.0) -> None:
    paths = fetch_pyradiomics(log=lambda s: None)
    t0 = cpu()
    vol = read_volume(paths["lung2_image"])
    read_s = cpu() - t0
    t0, w0 = cpu(), time.perf_counter()
    _, row = prepare_volume(Case(paths["lung2_image"], paths["lung2_label"], "lung2"), load_classmap("nodule"),
                            AnatomyConfig())
    prep_s, wall = cpu() - t0, time.perf_counter() - w0
    print(f"lung2 {vol.hu.shape} (z, y, x): read {read_s:.2f} s CPU (reference)")
    print(f"prepare (read + anatomy + labels): {prep_s:.2f} s CPU, {wall:.2f} s wall, "
          f"{prep_s / read_s:.1f} x reference; target {target_s:.0f} s -> {prep_s / target_s:.2f} x target; "
          f"lung {row['lung_volume_ml']:.0f} ml")


if __name__ == "__main__":
    main()
