"""`python -m difflung fetch-data`: fetch the real chest CT (pyradiomics 3.0.1 lung1/lung2) into a local cache
(`difflung.data.realdata`)."""
from __future__ import annotations

import sys
from pathlib import Path


def configure_parser(p) -> None:
    from difflung.data.realdata import SDIST, default_cache_dir

    p.add_argument("--cache", type=Path, default=None, help=f"cache folder (default {default_cache_dir()})")
    p.add_argument("--archive", type=Path, default=None, help=f"use this {SDIST} instead of downloading it")
    p.add_argument("--force", action="store_true", help="extract again even if the cache verifies")


def run_cli(args) -> int:
    from difflung.data.realdata import CREDIT, RealDataError, fetch_pyradiomics

    try:
        paths = fetch_pyradiomics(args.cache, archive=args.archive, force=args.force)
    except RealDataError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for k, p in paths.items():
        print(f"{k}: {p}")
    print(CREDIT)
    return 0
