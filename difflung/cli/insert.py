"""`python -m difflung insert`: insert lesions into a real CT, every voxel outside the edit region kept exact.

    python -m difflung insert CT --lesion-mask MASK.nii.gz --model DIR --out OUT.nii.gz
    python -m difflung insert CT --synthesize emphysema --target-ml 50 --model DIR --out OUT.nii.gz

The arguments only; what insertion does, what it writes and what it refuses: `difflung.insertion.insert`.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

SAMPLER_OPTIONS = ("steps", "jump_length", "jump_n_sample", "eta", "margin_mm", "batch_size", "spacing_mm", "seed",
                   "z_guide", "z_rho")


def configure_parser(p) -> None:
    import argparse

    from difflung.insertion import InsertConfig

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "\n".join(__doc__.splitlines()[2:4])
    d = InsertConfig()
    p.add_argument("ct", type=Path, help="CT volume (.nii.gz/.nii/.nrrd/.mha/.mhd) or DICOM series folder")
    p.add_argument("--model", type=Path, required=True,
                   help="patch model folder (difflung.diffusion.patch_model.train_patch_model)")
    p.add_argument("--out", type=Path, required=True, help="edited CT to write; OUT_lesions is written beside it")
    p.add_argument("--lesion-mask", type=Path, default=None, help="lesion label file (project class ids)")
    p.add_argument("--lesion-class", default=None, help="class for every non-zero voxel of --lesion-mask")
    p.add_argument("--synthesize", default=None, metavar="CLASS", help="place lesions of this class in healthy lung")
    p.add_argument("--target-ml", type=float, default=None, help="total lesion volume for --synthesize (ml)")
    helps = {"steps": "RePaint reverse steps", "jump_length": "RePaint jump length j",
             "jump_n_sample": "RePaint resamplings r (1: none)", "eta": "0 DDIM, 1 DDPM steps",
             "margin_mm": "in-plane dilation of lesions into the edit region", "batch_size": "windows per UNet batch",
             "spacing_mm": "patch spacing the model must have", "seed": "sampler/synthesis seed",
             "z_guide": "share of the noisiest steps guided by the slice below (0: slices painted independently)",
             "z_rho": "correlation of adjacent slices' initial noise"}
    for name in SAMPLER_OPTIONS:
        v = getattr(d, name)
        p.add_argument("--" + name.replace("_", "-"), type=type(v), default=v, help=f"{helps[name]} (default {v})")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")


def run_cli(args) -> int:
    from difflung.data.dataset import DatasetError
    from difflung.insertion import InsertConfig, insert_lesions

    cfg = InsertConfig(**{k: getattr(args, k) for k in SAMPLER_OPTIONS})
    try:
        summary = insert_lesions(args.ct, args.out, args.model, lesion_mask=args.lesion_mask,
                                 lesion_class=args.lesion_class, synthesize=args.synthesize,
                                 target_ml=args.target_ml, config=cfg, device=args.device, progress=True)
    except (DatasetError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0
