"""`python -m difflung run`: execute the book's notebooks for a profile with papermill (`difflung.run.pipeline`)."""
from __future__ import annotations

import sys
from pathlib import Path


def configure_parser(p) -> None:
    p.add_argument("--profile", default="smoke", help="profiles/<name>.yml (smoke, standard, paper)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a profile parameter (common key, NOTEBOOK.key, or a notebook key); repeatable")
    p.add_argument("--force", action="store_true", help="re-run notebooks even if their inputs are unchanged")
    p.add_argument("--only", action="append", metavar="NOTEBOOK", help="run only this notebook (repeatable)")
    p.add_argument("--part", help="run one part of the profile (its `parts:`), after the earlier chapters it needs "
                                  "when they are missing or stale")
    p.add_argument("--runs-dir", default="runs", help="parent folder of the run's artifacts (default runs/)")
    p.add_argument("--notebooks-out", default=None,
                   help="where executed notebooks go (default book/chapters/, where the book renders them)")


def terminal_log(line: str) -> None:
    """One terminal line per notebook: the start line is completed in place by its outcome."""
    if line.startswith("[ run  ]"):
        print(line, end="", flush=True)
    elif line.startswith("[  ok  ]"):
        print("\r" + line, flush=True)
    else:
        print(line, flush=True)


def run_cli(args) -> int:
    from difflung.run import profiles as P
    from difflung.run.pipeline import PipelineError, run

    try:
        run(args.profile, args.overrides, force=args.force, only=args.only, runs_dir=args.runs_dir, part=args.part,
            out_dir=Path(args.notebooks_out) if args.notebooks_out else None, log=terminal_log)
    except (PipelineError, P.ProfileError) as e:
        print(flush=True)  # end a "[ run  ]" line left open
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0
