"""Lesion insertion against ground truth: held-out phantom patients rendered with and without their lesions.

    .venv/bin/python benchmarks/bench_insert_truth.py                       # smoke: untrained 16 px model, ~1-2 min
    .venv/bin/python benchmarks/bench_insert_truth.py --train-steps 300     # a briefly trained model
    .venv/bin/python benchmarks/bench_insert_truth.py --model runs/.../model --size 350 --patch 64  # a real one

For each lesion class, one held-out phantom patient with that class (patients drawn from streams no training
patient uses) is rendered with and without its lesions (`difflung.insertion.truth.phantom_truth_case`: same
anatomy, vessels and noise), cut to the `--slices` thin slices holding most of the class, and the truth's lesion
labels are painted into the lesion-free render three times with one seed: z-continuous (the default
`InsertConfig`), slices independent (z_guide = z_rho = 0), and null (the region repainted with no lesion label).
Inside the lesions the table compares inserted against rendered truth: HU W1, mean HU, LAA-950 (% below -950 HU),
texture spread, z-continuity (also of the independent painting and, when a real scan is at hand, of its healthy
lung at its own spacing), and the seam score of the insertion, of the null insertion (its reference) and of the
truth render (the natural lesion edge). With an untrained model the HU numbers only show that the comparison
runs; they mean something with a trained one. Writes benchmarks/results/bench_insert_truth.json.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from difflung import labels as L  # noqa: E402
from difflung.core.provenance import provenance, write_json_atomic  # noqa: E402
from difflung.insertion import checks as C  # noqa: E402
from difflung.insertion.painting import InsertConfig  # noqa: E402
from difflung.insertion.truth import (crop_z, densest_slab, insert_into_case, phantom_truth_case,  # noqa: E402
                                     truth_table)

CLASSES = [L.BACKGROUND, L.BODY, L.LUNG, L.AIRWAY, L.EMPHYSEMA, L.GGO, L.FIBROSIS]
LESIONS = (L.EMPHYSEMA, L.GGO, L.FIBROSIS)
HELD_OUT = 10_000  # patient streams child_rng(seed + HELD_OUT, i): none of the training patients' streams


def phantom_config(cls: int, size: int, thickness: float, fraction: float, slices: int):
    from difflung.phantom import PhantomConfig

    knobs = {L.BY_ID[c].name: (fraction if c == cls else 0.0) for c in LESIONS}
    return PhantomConfig(size=size, fov_mm=350.0, slices_per_patient=slices, slice_thickness_mm=thickness, **knobs)


def held_out_case(cls: int, args, max_tries: int = 40):
    """The first held-out patient whose thin slices hold class `cls`, cut to the densest `args.slices`."""
    from difflung.phantom.config import child_rng

    n_all = int(np.ceil(300.0 / args.thickness))  # covers any patient's lungs
    cfg = phantom_config(cls, args.size, args.thickness, args.fraction, n_all)
    for i in range(max_tries):
        case = phantom_truth_case(f"truth-{L.BY_ID[cls].name}{i}", child_rng(args.seed + HELD_OUT, cls, i), cfg)
        if (case.lesions == cls).sum() >= 50:
            return crop_z(case, *densest_slab(case.lesions == cls, args.slices))
    raise RuntimeError(f"no held-out patient with {L.BY_ID[cls].name} in {max_tries} draws")


def model_dir(args, px: float, work: Path) -> Path:
    """--model, or a tiny model at the phantom's pixel size: untrained, or trained --train-steps on phantom patches."""
    from difflung.diffusion.patch_model import save_untrained_model, train_patch_model

    if args.model is not None:
        return args.model
    if (work / "model" / "difflung_config.json").is_file():  # --work: trained by an earlier run
        return work / "model"
    if not args.train_steps:
        return save_untrained_model(work / "model", CLASSES, args.patch, spacing_mm=px, seed=args.seed)
    from difflung.diffusion.recipes import recipe_config
    from difflung.insertion.patches import build_patch_dataset, pathology_volumes

    rng = np.random.default_rng(args.seed)
    phantom = pathology_volumes(LESIONS, 2, rng, slices_per_patient=8, fraction=args.fraction, out_mm=px)
    ds = build_patch_dataset(work / "patches", phantom, size=args.patch, rng=rng, per_slice=4, out_mm=px,
                             seed=args.seed)
    cfg = recipe_config("difflung", preset="tiny", steps=args.train_steps, batch_size=16, seed=args.seed)
    train_patch_model(ds, cfg, work / "model", "cpu", progress=False)
    return work / "model"


def real_lung_z_continuity(path) -> float:
    """`checks.z_continuity` of a real scan's healthy lung at its own spacing (NaN without the file)."""
    if path is None or not Path(path).exists():
        return float("nan")
    from difflung.data.ct_anatomy import segment
    from difflung.data.ctio import read_volume

    vol = read_volume(path)
    return C.z_continuity(vol.hu, segment(vol.hu, vol.spacing).labels() == L.LUNG, vol.spacing)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=96, help="phantom pixels per side over 350 mm (96: 3.6 mm)")
    p.add_argument("--thickness", type=float, default=3.0, help="phantom slice spacing, mm")
    p.add_argument("--slices", type=int, default=12, help="slices of each patient kept (the densest in the class)")
    p.add_argument("--fraction", type=float, default=0.08, help="the class's phantom knob")
    p.add_argument("--patch", type=int, default=16, help="patch side of the tiny model")
    p.add_argument("--train-steps", type=int, default=0, help="0: an untrained model")
    p.add_argument("--model", type=Path, default=None, help="a patch model at the phantom's pixel size instead")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--jump-length", type=int, default=5)
    p.add_argument("--jump-n-sample", type=int, default=1)
    p.add_argument("--z-guide", type=float, default=InsertConfig.z_guide)
    p.add_argument("--z-rho", type=float, default=InsertConfig.z_rho)
    p.add_argument("--work", type=Path, default=None, help="keep the tiny model here (reused when present)")
    p.add_argument("--real", type=Path, default=None, help="a real CT for the real-lung z-continuity")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/bench_insert_truth.json")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    from difflung.diffusion.train import load_model

    t0 = time.perf_counter()
    px = 350.0 / args.size
    cfg = InsertConfig(steps=args.steps, jump_length=args.jump_length, jump_n_sample=args.jump_n_sample,
                       batch_size=64, spacing_mm=px, seed=args.seed, z_guide=args.z_guide, z_rho=args.z_rho)
    flat = replace(cfg, z_guide=0.0, z_rho=0.0)
    tables = []
    with tempfile.TemporaryDirectory() as tmp:
        unet, meta = load_model(model_dir(args, px, args.work or Path(tmp)), device="cpu")
        for cls in LESIONS:
            case = held_out_case(cls, args)
            gen = lambda: torch.Generator().manual_seed(args.seed)  # noqa: E731  one seed for all three
            inserted, region = insert_into_case(case, unet, meta, cfg, gen())
            independent, _ = insert_into_case(case, unet, meta, flat, gen())
            null, _ = insert_into_case(case, unet, meta, cfg, gen(), null=True)
            outside = int((inserted[~region] != case.base.hu[~region]).sum())
            t = truth_table(case, inserted, null, region, margin_mm=cfg.margin_mm).loc[[L.BY_ID[cls].name]]
            t["zcont_independent"] = C.z_continuity(independent, case.lesions == cls, case.base.spacing)
            t["outside_differences"] = outside
            t["patient"] = case.truth.patient
            tables.append(t)
    table = pd.concat(tables)
    real = real_lung_z_continuity(args.real)
    seconds = time.perf_counter() - t0
    pd.set_option("display.width", 200)
    print(f"phantom {args.size} px ({px:.2f} mm), {args.thickness:g} mm slices, {args.slices} slices per patient; "
          f"model {'trained ' + str(args.train_steps) + ' steps' if args.train_steps else args.model or 'untrained'} "
          f"({args.patch} px); z_guide {cfg.z_guide:g}, z_rho {cfg.z_rho:g}")
    print(table.drop(columns="patient").T.to_string(float_format=lambda v: f"{v:.3g}"))
    print(f"real lung z-continuity: {real:.3g}" + ("" if args.real else " (no --real scan)"))
    print(f"{seconds:.0f} s")
    write_json_atomic(args.out, {"table": table.reset_index().to_dict(orient="records"), "real_lung_zcont": real,
                                 "args": {k: str(v) for k, v in vars(args).items()}, "seconds": seconds,
                                 "provenance": provenance()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
