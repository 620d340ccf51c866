"""`python -m difflung run`: execute the book's notebooks in `_toc.yml` order with papermill.

For each chapter `chapters/<stem>` in `_toc.yml`, the source `notebooks/<stem>.ipynb` is executed with the
profile's parameters into `book/chapters/<stem>.ipynb` (never in place), with the repository root as working
directory. Artifacts go to `runs/<profile>/<stem>/`; `runs/<profile>/provenance.json` records per notebook the
parameters, wall time, device, git revision, package versions and the input key. A notebook is skipped when its
input key -- notebook source, parameters, `difflung` code, and the keys of the notebooks before it (its upstream
artifacts) -- is unchanged and its outputs exist, unless `--force`.
"""
from __future__ import annotations

import contextlib
import hashlib
import html
import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import yaml

from difflung.run import profiles as P
from difflung.core.provenance import REPO_ROOT, device_description, git_revision, package_versions, write_json_atomic, write_text_atomic


class PipelineError(RuntimeError):
    pass


def toc_chapters(root: Path = REPO_ROOT) -> list[str]:
    """Notebook stems of the chapters listed in `_toc.yml` (entries `chapters/<stem>`), in order."""
    toc_path = root / "_toc.yml"
    toc = yaml.safe_load(toc_path.read_text())
    stems = []

    def walk(node):
        if isinstance(node, dict):
            f = node.get("file")
            if isinstance(f, str) and f.startswith("chapters/"):
                stems.append(f.split("/", 1)[1].removesuffix(".ipynb"))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(toc)
    if not stems:
        raise PipelineError(f"{toc_path}: lists no chapters/<notebook> entries")
    return stems


def code_digest(root: Path = REPO_ROOT) -> str:
    h = hashlib.sha256()
    for p in sorted((root / "difflung").rglob("*.py")):
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def input_key(nb_path: Path, params: dict, code: str, upstream: list[str]) -> str:
    h = hashlib.sha256()
    h.update(nb_path.read_bytes())
    h.update(json.dumps(params, sort_keys=True).encode())
    h.update(code.encode())
    for k in upstream:
        h.update(k.encode())
    return h.hexdigest()


def declared_parameters(nb_path: Path) -> set[str]:
    import papermill

    return set(papermill.inspect_notebook(str(nb_path)).keys())


def _failure_message(stem: str, err: Exception, nb_path: Path) -> str:
    """Name the notebook and the failing cell as the reader knows it: its position among the source's code cells."""
    ename, evalue = getattr(err, "ename", type(err).__name__), getattr(err, "evalue", str(err))
    source = (getattr(err, "source", "") or "").strip()
    if not source:
        return f"notebook {stem} failed before any cell ran\n  {ename}: {evalue}"
    import nbformat

    code_cells = [c for c in nbformat.read(nb_path, as_version=4).cells if c.cell_type == "code"]
    pos = next((i + 1 for i, c in enumerate(code_cells) if c.source.strip() == source), None)
    where = f"code cell {pos} of {len(code_cells)}" if pos else "the injected parameters cell"
    return f"notebook {stem} failed in {where} ({source.splitlines()[0][:80]!r})\n  {ename}: {evalue}"


def run(profile: str, overrides: list[str] | None = None, force: bool = False, only: list[str] | None = None,
        root: Path = REPO_ROOT, out_dir: Path | None = None, runs_dir: str = "runs", log=print,
        part: str | None = None) -> dict:
    """Execute the pipeline; return the provenance dict. Raises PipelineError naming the failing notebook.

    Args:
        profile: `profiles/<profile>.yml`.
        overrides: `key=value` strings (see `difflung.run.profiles.apply_overrides`).
        force: re-run notebooks whose inputs are unchanged.
        only: run just these notebooks (their upstream artifacts must exist).
        root: the repository (working directory of the notebooks).
        out_dir: where executed notebooks go (default `book/chapters`, where the book renders them).
        runs_dir: parent of the run's artifacts, `<runs_dir>/<profile>/<notebook>/` (relative to `root`).
        part: run the chapters of this part of the profile (`parts:`), and before them any earlier chapter whose
            artifacts are missing or stale (deterministically, as in one run), so a part runs on a fresh clone too.
            The part's wall time (its own chapters) is recorded under `parts` in the provenance.
    """
    prof = P.apply_overrides(P.load_profile(profile, root / "profiles"), overrides or [])
    if P.own_dataset(prof):  # a folder named on the command line is relative to where the command runs
        prof["common"]["dataset"] = str(Path(P.own_dataset(prof)).resolve())
    data_key = own_dataset_key(prof, root)  # a bad dataset stops the run here, before anything is written
    stems = toc_chapters(root)
    if part is not None:
        if only:
            raise PipelineError("--part and --only together: choose one")
        own = P.part_chapters(prof, part, stems)
        only = stems[:stems.index(own[-1]) + 1]  # the part's chapters and, when not current, those before them
        first_pass = P.part_settings(prof, part)
    if only:
        unknown = sorted(set(only) - set(stems))
        if unknown:
            raise PipelineError(f"--only {unknown}: not in _toc.yml (chapters: {', '.join(stems)})")
    for stem in list(prof["notebooks"]):
        if stem not in stems:
            raise P.ProfileError(f"{prof['path']}: section notebooks.{stem} names no chapter in _toc.yml")
    runs_root = f"{str(runs_dir).rstrip('/')}/{profile}"
    out_dir = Path(out_dir or root / "book" / "chapters")
    out_dir.mkdir(parents=True, exist_ok=True)
    prov_path = root / runs_root / "provenance.json"
    prov = json.loads(prov_path.read_text()) if prov_path.is_file() else {}
    prov.update({"profile": profile, "overrides": list(overrides or []), "profile_values": {
        "common": prof["common"], "notebooks": prof["notebooks"]}})
    prov.setdefault("notebooks", {})
    code = code_digest(root)
    upstream: list[str] = [data_key]
    env_before = os.environ.get("TQDM_DISABLE")
    os.environ["TQDM_DISABLE"] = "1"  # progress bars are for terminals, not for the rendered book
    total = time.perf_counter()
    try:
        for stem in stems:
            nb = root / "notebooks" / f"{P.source_notebook(prof, stem)}.ipynb"
            if not nb.is_file():
                raise PipelineError(f"notebook {stem}: {nb} does not exist (listed in _toc.yml)")
            params = P.notebook_parameters(prof, stem, declared_parameters(nb), runs_root)
            if part is not None and stem in own and first_pass:  # a first pass: the part's settings on its chapters
                unknown = sorted(set(first_pass) - declared_parameters(nb))
                if unknown:
                    raise P.ProfileError(f"{prof['path']}: part {part!r} sets {unknown}, which notebooks/{stem}.ipynb "
                                         "does not declare in its parameters cell")
                params = {**params, **first_pass}
            key = input_key(nb, params, code, upstream)
            upstream.append(key)
            out_nb = out_dir / f"{stem}.ipynb"
            rec = prov["notebooks"].get(stem, {})
            if only and stem not in only:
                log(f"[ skip ] {stem:32s} (not in --only)")
                continue
            current = rec.get("input_key") == key and rec.get("status") == "ok" and out_nb.is_file()
            if current and (not force or (part is not None and stem not in own)):
                log(f"[ same ] {stem:32s} inputs unchanged, kept ({rec.get('wall_s', 0):.1f} s last time)")
                continue
            if part is not None and stem not in own:
                log(f"[ note ] {stem:32s} comes before part {part!r} and is not current: run first")
            log(f"[ run  ] {stem:32s} ...")
            rec = _run_notebook(stem, nb, out_nb, params, key, root, runs_root, prov, prov_path)
            log(f"[  ok  ] {stem:32s} {rec['wall_s']:7.1f} s")
    finally:
        if env_before is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = env_before
    prov["total_wall_s"] = round(time.perf_counter() - total, 2)
    prov["chapters"] = stems
    if part is not None:  # what the part's own chapters took, and at which revision (the archive checks it)
        recs = [prov["notebooks"][s] for s in own]
        prov.setdefault("parts", {})[part] = {
            "chapters": own, "wall_s": round(sum(r.get("wall_s", 0.0) for r in recs), 2),
            "started": min(r.get("started", "") for r in recs),
            "git_revision": sorted({str(r.get("git_revision")) for r in recs}),
            **({"first_pass": first_pass} if first_pass else {})}
    write_json_atomic(prov_path, prov)
    if out_dir == root / "book" / "chapters":  # the book's own run: its Reproduction page and banner
        write_reproduction_pages(prov, root / "book" / "_generated", root / runs_root)
    log(f"pipeline: {len(stems)} notebooks, {prov['total_wall_s']:.1f} s; provenance in "
        f"{os.path.relpath(prov_path, root)}, kernel messages in {os.path.relpath(prov_path.parent / 'pipeline.log', root)}")
    return prov


def own_dataset_key(prof: dict, root: Path) -> str:
    """"" for the phantom; for a run on a prepared dataset (`--set dataset=DIR`), the dataset checked before
    anything runs (PipelineError naming the folder) and its manifest's sha256, so a changed dataset re-runs all."""
    folder = P.own_dataset(prof)
    if not folder:
        return ""
    from difflung.data.dataset import DatasetError
    from difflung.data import own_dataset

    path = Path(folder)
    try:
        own_dataset.check(path, size=int(prof["common"].get("size", 0)))
    except DatasetError as e:
        raise PipelineError(f"--set dataset={folder}: {e}") from e
    return own_dataset.dataset_sha256(path)


@contextlib.contextmanager
def _noise_to(log_path: Path, stem: str):
    """Send everything written to file descriptors 1 and 2 while a notebook runs (the kernel's start-up notices,
    "Kernel is running over TCP without encryption", interrupt messages, library warnings) to the run's log file,
    so the terminal shows one line per notebook. The file descriptors are redirected, not sys.stdout, because the
    kernel and ZMQ threads write to them directly."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    with open(log_path, "a") as f:
        f.write(f"--- {stem} {_now()}\n")
        f.flush()
        os.dup2(f.fileno(), 1)
        os.dup2(f.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)


def banner_text(profile: str, runs_root: Path | None = None) -> str | None:
    """The announcement every page of the book carries for this run (None: no banner): which dataset it ran on
    when not the phantom (name and sha256, from chapter 1's record), and for smoke the classes whose HU signature
    the run's image size erases (chapter 1's check), which no smoke number can show."""
    own = None
    if runs_root is not None:
        from difflung.data.own_dataset import describe

        own = describe(runs_root)
    data = (f"This book ran on the dataset <b>{html.escape(own['name'])}</b> (manifest sha256 "
            f"{own['sha256'][:16]}), prepared from labelled CT, not on the phantom. ") if own else ""
    if profile != "smoke":
        return data or None
    lost = []
    if runs_root is not None:
        from difflung.judging.instruments import read_signature

        try:
            lost = [c for c, (ok, _) in read_signature(Path(runs_root) / "01_data_preparation").items() if not ok]
        except (FileNotFoundError, ValueError):
            lost = []
    return (data + "This copy was built with the <b>smoke</b> profile: it checks that the pipeline runs end to end. "
            "Its models and instruments are too small to test the paper's claims"
            + (f", and at its image size {' and '.join(lost)} {'loses its' if len(lost) == 1 else 'lose their'} HU "
               f"signature, so nothing here can show {'it' if len(lost) == 1 else 'them'}" if lost else "")
            + "; the Results chapter shows the archived reference run beside it.")


def _run_notebook(stem, nb, out_nb, params, key, root, runs_root, prov, prov_path) -> dict:
    """Execute one notebook, record it in the provenance (written after it ran), raise PipelineError on failure."""
    t0 = time.perf_counter()
    rec = {"parameters": params, "input_key": key, "started": _now(), "device": device_description(),
           "git_revision": git_revision(root), "versions": package_versions(), "status": "running"}
    prov["notebooks"][stem] = rec
    with _noise_to(root / runs_root / "pipeline.log", stem):
        err = _execute(nb, out_nb, params, root / runs_root / stem, root)
    rec["wall_s"] = round(time.perf_counter() - t0, 2)
    if err is not None:
        rec["status"] = "failed"
        rec["error"] = _failure_message(stem, err, nb)
        write_json_atomic(prov_path, prov)
        raise PipelineError(rec["error"] + f"\n  partial notebook kept at "
                            f"{os.path.relpath(root / runs_root / stem / (nb.stem + '.failed.ipynb'), root)}")
    rec["status"] = "ok"
    write_json_atomic(prov_path, prov)
    return rec


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _execute(nb: Path, out_nb: Path, params: dict, run_dir: Path, root: Path):
    """Run one notebook into a temporary file; rename it into place on success, keep it in run_dir on failure."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    run_dir.mkdir(parents=True, exist_ok=True)
    tmp_nb = out_nb.with_name(f".{out_nb.stem}.partial.ipynb")
    try:
        papermill.execute_notebook(str(nb), str(tmp_nb), parameters=params, cwd=str(root), kernel_name="python3",
                                   progress_bar=False, log_output=False, request_save_on_cell_execute=False)
    except (PapermillExecutionError, Exception) as e:  # noqa: B014 - keep the partial notebook either way
        if tmp_nb.exists():
            os.replace(tmp_nb, run_dir / f"{nb.stem}.failed.ipynb")
        return e
    _hide_parameter_cells(tmp_nb)
    os.replace(tmp_nb, out_nb)
    failed = run_dir / f"{nb.stem}.failed.ipynb"
    if failed.exists():
        failed.unlink()
    return None


def _hide_parameter_cells(path: Path) -> None:
    """Tag the parameters cell and papermill's injected-parameters cell `remove-input`: the book shows the run's
    parameters on its Reproduction page, not as code at the top of every chapter."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    for cell in nb.cells:
        tags = cell.get("metadata", {}).get("tags", [])
        if ("parameters" in tags or "injected-parameters" in tags) and "remove-input" not in tags:
            cell["metadata"]["tags"] = [*tags, "remove-input"]
    nbformat.write(nb, path)


def write_reproduction_pages(prov: dict, gen_dir: Path, runs_root: Path | None = None) -> None:
    """The book's Reproduction page and the intro's run summary, generated from provenance.json."""
    rows = []
    for stem in prov.get("chapters", []):
        r = prov["notebooks"].get(stem, {})
        rows.append(f"| {stem} | {r.get('status', '-')} | {r.get('wall_s', float('nan')):.1f} | {r.get('device', '-')} "
                    f"| `{r.get('git_revision', '-')[:12]}` | {r.get('started', '-')} |")
    first = next((prov["notebooks"][s] for s in prov.get("chapters", []) if s in prov["notebooks"]), {})
    versions = first.get("versions", {})
    params = "\n".join(
        f"| {stem} | {k} | `{json.dumps(v)}` |" for stem in prov.get("chapters", [])
        for k, v in sorted(prov["notebooks"].get(stem, {}).get("parameters", {}).items()))
    page = f"""# Reproduction

This page is generated by `difflung.run.pipeline` from `runs/{prov['profile']}/provenance.json`.

Profile **{prov['profile']}**{' with overrides `' + ' '.join(prov['overrides']) + '`' if prov.get('overrides') else ''};
total pipeline wall time {prov.get('total_wall_s', float('nan')):.1f} s (skipped notebooks count their earlier run).

| notebook | status | wall time (s) | device | git revision | started (UTC) |
|---|---|---|---|---|---|
{chr(10).join(rows)}

## Parameters

| notebook | parameter | value |
|---|---|---|
{params}

## Package versions

| package | version |
|---|---|
{chr(10).join(f'| {k} | {v} |' for k, v in sorted(versions.items()))}

## Re-running

```bash
python -m difflung run --profile {prov['profile']}{' --set ' + ' --set '.join(prov['overrides']) if prov.get('overrides') else ''}
jupyter-book build book
```
"""
    write_text_atomic(gen_dir / "reproduction.md", page)
    summary = (f"This copy of the book was rendered from the **{prov['profile']}** profile on "
               f"{first.get('device', 'an unknown device')}, git revision `{first.get('git_revision', '?')[:12]}`; "
               f"the whole pipeline took {prov.get('total_wall_s', float('nan')):.0f} s "
               f"(see {{doc}}`/_generated/reproduction`).\n")
    write_text_atomic(gen_dir / "run_summary.md", summary)
    write_json_atomic(gen_dir / "run.json", {"profile": prov["profile"],
                                             "banner": banner_text(prov["profile"], runs_root)})
