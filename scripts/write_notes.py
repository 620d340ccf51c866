"""Write `reference/<profile>/NOTES.md`, the notes of an archived run, from that run's own files.

    python scripts/write_notes.py laptop            # rewrite reference/laptop/NOTES.md
    python scripts/write_notes.py laptop --check    # exit 1 when the committed NOTES.md differs

Every number of the generated part is read from the archive (`archive.json`, `provenance.json`, chapter 2-4's
`criteria.json`, chapter 7's `claims.csv`), never typed, so the notes cannot drift from the run
(tests/test_notes.py regenerates them). Below `HAND_MARKER` the file keeps what no archived file holds (the
benchmark measurements behind the profile's choices, each naming the command that produced it); this script
copies that part through unchanged.
"""
from __future__ import annotations

import argparse
import json
import sys
import textwrap
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from difflung.core.provenance import write_text_atomic  # noqa: E402

NOTES = "NOTES.md"
HAND_MARKER = "<!-- Above: written by scripts/write_notes.py from this folder's files. Below: kept as it is. -->"


class NotesError(ValueError):
    pass


def _json(folder: Path, name: str) -> dict:
    path = folder / name
    if not path.is_file():
        raise NotesError(f"{path}: missing; archive the run with `python -m difflung archive` first")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise NotesError(f"{path}: not valid JSON ({e})") from e


def _minutes(seconds: float) -> str:
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


def _num(x) -> str:
    """Three significant figures, as the chapters print them."""
    return "" if x is None or (isinstance(x, float) and pd.isna(x)) else f"{float(x):.3g}"


def _run_section(meta: dict, prov: dict) -> list[str]:
    rev = meta.get("git_revision")
    revs = [rev] if isinstance(rev, str) else list(rev or [])
    devices = sorted({r.get("device", "?") for r in prov["notebooks"].values()})
    lines = [f"Profile `{meta['profile']}`, finished {meta.get('finished', '?')}, "
             f"archived {meta.get('archived', '?')}; "
             f"git {', '.join(r[:12] + ('+dirty' if r.endswith('+dirty') else '') for r in revs)}; "
             f"device {', '.join(devices)}.", ""]
    if meta.get("note"):
        lines += [f"How the run was made (archive.json's note): {meta['note']}.", ""]
    lines += ["| chapter | status | wall time | started |", "|---|---|---|---|"]
    for stem in meta["chapters"]:
        r = prov["notebooks"].get(stem, {})
        wall = _minutes(r.get("wall_s", 0.0))
        lines.append(f"| {stem} | {r.get('status', '?')} | {wall} | {r.get('started', '?')} |")
    total = sum(prov["notebooks"].get(s, {}).get("wall_s", 0.0) for s in meta["chapters"])
    lines += [f"| all chapters | | {_minutes(total)} | |", ""]
    if meta.get("parts"):  # a run in parts (`run --part`): each part's own chapters, its revision, its note
        lines += ["| part | chapters | wall time | git | note |", "|---|---|---|---|---|"]
        for name, part in meta["parts"].items():
            revs = ", ".join(r[:12] + ("+dirty" if r.endswith("+dirty") else "") for r in part.get("git_revision", []))
            first = part.get("first_pass")
            chapters = ", ".join(part["chapters"]) + (" (first pass: " + ", ".join(f"{k} {v}" for k, v in first.items())
                                                      + ")" if first else "")
            lines.append(f"| {name} | {chapters} | {_minutes(part.get('wall_s', 0.0))} | {revs} "
                         f"| {meta.get('notes', {}).get(name, '')} |")
        lines.append("")
    return lines


def _criteria_section(folder: Path, stem: str, title: str, detail: bool) -> list[str]:
    crit = _json(folder / stem, "criteria.json")
    lines = [f"## {title}", ""]
    context = [f"{k} {crit[k]}" for k in ("size", "steps", "sampler", "sample_seed") if k in crit]
    if "test_patients" in crit:
        context.append(f"{crit['test_patients']} test patients")
    if context:
        lines += [f"From `{stem}/criteria.json` ({', '.join(context)}).", ""]
    for name, g in crit["generators"].items():
        if detail:
            lines += [f"`{name}`: {'met every criterion' if g['converged'] else 'did NOT meet every criterion'}.", "",
                      "| criterion | value | threshold | met |", "|---|---|---|---|"]
            lines += [f"| {c['criterion']} | {_num(c['value'])} | {c['threshold']} | {'yes' if c['met'] else 'no'} |"
                      for c in g["criteria"]]
            mem = g.get("memorisation") or {}
            if mem:
                lines += ["", f"Memorisation check: nearest-training-slice ratio {_num(mem.get('ratio'))}, "
                              f"{_num(100 * mem.get('share_flagged', 0))} % of generated slices flagged."]
            lines.append("")
        else:
            missed = [f"{c['criterion']} {_num(c['value'])} ({c['threshold']})" for c in g["criteria"] if not c["met"]]
            lines.append(f"- `{name}`: " + ("met every criterion" if g["converged"] else "missed " + "; ".join(missed)))
    return lines if detail else lines + [""]


def _claims_section(folder: Path) -> list[str]:
    path = folder / "07_results" / "claims.csv"
    if not path.is_file():
        raise NotesError(f"{path}: missing; archive the run with `python -m difflung archive` first")
    df = pd.read_csv(path)
    lines = ["## Claims and verdicts", "", f"From `07_results/claims.csv` ({len(df)} claims; estimate with its "
             "interval, over the units named; p after Holm's adjustment where the claim was tested).", "",
             "| claim | estimate [interval] | n | reported | p (Holm) | verdict |", "|---|---|---|---|---|---|"]
    for row in df.to_dict("records"):
        lines.append(f"| {row['claim']} | {_num(row['estimate'])} [{_num(row['lo'])}, {_num(row['hi'])}] | "
                     f"{row['n']} {row['unit']} | {_num(row['reported'])} | {_num(row['p (Holm)'])} | "
                     f"{row['verdict']} |")
    counts = df["verdict"].map(lambda v: v.split(":")[0]).value_counts()
    lines += ["", "Verdicts: " + ", ".join(f"{k} {v}" for k, v in counts.items()) + ".", ""]
    return lines


def _md_table(df: pd.DataFrame) -> list[str]:
    """A frame as Markdown table rows (its index, when named, as the first columns)."""
    d = df.reset_index() if any(df.index.names) else df
    return (["| " + " | ".join(map(str, d.columns)) + " |", "|" + "---|" * len(d.columns)]
            + ["| " + " | ".join(map(str, row)) + " |" for row in d.itertuples(index=False)])


def _training_section(folder: Path) -> list[str]:
    """Chapter 4: how each generator's training ended (plateau rule, budgets, steps, CPU) and its realism per
    training seed and pooled (`baseline_comparison.table_realism_by_seed`, the chapter's own table)."""
    from difflung.chapters.baseline_comparison import table_realism_by_seed
    from difflung.generators import display_name
    from difflung.judging.plateau import status

    stem = "04_baseline_comparison"
    plat = _json(folder / stem, "training_plateau.json")
    curves, cpu = (pd.read_csv(folder / stem / f) for f in ("training_curves.csv", "training_cpu.csv"))
    b = plat["budget"]
    lines = ["## Chapter 4: how each generator's training ended", "",
             f"From `{stem}/training_plateau.json`, `training_curves.csv` and `training_cpu.csv` (a budget is "
             f"{b['steps']} steps of batch {b['batch_size']}, at most {b['max_budgets']} budgets; rule: {plat['rule']};"
             f" score: {plat['score']}).", "",
             "| generator | training seed | budgets | steps | last validation score (SE) | training CPU min | ended |",
             "|---|---|---|---|---|---|---|"]
    for key, seeds in plat["curves"].items():
        for seed, r in seeds.items():
            c = curves[(curves["model"] == key) & (curves["seed"] == int(seed))].sort_values("step")
            m = cpu[(cpu["model"] == key) & (cpu["seed"] == int(seed))]
            last = c.iloc[-1]
            lines.append(f"| {display_name(key)} | {seed} | {r['budgets']} | {int(last['step'])} | "
                         f"{_num(last['score'])} ({_num(last['se'])}) | {_num(m['cpu_min'].max())} | "
                         f"{status(r['plateaued'], r['budgets'], b['max_budgets'])} |")
    lines += ["", "## Chapter 4: realism per generator and training seed", "",
              f"From `{stem}/metrics.csv` (`difflung.chapters.baseline_comparison.table_realism_by_seed`, the "
              "chapter's table): judge Dice ratio per measurable class and PSNR on the test patients, mean with its "
              "patient interval per training seed; pooled over seeds with a t-interval over training seeds.", ""]
    return lines + _md_table(table_realism_by_seed(folder / stem)) + [""]


def _wrap(line: str) -> str:
    """Prose and list items wrapped at 116 characters (table rows and headings as they are)."""
    if line.startswith(("|", "#", "<!--")) or len(line) <= 116:
        return line
    return textwrap.fill(line, 116, subsequent_indent="  " if line.startswith("- ") else "",
                         break_long_words=False, break_on_hyphens=False)


def generated_part(folder: Path | str) -> str:
    """The notes' generated part for the archive in `folder` (e.g. reference/laptop)."""
    folder = Path(folder)
    meta, prov = _json(folder, "archive.json"), _json(folder, "provenance.json")
    lines = [f"# The {meta['profile']} run: notes", "",
             f"Written by `python scripts/write_notes.py {meta['profile']}` from the files of this folder (the "
             "archived run); do not edit the part above the marker: tests/test_notes.py regenerates it.", "",
             "## The run: wall time per chapter", ""]
    lines += _run_section(meta, prov)
    lines += _criteria_section(folder, "03_cbmat_training", "Main model (chapter 3): convergence criteria", True)
    if (folder / "02_mask_ablation_study" / "criteria.json").is_file():
        lines += _criteria_section(folder, "02_mask_ablation_study", "Chapter 2's strategies", False)
    if (folder / "04_baseline_comparison" / "criteria.json").is_file():
        lines += _criteria_section(folder, "04_baseline_comparison", "Chapter 4's generators (main training seed)",
                                   False)
    if (folder / "04_baseline_comparison" / "training_plateau.json").is_file():
        lines += _training_section(folder)
    lines += _claims_section(folder)
    return "\n".join(_wrap(line) for line in lines)


def notes_text(folder: Path | str, previous: str | None = None) -> str:
    """The whole NOTES.md: the generated part, the marker, and the hand-written part of `previous` (if any)."""
    hand = previous.split(HAND_MARKER, 1)[1] if previous and HAND_MARKER in previous else "\n"
    return generated_part(folder) + "\n" + HAND_MARKER + hand


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("profile", help="the archive reference/<profile>/")
    ap.add_argument("--root", default=str(ROOT / "reference"), help="parent folder of archives")
    ap.add_argument("--check", action="store_true", help="only compare with the committed NOTES.md")
    a = ap.parse_args(argv)
    folder = Path(a.root) / a.profile
    path = folder / NOTES
    previous = path.read_text() if path.is_file() else None
    try:
        text = notes_text(folder, previous)
    except NotesError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if a.check:
        if text != previous:
            print(f"{path} is out of date: python scripts/write_notes.py {a.profile}", file=sys.stderr)
            return 1
        return 0
    write_text_atomic(path, text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
