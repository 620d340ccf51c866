"""What one GPU does with difflung, in under 8 minutes: the numbers README and "Run at full scale" quote.

    .venv/bin/python benchmarks/gpu_check.py                    # needs CUDA; prints a table and writes JSON
    .venv/bin/python benchmarks/gpu_check.py --peak-tflops 989  # the GPU's dense bf16 peak, for FLOP utilisation

Measured at 256x256, for the `efficient` and `paper` presets:
    sampling   s/image batched (16) in bf16 autocast with DPM-Solver++ 20 steps; GFLOPs/image.
    training   images/s (steady state, bf16 autocast + channels_last) and model FLOP utilisation
               (MFU = 3 x forward FLOPs x images/s / peak; 3 counts the forward and the backward's two passes).
    memory     peak allocated CUDA memory of each training run.
Then chapter 3 of the `standard` profile (after chapter 1, which it reads) with `--steps` training steps, and
its wall time. Each measurement runs in its own process, so one's memory does not count in the next.
Without CUDA the script says so and measures nothing (exit status 2): CPU numbers are bench_diffusion.py's job.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_diffusion import N_CLASSES, measure_training, time_sampling  # noqa: E402

PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10": 125.0}  # dense bf16


def peak_tflops(name: str, given: float | None) -> float | None:
    if given:
        return given
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


def sampling_row(preset: str, size: int, batch: int) -> dict:
    from difflung.diffusion.model import build_unet, count_parameters
    from difflung.diffusion.sample import forward_flops
    from difflung.diffusion.train import NOISE_SCHEDULE

    unet = build_unet(N_CLASSES, size, "onehot", preset).to("cuda").to(memory_format=torch.channels_last)
    meta = {"classes": list(range(N_CLASSES)), "mask_mode": "onehot", "sample_size": size,
            "noise_schedule": NOISE_SCHEDULE}
    s = time_sampling(unet, meta, "dpm", 20, n_images=2 * batch, batch=batch, device="cuda")
    return {"params_M": count_parameters(unet) / 1e6, "gflops_forward": forward_flops(unet, size) / 1e9,
            "sample_s_per_image": s, "sample_gflops_per_image": 20 * forward_flops(unet, size) / 1e9}


def chapter3(steps: int, timeout: int) -> dict:
    """Chapters 1 and 3 of the standard profile in a scratch runs folder; chapter 3's wall time."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "difflung", "run", "--profile", "standard", "--runs-dir", tmp,
               "--notebooks-out", str(Path(tmp) / "nb"), "--only", "01_data_preparation", "--only",
               "03_cbmat_training", "--set", f"03_cbmat_training.steps={steps}"]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
        wall = time.perf_counter() - t0
        prov_path = Path(tmp) / "standard" / "provenance.json"
        prov = json.loads(prov_path.read_text()) if prov_path.is_file() else {}
    rec = prov.get("notebooks", {}).get("03_cbmat_training", {})
    return {"steps": steps, "status": rec.get("status", "failed" if out.returncode else "?"),
            "chapter3_wall_s": rec.get("wall_s"), "both_chapters_wall_s": round(wall, 1),
            "error": rec.get("error") or (out.stderr[-400:] if out.returncode else None)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--train-steps", type=int, default=30, help="steps per training measurement")
    ap.add_argument("--steps", type=int, default=500, help="chapter 3 training steps")
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--skip-chapter", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu_check.json"))
    a = ap.parse_args(argv)
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing measured (run it where a GPU is available)")
        return 2
    name = torch.cuda.get_device_name(0)
    peak = peak_tflops(name, a.peak_tflops)
    rows = {}
    for preset in ("efficient", "paper"):
        row = sampling_row(preset, a.size, a.batch)
        spec = dict(preset=preset, mask_mode="onehot", size=a.size, batch=a.batch, steps=a.train_steps,
                    mixed_precision="bf16", channels_last=True, compile=False, device="cuda")
        t = measure_training(spec)
        row.update(train_images_per_s=t["images_per_s"], peak_mem_GB=t["peak_mem_bytes"] / 2**30)
        row["mfu"] = (3 * row["gflops_forward"] * t["images_per_s"] / 1e3 / peak) if peak else None
        rows[preset] = row
        mfu = "n/a (unknown peak: --peak-tflops)" if row["mfu"] is None else f"{100 * row['mfu']:.1f} %"
        print(f"{preset:9s} params {row['params_M']:7.1f} M | sample DPM-20 bf16 {row['sample_s_per_image']:.3f} "
              f"s/image ({row['sample_gflops_per_image']:.0f} GFLOP) | train {row['train_images_per_s']:.1f} img/s, "
              f"MFU {mfu}, "
              f"peak {row['peak_mem_GB']:.1f} GB", flush=True)
    ratio = rows["paper"]["sample_s_per_image"] / rows["efficient"]["sample_s_per_image"]
    print(f"sampling: paper / efficient = {ratio:.1f}x the time per image (same run)")
    result = {"device": name, "size": a.size, "batch": a.batch, "peak_tflops": peak, "presets": rows,
              "torch": torch.__version__}
    if not a.skip_chapter:
        result["chapter3_standard"] = chapter3(a.steps, timeout=300)
        print(f"chapter 3 (standard, {a.steps} steps): {result['chapter3_standard']}")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=float) + "\n")
    print(f"gpu_check: written {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
