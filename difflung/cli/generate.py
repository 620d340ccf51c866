"""`python -m difflung generate`: a synthetic training set from a trained Diff-Lung model, as NIfTI image/label
pairs plus generated.json (`difflung.augment.synthetic_set`); `export-nnunet --synthetic DIR` reads the folder."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def configure_parser(p) -> None:
    p.add_argument("--model", type=Path, required=True,
                   help="trained Diff-Lung folder (written by `python -m difflung train`)")
    p.add_argument("--dataset", type=Path, required=True, help="the dataset artifact the model was trained on")
    p.add_argument("--split", default="train",
                   help="split whose masks are painted, or new masks are built on with --synthesize (default train)")
    p.add_argument("--synthesize", type=int, default=None, metavar="N",
                   help="paint N new masks with the rare classes boosted (chapter 5's mask synthesis) instead")
    p.add_argument("--boost", type=float, default=0.15,
                   help="with --synthesize: target share of the lung field per boosted class (default 0.15)")
    p.add_argument("--boost-classes", type=lambda s: [c for c in s.split(",") if c], default=None, metavar="NAMES",
                   help="with --synthesize: comma-separated classes to boost (default: the dataset's rare classes)")
    p.add_argument("--sampler", default="dpm", help="ddim, dpm, dpm-sde or ddpm (default dpm)")
    p.add_argument("--steps", type=int, default=None, help="sampler steps (default: the sampler's own)")
    p.add_argument("--seed", type=int, default=0, help="image i uses torch seed SEED + i; masks use SEED (default 0)")
    p.add_argument("--batch-size", type=int, default=16, help="masks per forward batch (default 16)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--out", type=Path, required=True, help="folder to write (images/, labels/, generated.json)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing folder")


def run_cli(args) -> int:
    from difflung.augment.synthetic_set import generate_set

    try:
        meta = generate_set(args.model, args.dataset, args.out, split=args.split, synthesize=args.synthesize,
                            boost=args.boost, boost_classes=args.boost_classes, sampler=args.sampler,
                            steps=args.steps, seed=args.seed, batch_size=args.batch_size, device=args.device,
                            overwrite=args.overwrite, progress=True)
    except (FileNotFoundError, ValueError) as e:  # DatasetError, ModelLoadError, GenerateError are ValueErrors
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({"out": str(args.out), "n": meta["n"], "masks": meta["masks"], "sampler": meta["sampler"],
                      "steps": meta["steps"], "pixel_counts": meta["pixel_counts"], "seconds": meta["seconds"]},
                     indent=2))
    return 0
