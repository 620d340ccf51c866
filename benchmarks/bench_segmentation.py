"""Throughput of chapter 5's two costs: segmentation training (images/s) and synthetic-set generation (images/s).

Segmentation: `train_segmenter` on toy slices (`difflung.diffusion.toy`) at `--size`, images/s over `--steps`
optimisation steps after a short warm-up run. Reference, measured in the same run: the same MONAI UNet without
augmentation, fp32. Compared: with the standard MONAI augmentation (the library default; per-sample on the CPU),
and on CUDA with bf16 autocast.

Synthetic set: masks from `difflung.data.masksynth` (masks/s), then images from a mask-conditioned diffusion UNet
(`--model DIR`, or an untrained preset: speed does not depend on the weights). Reference: DDIM with 50 steps
(the parent's default); compared: DDIM-20 and DPM-Solver++-20. The ratio is images/s over the reference's.

    .venv/bin/python benchmarks/bench_segmentation.py                       # CPU, 64x64
    .venv/bin/python benchmarks/bench_segmentation.py --device cuda --size 128 --steps 200
Writes benchmarks/results/bench_segmentation.json (with provenance) and prints a table.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from difflung.core.provenance import device_description, provenance, write_json_atomic  # noqa: E402
from difflung.segmentation import SegConfig, train_segmenter  # noqa: E402


def seg_throughput(images, labels, classes, cfg: SegConfig, device: str) -> float:
    train_segmenter(images, labels, classes, replace(cfg, steps=3), torch.Generator().manual_seed(1),
                    device=device, progress=False)  # warm-up: lazy init, cuDNN autotuning
    seg = train_segmenter(images, labels, classes, cfg, torch.Generator().manual_seed(0), device=device,
                          progress=False)
    return float(seg.info["images_per_s"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--steps", type=int, default=40, help="segmentation optimisation steps timed")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64, 128])
    ap.add_argument("--model", default=None, help="trained diffusion model folder (default: untrained preset)")
    ap.add_argument("--preset", default="small", help="diffusion preset when no --model is given")
    ap.add_argument("--n-synthetic", type=int, default=8, help="synthetic images generated per sampler")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_segmentation.json"))
    args = ap.parse_args(argv)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"

    from difflung.diffusion.toy import toy_dataset

    with tempfile.TemporaryDirectory() as tmp:
        ds = toy_dataset(Path(tmp) / "toy", n_patients=5, n_slices=8, size=args.size, seed=0)
        train = ds.split("train")
        classes = ds.classes

    # --- segmentation training ---------------------------------------------------------------------------------
    base = SegConfig(channels=tuple(args.channels), strides=(2,) * (len(args.channels) - 1), steps=args.steps,
                     batch_size=args.batch, augment=False, amp=False)
    runs = {"reference: no augmentation, fp32": base, "MONAI augmentation, fp32 (library default on CPU)":
            replace(base, augment=True)}
    if cuda:
        runs["MONAI augmentation, bf16 autocast (library default on CUDA)"] = replace(base, augment=True, amp=True)
        runs["no augmentation, bf16 autocast"] = replace(base, amp=True)
    seg_rows = []
    for name, cfg in runs.items():
        ips = seg_throughput(train.images, train.labels, classes, cfg, args.device)
        seg_rows.append({"config": name, "images_per_s": ips})
    ref = seg_rows[0]["images_per_s"]
    for r in seg_rows:
        r["ratio_vs_reference"] = r["images_per_s"] / ref

    # --- synthetic set -----------------------------------------------------------------------------------------
    from difflung.diffusion.model import build_unet
    from difflung.diffusion.sample import sample
    from difflung.diffusion.train import NOISE_SCHEDULE, load_model
    from difflung.data.masksynth import synthesize_masks

    rare = {"emphysema": 0.15, "ggo": 0.15, "fibrosis": 0.15}
    t0 = time.perf_counter()
    ms = synthesize_masks(train.labels, rare, np.random.default_rng(0), args.n_synthetic)
    mask_rate = args.n_synthetic / (time.perf_counter() - t0)
    if args.model:
        unet, meta = load_model(args.model, device=args.device)
        what = f"trained model {args.model}"
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            unet = build_unet(len(classes), args.size, "onehot", args.preset).to(dev).eval()
        meta = {"classes": classes, "mask_mode": "onehot", "noise_schedule": NOISE_SCHEDULE, "sample_size": args.size}
        what = f"untrained preset {args.preset!r}"
    gen_rows = []
    for sampler, steps in (("ddim", 50), ("ddim", 20), ("dpm", 20)):
        sample(unet, meta, ms.labels[:1], generator=torch.Generator().manual_seed(0), sampler=sampler, steps=2,
               device=dev)  # warm-up
        if cuda:
            torch.cuda.synchronize(dev)
        t0 = time.perf_counter()
        sample(unet, meta, ms.labels, generator=torch.Generator().manual_seed(0), sampler=sampler, steps=steps,
               batch_size=args.n_synthetic, device=dev)
        if cuda:
            torch.cuda.synchronize(dev)
        gen_rows.append({"sampler": f"{sampler}-{steps}", "images_per_s": args.n_synthetic / (time.perf_counter() - t0)})
    ref_g = gen_rows[0]["images_per_s"]
    for r in gen_rows:
        r["ratio_vs_reference"] = r["images_per_s"] / ref_g

    device = device_description(dev)
    print(f"device: {device}; image size {args.size}x{args.size}; batch {args.batch}; UNet channels "
          f"{tuple(args.channels)}; {args.steps} timed steps" + ("" if cuda else "  (CPU numbers, not GPU)"))
    print(f"\nsegmentation training{'':40s}images/s   ratio")
    for r in seg_rows:
        print(f"  {r['config']:58s}{r['images_per_s']:9.1f}  {r['ratio_vs_reference']:6.2f}x")
    print(f"\nsynthetic set ({what}, {args.n_synthetic} images per batch)")
    print(f"  mask synthesis (difflung.data.masksynth){'':23s}{mask_rate:9.1f}  masks/s")
    for r in gen_rows:
        ref_tag = "  (reference)" if r is gen_rows[0] else ""
        print(f"  {r['sampler']:58s}{r['images_per_s']:9.2f}  {r['ratio_vs_reference']:6.2f}x{ref_tag}")
    write_json_atomic(args.out, {"segmentation": seg_rows, "generation": gen_rows, "mask_synthesis_per_s": mask_rate,
                                 "size": args.size, "batch": args.batch, "channels": args.channels,
                                 "diffusion": what, "provenance": provenance(config=vars(args), device=dev)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
