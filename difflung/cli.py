"""`python -m difflung COMMAND`: each command lives in its own module, which defines
`configure_parser(parser)` and `run_cli(args) -> int` (exit status)."""
from __future__ import annotations

import argparse
import importlib
import sys

# command -> (module, one-line help). Modules import heavy dependencies inside run_cli.
COMMANDS = {
    "run": ("difflung.pipeline", "execute the book's notebooks for a profile with papermill"),
    "fetch-data": ("difflung.realdata", "fetch the real chest CT (pyradiomics 3.0.1 lung1/lung2) into a local cache"),
    "prepare": ("difflung.prepare", "turn CT volumes (NIfTI/NRRD/MHA/DICOM) into a difflung dataset artifact"),
    "train": ("difflung.train_cli", "train a mask-guided diffusion model (use under `accelerate launch` for GPUs)"),
    "insert": ("difflung.insert", "insert lesions into a real CT, every voxel outside the edit region kept exact"),
    "export-nnunet": ("difflung.nnunet", "write real + synthetic training data in nnU-Net v2 raw layout"),
    "check-book": ("difflung.bookcheck", "check the built book: pages, figures, tables, no tracebacks"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m difflung", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module, help_) in COMMANDS.items():
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name == module:  # command not built yet
                continue
            raise
        p = sub.add_parser(name, help=help_, description=help_)
        mod.configure_parser(p)
        p.set_defaults(_run=mod.run_cli)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
