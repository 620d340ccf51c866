"""Lesion insertion cost: seconds per inserted lesion at 64 and 96 px patches for several RePaint settings.

    .venv/bin/python benchmarks/bench_insert.py --threads 1         # CPU, `small` preset, ~2 CPU minutes
    .venv/bin/python benchmarks/bench_insert.py --preset base --lesions 32 --device cuda

What is timed: `difflung.insertion.painting.paint` (windows resampled to the 1.0 mm patch grid, RePaint, resampled back)
on a synthetic scan of lung texture at 0.7 mm pixels and 5 mm slices with one 8 mm-radius lesion per slice, so
that each lesion is one window and all windows of a setting run as one batched `inpaint` call. Anatomy and
reading are not included (they do not depend on the sampler). Models are untrained: cost does not depend on the
weights. Each setting runs once after a warm-up; rows print seconds per lesion, UNet calls per lesion and the
ratio to the cheapest setting measured in the same run. Writes benchmarks/results/bench_insert.json.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from difflung import labels as L
from difflung.diffusion.inpaint import network_calls  # noqa: E402
from difflung.diffusion.patch_model import save_untrained_model  # noqa: E402
from difflung.insertion import InsertConfig, edit_region, load_insert_model, paint  # noqa: E402
from difflung.core.provenance import device_description, provenance, resolve_device, write_json_atomic  # noqa: E402

CLASSES = [L.BACKGROUND, L.BODY, L.LUNG, L.AIRWAY, L.EMPHYSEMA, L.GGO, L.FIBROSIS]
SETTINGS = [(20, 10, 1), (50, 10, 1), (50, 10, 2), (50, 5, 4)]  # (steps, jump_length, jump_n_sample)
SPACING = (5.0, 0.7, 0.7)


def synthetic_scan(n: int, side: int = 160, seed: int = 0):
    """(hu, labels, lesions): lung texture (-860 +- 30 HU), one GGO disk (8 mm radius) at the centre of each slice."""
    rng = np.random.default_rng(seed)
    hu = (-860.0 + 30.0 * rng.standard_normal((n, side, side))).astype(np.float32)
    labels = np.full(hu.shape, L.LUNG, np.uint8)
    yy, xx = (np.mgrid[:side, :side] - side / 2) * SPACING[1]
    lesions = np.zeros(hu.shape, np.uint8)
    lesions[:, yy ** 2 + xx ** 2 <= 8.0 ** 2] = L.GGO
    return hu, labels, lesions


def measure(model_dir, size: int, setting, n: int, device: str) -> dict:
    steps, j, r = setting
    unet, meta = load_insert_model(model_dir, device=device)
    hu, labels, lesions = synthetic_scan(n)
    region = edit_region(lesions, labels == L.LUNG, SPACING, 2.0)
    lab = np.where(lesions > 0, lesions, labels)
    # independent slices: the benchmark times the RePaint settings, not the z-ordered painting
    cfg = InsertConfig(steps=steps, jump_length=j, jump_n_sample=r, batch_size=n, z_guide=0.0, z_rho=0.0)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t = time.perf_counter()
    _, info = paint(hu, lab, region, SPACING, unet, meta, cfg, torch.Generator().manual_seed(0), device=device)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    sec = time.perf_counter() - t
    assert info["windows"] == n, info  # one window per lesion
    return {"size": size, "steps": steps, "jump_length": j, "jump_n_sample": r,
            "calls_per_lesion": network_calls(steps, j, r), "s_per_lesion": sec / n, "lesions": n}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="small")
    p.add_argument("--sizes", type=int, nargs="+", default=[64, 96])
    p.add_argument("--lesions", type=int, default=8, help="lesions (= windows, one batch) per setting")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/bench_insert.json")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            model = save_untrained_model(Path(tmp) / f"m{size}", CLASSES, size, preset=args.preset)
            measure(model, size, (2, 1, 1), 2, device)  # warm-up: allocator, kernels
            rows += [measure(model, size, s, args.lesions, device) for s in SETTINGS]
    cheapest = min(r["s_per_lesion"] for r in rows)
    print(f"device: {device_description(device)}, preset {args.preset}, {args.lesions} lesions per setting")
    print(f"{'px':>4} {'steps':>5} {'j':>3} {'r':>3} {'calls':>6} {'s/lesion':>9} {'x cheapest':>10}")
    for r in rows:
        r["ratio_to_cheapest"] = r["s_per_lesion"] / cheapest
        print(f"{r['size']:>4} {r['steps']:>5} {r['jump_length']:>3} {r['jump_n_sample']:>3} "
              f"{r['calls_per_lesion']:>6} {r['s_per_lesion']:>9.3f} {r['ratio_to_cheapest']:>10.2f}")
    write_json_atomic(args.out, {"rows": rows, "preset": args.preset,
                                 "provenance": provenance(config={k: str(v) for k, v in vars(args).items()},
                                                          device=device)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
