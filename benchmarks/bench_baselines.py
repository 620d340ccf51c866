"""Cost of the GAN baseline generators: parameters, GFLOPs per image and seconds per image.

For each registered generator size (default: L, the original widths) at 64x64 and 256x256 with the phantom's
7 mask classes, on the device given (default CPU: the numbers here are CPU numbers unless --device cuda).
GFLOPs count a multiply-add as 2 (torch.utils.flop_counter); s/image is the median of `--repeats` timed runs
of `--images` images in batches of `--batch`, after one warm-up batch. Ratios are against Pix2Pix of the same
size and image size, measured in the same run.

    .venv/bin/python benchmarks/bench_baselines.py                      # L at 64 and 256, CPU
    .venv/bin/python benchmarks/bench_baselines.py --sizes S B L --image-sizes 64
Writes benchmarks/results/bench_baselines.json (with provenance) and prints a table.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from difflung.baselines import build_models, model_config, one_hot, rng_scope
from difflung.judging.cost import count_params, gflops_per_call, time_per_image  # noqa: E402
from difflung.labels import PHANTOM_IDS  # noqa: E402
from difflung.core.provenance import device_description, provenance, write_json_atomic  # noqa: E402

# poster, for orientation only (its device and image size are not stated)
REPORTED = {"pix2pix": (15, 0.18), "spade": (25, 0.37)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["L"], choices=["T", "S", "B", "L"])
    ap.add_argument("--image-sizes", nargs="+", type=int, default=[64, 256])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--images", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "bench_baselines.json"))
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    classes = list(PHANTOM_IDS)
    rows = []
    for s in args.image_sizes:
        for size in args.sizes:
            for kind in ("pix2pix", "spade"):
                cfg = model_config(f"{kind}-{size}", s, classes)
                with rng_scope(torch.Generator().manual_seed(0)):
                    G, _ = build_models(cfg)
                G = G.to(device).eval()
                mask = one_hot(torch.zeros(args.batch, s, s, dtype=torch.uint8), classes, device)

                @torch.no_grad()
                def run(b, G=G, mask=mask):
                    return G(mask[:b])

                rows.append({"model": cfg["name"], "kind": kind, "size": size, "image_size": s,
                             "params_M": count_params(G) / 1e6,
                             "gflops_per_image": gflops_per_call(G, mask[:1]),
                             "s_per_image": time_per_image(run, args.images, args.batch, device, args.repeats)})
                print(f"  measured {cfg['name']} at {s}x{s}", file=sys.stderr, flush=True)
    ref = {(r["size"], r["image_size"]): r for r in rows if r["kind"] == "pix2pix"}
    print(f"device: {device_description(device)}; batch {args.batch}; {args.images} images x {args.repeats} repeats")
    print(f"{'model':<11}{'image':>6}{'params M':>10}{'GFLOPs':>10}{'s/img':>9}{'GFLOPs x':>10}{'time x':>8}")
    for r in rows:
        p = ref[(r["size"], r["image_size"])]
        r["gflops_ratio_vs_pix2pix"] = r["gflops_per_image"] / p["gflops_per_image"]
        r["time_ratio_vs_pix2pix"] = r["s_per_image"] / p["s_per_image"]
        print(f"{r['model']:<11}{r['image_size']:>6}{r['params_M']:>10.2f}{r['gflops_per_image']:>10.2f}"
              f"{r['s_per_image']:>9.4f}{r['gflops_ratio_vs_pix2pix']:>10.2f}{r['time_ratio_vs_pix2pix']:>8.2f}")
    print("reported (poster, device/size not stated): Pix2Pix 15 GFLOPs 0.18 s, SPADE 25 GFLOPs 0.37 s "
          f"(SPADE/Pix2Pix: {25 / 15:.2f}x GFLOPs, {0.37 / 0.18:.2f}x time)")
    write_json_atomic(args.out, {"rows": rows, "provenance": provenance(config=vars(args), device=device)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
