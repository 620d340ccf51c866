"""`python -m difflung archive`: keep a finished run's numbers as a reference run in `reference/<profile>/`.

A run's models, datasets and figures are build products and are never committed; its *numbers* are small and are
what a reader of a cheaply built book (CI builds the `smoke` profile) needs in order to see a result that can test
the paper. The archive holds, for each chapter of the run, the top-level CSV and JSON files of its folder
(`metrics.csv`, cost and timing JSON, the claims table), the run's `provenance.json`, and `archive.json`
(profile, date, the run's git revision). Nothing else is copied, and the whole archive must stay under
`MAX_BYTES`.

`load_reference()` reads the newest archive back for the Results chapter and says whether the chapters' code has
changed since the archived run was made.
"""
from __future__ import annotations

import json
import shutil
import subprocess
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from difflung.core.metrics_csv import read_metrics
from difflung.core.provenance import REPO_ROOT, atomic_dir, write_json_atomic

MAX_BYTES = 2 * 2**20  # the whole archive
MAX_FILE_BYTES = 512 * 2**10  # one file: larger ones are per-pixel dumps, not summary numbers
SUFFIXES = (".csv", ".json")
ARCHIVE_FILE = "archive.json"


class ArchiveError(ValueError):
    pass


def archive_run(profile: str, *, runs_dir: Path | str = REPO_ROOT / "runs",
                out_dir: Path | str = REPO_ROOT / "reference", note: str | None = None, part: str | None = None) -> Path:
    """Copy the numbers of `runs_dir/<profile>` into `out_dir/<profile>` (replacing an older archive atomically).

    Args:
        profile: the run's profile name (its folder under `runs_dir`).
        runs_dir: parent folder of runs.
        out_dir: parent folder of archives (committed: `reference/`).
        note: what a reader must know about how the run was made (e.g. that it resumed an earlier invocation
            and reused its trained models, so its wall time is not the from-scratch cost); shown with the label.
        part: archive one part of the run (`run --part`): its chapters replace theirs in the archive, the other
            parts' chapters stay, and `parts` in archive.json records each part's wall time and revision.

    Returns:
        The archive folder. Raises ArchiveError, writing nothing, when the run is unfinished or too large.
    """
    run = Path(runs_dir) / profile
    prov_path = run / "provenance.json"
    if not prov_path.is_file():
        raise ArchiveError(f"{prov_path}: missing; run `python -m difflung run --profile {profile}` first")
    prov = json.loads(prov_path.read_text())
    chapters = prov.get("chapters") or []
    dest = Path(out_dir) / profile
    old_meta = json.loads((dest / ARCHIVE_FILE).read_text()) if part and (dest / ARCHIVE_FILE).is_file() else {}
    if part is not None:
        if part not in prov.get("parts", {}):
            raise ArchiveError(f"{prov_path}: no part {part!r} was run (`python -m difflung run --profile {profile} "
                               f"--part {part}`)")
        own = prov["parts"][part]["chapters"]
        first = bool(prov["parts"][part].get("first_pass"))  # its chapters' files come with their own part
        # the other parts' chapters, as archived
        kept = [s for s in old_meta.get("chapters", []) if s not in own or first]
        chapters = [s for s in chapters if (s in own and not first) or s in kept]
    else:
        own, kept, first = chapters, [], False
    failed = [s for s in own if prov.get("notebooks", {}).get(s, {}).get("status") != "ok"]
    if not own or failed:
        raise ArchiveError(f"{prov_path}: the run is not finished (not ok: {', '.join(failed) or 'no chapters'})")
    old_prov = json.loads((dest / "provenance.json").read_text()) if kept else {}
    if kept:  # a run in parts is one run: every part at the same code revision
        revision = lambda provenance, stems: sorted({str(provenance.get("notebooks", {}).get(s, {})  # noqa: E731
                                                          .get("git_revision", "unknown")) for s in stems})
        mine, theirs = revision(prov, own), revision(old_prov, kept)
        if mine != theirs:
            raise ArchiveError(f"{dest}: holds {', '.join(kept)} of revision {', '.join(theirs)}, and part {part!r} "
                               f"was run at {', '.join(mine)}; the parts of a run share one code revision: archive "
                               "into an empty folder (--out) or run the other parts again at this revision")
    # the provenance of each chapter where it was made: this run for the part's chapters, the archive for the rest
    notebooks = {s: (old_prov.get("notebooks", {}).get(s, {}) if s in kept else prov["notebooks"][s]) for s in chapters}
    prov = {**prov, "notebooks": notebooks, "chapters": chapters,
            **({"parts": {**old_prov.get("parts", {}), part: prov["parts"][part]}} if part else {})}
    files = []
    for stem in ([] if first else own):
        for p in sorted((run / stem).glob("*")):
            figure_sidecar = p.suffix == ".json" and p.with_suffix(".png").exists()
            if p.is_file() and p.suffix in SUFFIXES and not figure_sidecar and p.stat().st_size <= MAX_FILE_BYTES:
                files.append(p)
    old_files = [dest / f for f in old_meta.get("files", []) if f.split("/")[0] in kept]
    total = sum(p.stat().st_size for p in files + old_files)
    if total > MAX_BYTES:
        raise ArchiveError(f"{run}: its numbers take {total / 2**20:.2f} MB, above the archive's "
                           f"{MAX_BYTES / 2**20:.0f} MB limit")
    revisions = sorted({str(prov["notebooks"][s].get("git_revision", "unknown")) for s in chapters}
                       | (set(prov["parts"][part]["git_revision"]) if part else set()))
    meta = {"profile": profile, "archived": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "git_revision": revisions[0] if len(revisions) == 1 else revisions,
            "finished": max((prov["notebooks"][s].get("started", "") for s in chapters), default=""),
            # the chapters' own wall times: a run finished by later invocations (e.g. one chapter re-run) still
            # reports what its chapters cost, not what its last invocation took
            "total_wall_s": round(sum(prov["notebooks"][s].get("wall_s", 0.0) for s in chapters), 2),
            "chapters": chapters,
            "files": sorted(["provenance.json"] + [str(p.relative_to(run)) for p in files]
                            + [str(p.relative_to(dest)) for p in old_files]),
            "bytes": total, **({"note": note} if note else {})}
    if part is not None:
        notes = {**old_meta.get("notes", {}), **({part: note} if note else {})}
        meta.pop("note", None)
        meta.update(parts=prov["parts"], **({"notes": notes} if notes else {}))
    with atomic_dir(dest) as tmp:
        for src, rel in [(p, p.relative_to(run)) for p in files] + [(p, p.relative_to(dest)) for p in old_files]:
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, target)
        write_json_atomic(tmp / "provenance.json", prov)
        write_json_atomic(tmp / ARCHIVE_FILE, meta)
    return dest


@dataclass
class Reference:
    """An archived run: its metadata, provenance and each chapter's metrics table."""
    path: Path
    meta: dict
    provenance: dict
    metrics: dict[str, pd.DataFrame] = field(default_factory=dict)
    code_changed: bool | None = None  # chapters' code changed after the archived revision (None: unknown)
    changed_files: list[str] = field(default_factory=list)  # which files of it

    @property
    def label(self) -> str:
        rev = self.meta.get("git_revision")
        short = lambda r: r[:12] + ("+dirty" if r.endswith("+dirty") else "")  # noqa: E731
        rev = short(rev) if isinstance(rev, str) else " and ".join(short(r) for r in rev)  # a resumed run: several
        return f"{self.meta['profile']} run of {self.meta.get('finished', '?')[:10]}, git {rev}"

    def json(self, stem: str, name: str) -> dict:
        p = self.path / stem / name
        return json.loads(p.read_text()) if p.is_file() else {}


def load_reference(root: Path | str = REPO_ROOT / "reference", profile: str | None = None) -> Reference | None:
    """The newest archived run under `root` (or the one of `profile`); None when there is none.

    Raises ArchiveError naming the file when an archive lacks its provenance or metadata.
    """
    root = Path(root)
    folders = [root / profile] if profile else sorted(p for p in root.glob("*") if p.is_dir())
    refs = []
    for folder in folders:
        meta_path, prov_path = folder / ARCHIVE_FILE, folder / "provenance.json"
        if not folder.is_dir():
            continue
        for p in (meta_path, prov_path):
            if not p.is_file():
                raise ArchiveError(f"{p}: missing; an archive must carry its metadata and provenance "
                                   f"(re-create it with `python -m difflung archive --profile {folder.name}`)")
        refs.append(Reference(folder, json.loads(meta_path.read_text()), json.loads(prov_path.read_text())))
    if not refs:
        return None
    ref = max(refs, key=lambda r: r.meta.get("finished", ""))
    for stem in ref.meta.get("chapters", []):
        p = ref.path / stem / "metrics.csv"
        if p.is_file():
            ref.metrics[stem] = read_metrics(p)
    ref.code_changed = code_changed_since(ref.meta.get("git_revision"))
    ref.changed_files = changed_files_since(ref.meta.get("git_revision")) or []
    return ref


def code_changed_since(revision, paths=("difflung",), root: Path = REPO_ROOT) -> bool | None:
    """Whether `paths` changed in commits after `revision` (None when git or the revision is unavailable).

    `revision` may be a list: a run resumed at a later commit keeps the chapters it did not need to re-run, so
    its chapters carry several revisions; the code counts as changed when it changed after any of them.
    """
    files = changed_files_since(revision, paths, root)
    if files is None:
        return None
    revs = revision if isinstance(revision, (list, tuple)) else [revision]
    return bool(files) or any(r.endswith("+dirty") for r in revs)


def changed_files_since(revision, paths=("difflung",), root: Path = REPO_ROOT) -> list[str] | None:
    """The files under `paths` changed in commits after `revision` (or after any of a list of revisions), sorted;
    None when git or a revision is unavailable."""
    revs = revision if isinstance(revision, (list, tuple)) else [revision]
    if not revs or any(not isinstance(r, str) or r in ("", "unknown") for r in revs):
        return None
    files = set()
    for rev in revs:
        try:
            out = subprocess.run(["git", "log", "--format=", "--name-only", f"{rev.removesuffix('+dirty')}..HEAD",
                                  "--", *paths], cwd=root, capture_output=True, text=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError):
            return None
        files |= {line.strip() for line in out.splitlines() if line.strip()}
    return sorted(files)
