"""`python -m difflung reader-study`: build a reader study (visual Turing test) or score its answers.

Build:  python -m difflung reader-study --real DIR --synthetic DIR --out study.html [--window lung] [--size 256]
        writes study.html (offline, self-contained) and key.json beside it (or --key); give readers the page only.
Score:  python -m difflung reader-study --score answers.csv [more.csv ...] --key key.json [--out scores.csv]
        prints accuracy with exact binomial 95 % intervals, overall, per truth, per class and per reader.
"""
from __future__ import annotations

import sys
from pathlib import Path


def configure_parser(p) -> None:
    import argparse

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "\n".join(__doc__.splitlines()[2:7])
    p.add_argument("--real", type=Path, help="folder of real images (volumes, .npy in HU, .png); subfolder = class")
    p.add_argument("--synthetic", type=Path, help="folder of synthetic images, laid out like --real")
    p.add_argument("--out", type=Path, help="build: the study page (.html); score: optional CSV of the table")
    p.add_argument("--key", type=Path, default=None, help="the key file (build: default key.json beside --out)")
    p.add_argument("--window", default="lung", help="lung (W1500/L-600), mediastinum (W400/L40) or WIDTH,LEVEL HU")
    p.add_argument("--size", type=int, default=256, help="tile side in pixels (tiles padded to squares)")
    p.add_argument("--per-volume", type=int, default=3, help="axial slices per 3D volume (central half)")
    p.add_argument("--seed", type=int, default=0, help="seeds the shuffle")
    p.add_argument("--title", default="CT reader study", help="page heading")
    p.add_argument("--score", type=Path, nargs="+", default=None, metavar="ANSWERS",
                   help="score these exported answer CSVs against --key instead of building")


def run_cli(args) -> int:
    from difflung.judging.reader_study import (ReaderStudyError, build_study, format_table, parse_window,
                                               score_answers, write_scores)

    try:
        if args.score is not None:
            if args.real is not None or args.synthetic is not None:
                raise ReaderStudyError("--score scores answers; --real/--synthetic build a study: give one or other")
            if args.key is None:
                raise ReaderStudyError("--score needs --key key.json (the key written with the study page)")
            rows, info = score_answers(args.score, args.key)
            print(f"study {info['study']}: {info['answers']} answers from {len(info['readers'])} reader(s) "
                  f"on {info['tiles']} tiles")
            print(format_table(rows))
            short = {r: n for r, n in info["unanswered"].items() if n}
            if short:
                print("unanswered tiles: " + ", ".join(f"{r} {n}" for r, n in short.items()))
            if args.out is not None:
                print(f"wrote {write_scores(args.out, rows)}")
            return 0
        if args.real is None or args.synthetic is None or args.out is None:
            raise ReaderStudyError("build a study with --real DIR --synthetic DIR --out study.html, "
                                   "or score one with --score answers.csv --key key.json")
        key = build_study(args.real, args.synthetic, args.out, key=args.key, window_hu=parse_window(args.window),
                          size=args.size, per_volume=args.per_volume, seed=args.seed, title=args.title)
        n_real = sum(t["truth"] == "real" for t in key["tiles"].values())
        key_path = args.key or args.out.with_name("key.json")
        print(f"wrote {args.out} ({len(key['tiles'])} tiles: {n_real} real, {len(key['tiles']) - n_real} synthetic; "
              f"study {key['study']}) and its key {key_path} (keep the key from the readers)")
        return 0
    except (ReaderStudyError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
