"""Diffusion training and sampling cost: difflung's design against the parent's setup, in one run.

    .venv/bin/python benchmarks/bench_diffusion.py                  # CPU: 64x64, a few steps, ~2-3 minutes
    .venv/bin/python benchmarks/bench_diffusion.py --size 256       # one GPU: the targets' setting

Configurations
    reference  Segmentation-Guided Diffusion as its code runs: the `paper` UNet (113.7 M parameters), one k/255
               mask channel, fp32, contiguous memory, no torch.compile, DDIM 50 steps.
    difflung   `--preset` (default `efficient`, ~8 GFLOP per 256x256 forward), one-hot mask channels, bf16
               autocast + channels_last (+ torch.compile with --compile) on CUDA, DPM-Solver++ 20 steps.
    On CUDA a third training row, `paper+exec`, separates the execution settings from the architecture.

Measured: training images/s (steady state: the first step is excluded) and peak memory, each configuration
in its own process (CPU peak memory is the process's peak RSS); sampling s/image and GFLOPs/image (one UNet
forward per solver step, counted by torch.utils.flop_counter, all steps) for DDIM-50, DPM-Solver++-20 and
DDPM-1000 (timed on fewer images), and the reference's DDIM-50. Models are untrained (cost does not depend on
the weights). With --model DIR (default: the smoke run's chapter-3 model when it exists) the samplers'
PSNR/SSIM against real test slices are compared on that trained model, with 95% CIs and a paired test.

Targets (one GPU, 256x256): training >= 3x the reference images/s; sampling <= 200 GFLOPs/image with
PSNR/SSIM no worse than DDIM-50 within noise. Without a GPU the script says so and measures on the CPU at a
smaller size: ratios there reflect the architecture only (bf16, channels_last and compile are GPU paths).
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

N_CLASSES = 7  # the phantom's classes: background, body, lung, airway, emphysema, ggo, fibrosis


def train_worker(spec: dict) -> dict:
    """Run in a child process: train `spec` on a toy dataset for a few steps and report cost."""
    from difflung.diffusion import TrainConfig, train_diffusion
    from difflung.diffusion.toy import toy_dataset

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    with tempfile.TemporaryDirectory() as tmp:
        ds = toy_dataset(Path(tmp) / "ds", n_patients=5, n_slices=4, size=spec["size"])
        cfg = TrainConfig(preset=spec["preset"], mask_mode=spec["mask_mode"], strategy="cbmat", steps=spec["steps"],
                          batch_size=spec["batch"], warmup=0, mixed_precision=spec["mixed_precision"],
                          channels_last=spec["channels_last"], compile=spec["compile"], checkpoint_every=10**6)
        r = train_diffusion(ds, cfg, Path(tmp) / "model", device=spec["device"], progress=False)
    return {"images_per_s": r.images_per_s, "peak_mem_bytes": r.peak_mem_bytes, "device": r.device}


def measure_training(spec: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                         cwd=ROOT)
    if out.returncode:
        raise RuntimeError(f"training worker failed for {spec}:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def time_sampling(unet, meta, sampler: str, steps: int, n_images: int, batch: int, device: str) -> float:
    """Median-free single timing (sampling is long): seconds per image over `n_images`, after a 1-step warm-up."""
    from difflung.diffusion import sample

    masks = np.zeros((n_images, meta["sample_size"], meta["sample_size"]), np.uint8)
    masks[:, 4:-4, 4:-4] = 1
    masks[:, 8:-8, 6:meta["sample_size"] // 2 - 2] = 2
    warm_sampler, warm_steps = ("ddim", 1) if sampler != "dpm" else ("dpm", 1)
    sample(unet, meta, masks[:1], generator=torch.Generator().manual_seed(0), sampler=warm_sampler, steps=warm_steps,
           device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    sample(unet, meta, masks, generator=torch.Generator().manual_seed(0), sampler=sampler, steps=steps,
           batch_size=batch, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) / n_images


def model_for(preset: str, mask_mode: str, size: int, device: str):
    from difflung.diffusion import build_unet
    from difflung.diffusion.train import NOISE_SCHEDULE

    with torch.random.fork_rng():
        torch.manual_seed(0)
        unet = build_unet(N_CLASSES, size, mask_mode, preset).to(device).eval()
    meta = {"classes": [0, 1, 2, 3, 4, 5, 6], "mask_mode": mask_mode, "noise_schedule": NOISE_SCHEDULE,
            "sample_size": size}
    return unet, meta


def sampler_quality(model_dir: Path, n_test: int, device: str, seed: int = 0):
    """PSNR/SSIM of DDIM-50, DPM-Solver++-20 (and 10) on a trained model's test slices, paired by mask."""
    from difflung.data.dataset import Dataset
    from difflung.diffusion import load_model, sample
    from difflung.judging.metrics import psnr_ssim
    from difflung.judging.stats import mean_ci, paired_test

    unet, meta = load_model(model_dir, device=device)
    ds = Dataset(meta["dataset"]["path"])
    te = ds.split("test")
    idx = np.arange(min(n_test, len(te)))
    res = {}
    for name, sampler, steps in (("DDIM-50", "ddim", 50), ("DPM-Solver++-20", "dpm", 20), ("DPM-Solver++-10", "dpm", 10)):
        gen = sample(unet, meta, te.labels[idx], generator=torch.Generator().manual_seed(seed), sampler=sampler,
                     steps=steps, device=device)
        res[name] = psnr_ssim(gen, te.images[idx])
    rows = []
    for name, q in res.items():
        for metric in ("psnr", "ssim"):
            m, lo, hi = mean_ci(q[metric])
            t = paired_test(q[metric], res["DDIM-50"][metric]) if name != "DDIM-50" else None
            rows.append((name, metric, m, lo, hi, None if t is None else t.p))
    return rows, len(idx), str(model_dir)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--size", type=int, default=None, help="image side (default: 256 on CUDA, 64 on CPU)")
    p.add_argument("--preset", default="efficient", help="difflung's UNet preset")
    p.add_argument("--batch", type=int, default=None, help="training batch (default: 16 on CUDA, 4 on CPU)")
    p.add_argument("--train-steps", type=int, default=None, help="timed training steps + 1 (default: 30 CUDA, 4 CPU)")
    p.add_argument("--images", type=int, default=None, help="images per sampling timing (default: 16 CUDA, 2 CPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile difflung's training (CUDA)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads in every process")
    p.add_argument("--model", type=Path, default=ROOT / "runs/smoke/03_cbmat_training/model",
                   help="trained model for the sampler-quality comparison (skipped when missing)")
    p.add_argument("--quality-slices", type=int, default=16)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/bench_diffusion.json")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        print(json.dumps(train_worker(json.loads(a.worker))))
        return 0

    from difflung.diffusion import build_unet, sampling_gflops
    from difflung.core.provenance import device_description, provenance, write_json_atomic

    if a.threads:
        torch.set_num_threads(a.threads)
    cuda = torch.cuda.is_available() and a.device != "cpu"
    if a.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device")
    dev = "cuda" if cuda else "cpu"
    size = a.size or (256 if cuda else 64)
    batch = a.batch or (16 if cuda else 4)
    steps = a.train_steps or (30 if cuda else 4)
    n_img = a.images or (16 if cuda else 2)
    where = device_description(dev)
    print(f"device: {where}; size {size}x{size}; difflung preset {a.preset!r}")
    if not cuda:
        print("NOTE: no GPU -- measured on the CPU at a smaller size than the targets' 256x256 on one GPU; bf16, "
              "channels_last and torch.compile are GPU paths, so these ratios reflect the architecture only.")

    base = {"size": size, "steps": steps, "batch": batch, "device": dev, "threads": a.threads}
    train_specs = {
        "reference": dict(base, preset="paper", mask_mode="single", mixed_precision="no", channels_last=False,
                          compile=False),
        "difflung": dict(base, preset=a.preset, mask_mode="onehot", mixed_precision="auto", channels_last=True,
                         compile=a.compile),
    }
    if cuda:
        train_specs["paper+exec"] = dict(base, preset="paper", mask_mode="onehot", mixed_precision="auto",
                                         channels_last=True, compile=a.compile)
    train = {}
    for name, spec in train_specs.items():
        t0 = time.perf_counter()
        train[name] = measure_training(spec)
        print(f"  train {name:10s} {train[name]['images_per_s']:8.2f} images/s  peak "
              f"{train[name]['peak_mem_bytes'] / 2**20:8.0f} MiB  ({time.perf_counter() - t0:.0f} s)")

    ours, ours_meta = model_for(a.preset, "onehot", size, dev)
    ref, ref_meta = model_for("paper", "single", size, dev)
    runs = [("difflung", ours, ours_meta, "ddim", 50, n_img), ("difflung", ours, ours_meta, "dpm", 20, n_img),
            ("difflung", ours, ours_meta, "ddpm", 1000, max(1, n_img // 8)),
            ("reference", ref, ref_meta, "ddim", 50, max(1, n_img // 2))]
    samp = []
    for name, unet, meta, sampler, k, n in runs:
        s = time_sampling(unet, meta, sampler, k, n, batch, dev)
        g = sampling_gflops(unet, meta, sampler, k, size)
        samp.append({"model": name, "sampler": sampler, "steps": k, "images": n, "s_per_image": s, "gflops_per_image": g})
        print(f"  sample {name:10s} {sampler}-{k:<5d} {s:8.3f} s/image  {g:9.1f} GFLOP/image  ({n} images)")
    with torch.device("meta"):  # the 256-px model's config (attention sits at 16x16), counted without compute
        ours256 = build_unet(N_CLASSES, 256, "onehot", a.preset)
    g256 = sampling_gflops(ours256, dict(ours_meta, sample_size=256), "dpm", 20)
    del ours, ref

    quality = None
    if a.model.is_dir():
        rows, n_q, src = sampler_quality(a.model, a.quality_slices, dev)
        quality = {"model": src, "test_slices": n_q,
                   "rows": [dict(zip(("sampler", "metric", "mean", "lo", "hi", "p_vs_ddim50"), r)) for r in rows]}

    # ratios
    r_train = train["difflung"]["images_per_s"] / train["reference"]["images_per_s"]
    r_mem = train["difflung"]["peak_mem_bytes"] / train["reference"]["peak_mem_bytes"]
    ref_s = next(r for r in samp if r["model"] == "reference")
    dpm = next(r for r in samp if r["model"] == "difflung" and r["sampler"] == "dpm")
    print("\nratios (difflung / reference)")
    if cuda and size == 256:
        verdict = f"target >= 3x: {'met' if r_train >= 3 else 'NOT met'}"
    else:
        verdict = f"on {dev.upper()} at {size} px; the target (>= 3x on one GPU at 256 px) is not measured by this run"
    print(f"  training images/s        {r_train:6.2f}x   {verdict}")
    if cuda:
        r_exec = train["paper+exec"]["images_per_s"] / train["reference"]["images_per_s"]
        print(f"  of which execution only  {r_exec:6.2f}x   (paper UNet with bf16/channels_last/compile)")
    print(f"  training peak memory     {r_mem:6.2f}x")
    print(f"  sampling s/image         {ref_s['s_per_image'] / dpm['s_per_image']:6.1f}x faster  "
          f"(reference DDIM-50 vs difflung DPM-Solver++-20)")
    print(f"  sampling GFLOPs/image    {dpm['gflops_per_image']:.1f} vs {ref_s['gflops_per_image']:.1f}   "
          f"({ref_s['gflops_per_image'] / dpm['gflops_per_image']:.0f}x fewer)")
    print(f"  at 256x256: difflung DPM-Solver++-20 = {g256:.1f} GFLOPs/image, target <= 200: "
          f"{'met' if g256 <= 200 else 'NOT met'} (counted, device-independent)")
    if quality:
        print(f"\nsampler quality on {quality['model']} ({quality['test_slices']} test slices, mean [95% CI], "
              f"Wilcoxon p vs DDIM-50)")
        for r in quality["rows"]:
            p_txt = "" if r["p_vs_ddim50"] is None else f"  p = {r['p_vs_ddim50']:.3f}"
            print(f"  {r['sampler']:16s} {r['metric']:5s} {r['mean']:7.3f} [{r['lo']:.3f}, {r['hi']:.3f}]{p_txt}")
    else:
        print(f"\nsampler quality: skipped ({a.model} has no trained model; run chapter 3 or pass --model)")
    write_json_atomic(a.out, {"device": where, "cuda": cuda, "size": size, "training": train, "sampling": samp,
                              "ratios": {"training_images_per_s": r_train, "training_peak_mem": r_mem,
                                         "sampling_s_per_image": ref_s["s_per_image"] / dpm["s_per_image"]},
                              "gflops_dpm20_at_256": g256, "quality": quality,
                              "provenance": provenance(config=vars(a) | {"model": str(a.model), "out": str(a.out)},
                                                       device=dev)})
    print(f"\nwritten {a.out.relative_to(ROOT) if a.out.is_relative_to(ROOT) else a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
