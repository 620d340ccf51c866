"""`python -m difflung archive`: keep a finished run's numbers in reference/<profile>/ (`difflung.run.archive`)."""
from __future__ import annotations

import json
import sys


def configure_parser(p) -> None:
    from difflung.core.provenance import REPO_ROOT

    p.add_argument("--profile", required=True, help="the finished run to archive (runs/<profile>/)")
    p.add_argument("--runs-dir", default=str(REPO_ROOT / "runs"), help="parent folder of runs (default runs/)")
    p.add_argument("--out", default=str(REPO_ROOT / "reference"), help="parent folder of archives (reference/)")
    p.add_argument("--note", help="how the run was made, shown beside its label (e.g. that it was resumed)")
    p.add_argument("--part", help="archive one part of the run (`run --part`); the other parts' chapters stay")


def run_cli(args) -> int:
    from difflung.run.archive import ARCHIVE_FILE, ArchiveError, archive_run

    try:
        dest = archive_run(args.profile, runs_dir=args.runs_dir, out_dir=args.out, note=args.note,
                           part=args.part)
    except ArchiveError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    meta = json.loads((dest / ARCHIVE_FILE).read_text())
    print(f"archive: {len(meta['files'])} files, {meta['bytes'] / 1024:.0f} kB into {dest}")
    return 0
