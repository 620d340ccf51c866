"""`python -m difflung prepare INPUT --out DIR`: CT volumes -> a dataset artifact (`difflung.data.prepare`)."""
from __future__ import annotations

import json
import sys
from pathlib import Path


def configure_parser(p) -> None:
    import argparse

    from difflung.data import prepare as lib

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = lib.__doc__[lib.__doc__.index("INPUT is one of"):]
    p.add_argument("input", nargs="+", type=Path,
                   help="volume file, DICOM series folder, or folder of cases (see `difflung.data.prepare`)")
    p.add_argument("--out", type=Path, required=True, help="dataset folder to write")
    p.add_argument("--labels", type=Path, default=None, help="label file of a single input volume")
    p.add_argument("--classes", default=None,
                   help="class map YAML (label value -> project class), or one class name, e.g. nodule")
    p.add_argument("--lung-mask", type=Path, default=None,
                   help="lung mask of a single input volume from a segmentation tool (TotalSegmentator, lungmask), "
                        "used instead of the classical lung segmentation")
    p.add_argument("--lung-mask-classes", default=None, metavar="MAP",
                   help="class map of the lung mask's values (examples/classmaps/lungmask_r231.yml, "
                        "totalsegmentator_total_lungs.yml); default: every non-zero value is lung")
    p.add_argument("--size", type=int, default=128, help="slice size S (default 128)")
    p.add_argument("--seed", type=int, default=0, help="patient split seed (default 0)")
    p.add_argument("--min-lung-fraction", type=float, default=0.01,
                   help="keep slices with at least this lung-field fraction (default 0.01)")


def run_cli(args) -> int:
    from difflung.data.dataset import DatasetError
    from difflung.data.prepare import prepare

    try:
        _, summary = prepare(args.input, args.out, labels=args.labels, classes=args.classes, size=args.size,
                             seed=args.seed, min_lung_fraction=args.min_lung_fraction, lung_mask=args.lung_mask,
                             lung_classes=args.lung_mask_classes, progress=True)
    except (DatasetError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0
