"""`python -m difflung check-book`: check the built book's pages, figures and tables (`difflung.run.bookcheck`)."""
from __future__ import annotations

import sys
from pathlib import Path


def configure_parser(p) -> None:
    from difflung.core.provenance import REPO_ROOT

    p.add_argument("--html", default=str(REPO_ROOT / "book/_build/html"))
    p.add_argument("--profile", default="smoke", help="run whose figures the pages must show")


def run_cli(args) -> int:
    from difflung.core.provenance import REPO_ROOT
    from difflung.run.bookcheck import check_site
    from difflung.run.pipeline import toc_chapters

    problems = check_site(args.html, toc_chapters(), REPO_ROOT / "runs" / args.profile)
    for p in problems:
        print(f"check-book: {p}", file=sys.stderr)
    n = len(list(Path(args.html).rglob("*.html")))
    print(f"check-book: {n} pages, {len(problems)} problems")
    return 1 if problems else 0
