"""`python -m difflung export-nnunet`: real (+ synthetic) training slices in nnU-Net v2 raw layout
(`difflung.data.nnunet`)."""
from __future__ import annotations

import json
import sys


def configure_parser(p) -> None:
    p.add_argument("--dataset", required=True, help="difflung dataset artifact folder (manifest.json + splits)")
    p.add_argument("--splits", nargs="+", default=["train"], help="splits to export as real cases (default: train)")
    p.add_argument("--synthetic", help=".npz with images (N,S,S) in [-1,1] and labels (N,S,S) project ids, or a "
                                       "folder written by `python -m difflung generate` (its own pixel spacing)")
    p.add_argument("--out", required=True, help="nnUNet_raw folder to write into")
    p.add_argument("--id", type=int, required=True, dest="dataset_id", help="nnU-Net dataset id (1..999)")
    p.add_argument("--name", required=True, help="dataset name (letters, digits, '-', '_')")
    p.add_argument("--spacing", type=float, nargs=2, default=(1.0, 1.0), metavar=("ROW_MM", "COL_MM"),
                   help="in-plane pixel spacing in mm (default 1 1)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset folder")


def run_cli(args) -> int:
    from pathlib import Path

    import numpy as np

    from difflung import labels as L
    from difflung.data.dataset import Dataset, DatasetError
    from difflung.data.nnunet import ExportError, export_nnunet, load_generated, load_synthetic_npz

    try:
        ds = Dataset(args.dataset)
        parts = [ds.split(s) for s in args.splits]
        real = (np.concatenate([s.images for s in parts]), np.concatenate([s.labels for s in parts]),
                np.concatenate([s.patient for s in parts]))
        synthetic, syn_spacing = None, None
        if args.synthetic and Path(args.synthetic).is_dir():
            *synthetic, syn_spacing = load_generated(args.synthetic)
        elif args.synthetic:
            synthetic = load_synthetic_npz(args.synthetic)
        extra = {int(v) for v in np.unique(synthetic[1])} & set(L.BY_ID) if synthetic is not None else set()
        classes = sorted(set(ds.classes) | extra)
        folder = export_nnunet(args.out, args.dataset_id, args.name, real, synthetic, classes,
                               spacing=tuple(args.spacing), overwrite=args.overwrite, source=str(args.dataset),
                               synthetic_spacing=syn_spacing)
    except (ExportError, DatasetError, FileNotFoundError, ValueError) as e:
        msg = str(e)
        if args.synthetic and msg.startswith("synthetic:"):
            msg = f"{args.synthetic}: {msg.removeprefix('synthetic:').strip()}"
        print(f"error: {msg}", file=sys.stderr)
        return 1
    meta = json.loads((folder / "dataset.json").read_text())
    print(json.dumps({"folder": str(folder), "numTraining": meta["numTraining"], "labels": meta["labels"],
                      "n_real": meta["difflung"]["n_real"], "n_synthetic": meta["difflung"]["n_synthetic"]},
                     indent=2))
    return 0
