"""A prepared dataset artifact as the dataset of a book run: `python -m difflung run --set dataset=DIR`.

`python -m difflung prepare` turns labelled CT into the same artifact the phantom chapter writes. With the profile
key `dataset` set, chapter 1 adopts that artifact instead of building the phantom: `check` refuses it before
anything runs (not an artifact, checksums that fail, another image size, too few patients in a split), `adopt`
copies it into chapter 1's run folder (where every later chapter reads its dataset) with `dataset_source.json`,
and every page names it (`describe`).
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np

from difflung.core import runs
from difflung.core.provenance import atomic_dir, write_json_atomic
from difflung.data.dataset import SPLITS, Dataset, DatasetError

SOURCE_FILE = "dataset_source.json"  # in chapter 1's run folder: which dataset the run used
# patients each split needs: the real-vs-generated classifier trains on some validation patients and tests on the
# others, and a test-patient statistic needs more than one patient
MIN_PATIENTS = {"train": 2, "val": 2, "test": 2}


def dataset_sha256(root) -> str:
    """sha256 of the artifact's manifest, which holds the sha256 of every split file: one name for its content."""
    return hashlib.sha256((Path(root) / "manifest.json").read_bytes()).hexdigest()


def check(src, *, size: int) -> Dataset:
    """Open the artifact at `src` and check it can carry a run at `size` pixels; DatasetError naming the folder.

    Args:
        src: a dataset folder written by `python -m difflung prepare` (manifest.json and train/val/test.npz).
        size: the profile's image size; the artifact must have been prepared at it.
    """
    src = Path(src)
    if not src.is_dir():
        raise DatasetError(f"{src}: no such folder; --set dataset= takes a dataset folder written by "
                           f"`python -m difflung prepare ... --out FOLDER`")
    try:
        ds = Dataset(src)
    except FileNotFoundError as e:
        raise DatasetError(f"{src}: not a dataset artifact (no manifest.json); write one with "
                           f"`python -m difflung prepare`") from e
    missing = [s for s in SPLITS if s not in ds.manifest.get("splits", {})]
    if missing:
        raise DatasetError(f"{src}: the manifest lacks the split(s) {missing}")
    for s in SPLITS:
        ds.split(s)  # sha256 against the manifest: DatasetError naming the file
    if ds.size != int(size):
        raise DatasetError(f"{src}: prepared at {ds.size} px, but the profile runs at {size} px; prepare it with "
                           f"--size {size}, or run with --set size={ds.size}")
    few = {s: len(np.unique(ds.split(s).patient)) for s in SPLITS}
    short = {s: n for s, n in few.items() if n < MIN_PATIENTS[s]}
    if short:
        need = ", ".join(f"{s} {MIN_PATIENTS[s]}" for s in short)
        raise DatasetError(f"{src}: too few patients for the study ({', '.join(f'{s} {n}' for s, n in short.items())}; "
                           f"needs at least {need}): prepare more cases")
    return ds


def adopt(src, run_dir, *, size: int) -> Dataset:
    """Check `src` (`check`), copy it to `<run_dir>/dataset` (atomically) and record where it came from.

    Returns:
        The copy, opened: what every later chapter trains and judges on.
    """
    ds = check(src, size=size)
    dest = Path(run_dir) / runs.PHANTOM_DATASET
    with atomic_dir(dest) as tmp:
        shutil.copyfile(ds.root / "manifest.json", tmp / "manifest.json")
        for s in SPLITS:
            name = ds.manifest["splits"][s]["file"]
            shutil.copyfile(ds.root / name, tmp / name)
    path = Path(src).resolve()
    write_json_atomic(Path(run_dir) / SOURCE_FILE, {
        "name": "/".join(path.parts[-2:]), "path": str(path), "sha256": dataset_sha256(ds.root),
        "source": ds.manifest.get("source", ""), "size": ds.size})
    return Dataset(dest)


def describe(runs_root) -> dict | None:
    """The run's own dataset as chapter 1 recorded it (name, path, sha256, source, size); None for the phantom."""
    path = runs.chapter_dir(runs_root, runs.DATA_PREPARATION) / SOURCE_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def patient_table(ds: Dataset):
    """One row per patient of the artifact: split, slices kept, the source volume's slice and in-plane spacing and
    its lung volume, from the manifest (`prepare` records each case)."""
    import pandas as pd

    where = {p: s for s in SPLITS for p in ds.manifest["splits"][s]["patients"]}
    rows = []
    for r in ds.manifest.get("patients") or []:
        sp = r.get("spacing_mm") or [np.nan] * 3
        rows.append({"patient": r.get("patient"), "split": where.get(str(r.get("patient")), "not kept"),
                     "slices kept": r.get("slices_kept"), "slice spacing (mm)": sp[0],
                     "pixel spacing (mm)": sp[-1], "lung volume (ml)": r.get("lung_volume_ml")})
    return pd.DataFrame(rows)
