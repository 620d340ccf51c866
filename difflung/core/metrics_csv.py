"""Tidy long-form metrics: one row per (model, metric, class, seed[, extra keys]) and its value.

Every chapter writes `metrics.csv` in its run folder; later chapters and the results chapter read them.
Rows are sorted and floats printed with a fixed format so that the same run gives byte-identical files.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np
import pandas as pd

from difflung.core.provenance import write_text_atomic

COLUMNS = ("model", "metric", "class", "seed", "value")


def to_frame(rows) -> pd.DataFrame:
    """Rows (dicts or a DataFrame) with at least COLUMNS -> a DataFrame with COLUMNS first."""
    df = pd.DataFrame(list(rows) if not isinstance(rows, pd.DataFrame) else rows)
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"metrics rows lack columns {missing}; required: {list(COLUMNS)}")
    extra = sorted(c for c in df.columns if c not in COLUMNS)
    df = df[list(COLUMNS[:-1]) + extra + ["value"]].copy()
    df["class"] = df["class"].fillna("all").astype(str)
    for c in extra:  # a key column some rows lack (e.g. `patient`) reads "all" there, not nan
        if not pd.api.types.is_numeric_dtype(df[c]):
            df[c] = df[c].fillna("all")
    df["seed"] = df["seed"].astype(int)
    df["value"] = df["value"].astype(float)
    return df


def write_metrics(path, rows) -> Path:
    """Write rows to `path` (a CSV file, or a folder that gets `metrics.csv`), atomically and reproducibly."""
    path = Path(path)
    if path.suffix != ".csv":
        path = path / "metrics.csv"
    df = to_frame(rows)
    keys = [c for c in df.columns if c != "value"]
    df = df.sort_values(keys, kind="mergesort").reset_index(drop=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(df.columns)
    for rec in df.itertuples(index=False):
        w.writerow(["nan" if isinstance(v, float) and np.isnan(v) else
                    (f"{v:.6g}" if isinstance(v, float) else v) for v in rec])
    return write_text_atomic(path, buf.getvalue())


def read_metrics(path) -> pd.DataFrame:
    """Read a `metrics.csv` (or the one in a run folder); a clear error if it is missing."""
    path = Path(path)
    if path.suffix != ".csv":
        path = path / "metrics.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics file; run the chapter that writes it first")
    return pd.read_csv(path, keep_default_na=False, na_values=["nan"], dtype={"class": str, "model": str})
