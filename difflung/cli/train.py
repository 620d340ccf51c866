"""`python -m difflung train`: train one mask-guided diffusion model on a dataset artifact.

This is the entry point for several GPUs: `accelerate launch --num_processes 4 -m difflung train ...`.
A finished model with the same configuration and data in `--out` is reused, and an interrupted run resumes from
its last checkpoint, so the chapters of a run pick up a model trained here when their parameters match.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict, fields


def configure_parser(p) -> None:
    from difflung.diffusion.train import TrainConfig

    p.add_argument("--dataset", required=True, help="dataset artifact folder (manifest.json)")
    p.add_argument("--out", required=True, help="model folder (save_pretrained layout + difflung_config.json)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    defaults = TrainConfig()
    for f in fields(TrainConfig):
        default = getattr(defaults, f.name)
        flag = "--" + f.name.replace("_", "-")
        if isinstance(default, bool):
            p.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=default, metavar="BOOL")
        elif f.name in ("warmup", "ema_decay", "snr_gamma"):
            cast = int if f.name == "warmup" else float
            p.add_argument(flag, type=lambda s, c=cast: None if s.lower() == "none" else c(s), default=default)
        elif f.name == "lesion_classes":  # comma-separated project ids
            p.add_argument(flag, type=lambda s: tuple(int(c) for c in s.split(",") if c), default=default,
                           metavar="IDS")
        else:
            p.add_argument(flag, type=type(default), default=default)


def run_cli(args) -> int:
    from difflung.data.dataset import Dataset, DatasetError
    from difflung.diffusion.train import TrainConfig, train_diffusion

    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    try:
        result = train_diffusion(Dataset(args.dataset), cfg, args.out, device=args.device)
    except (FileNotFoundError, DatasetError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps({k: str(v) if not isinstance(v, (int, float, bool)) else v
                      for k, v in asdict(result).items()}, indent=2))
    return 0
