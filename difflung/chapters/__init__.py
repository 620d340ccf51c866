"""One module per book chapter: the functions its notebook calls, one per section.

Where a run's artifacts live, shared by the chapters that write and read them.
"""
from pathlib import Path


def phantom_dataset_dir(runs_root) -> Path:
    """Chapter 1's phantom dataset artifact of a run."""
    return Path(runs_root) / "01_data_preparation" / "dataset"


def real_dataset_dir(runs_root) -> Path:
    """Chapter 1's real-CT dataset artifact of a run (written by its worked `prepare` example)."""
    return Path(runs_root) / "01_data_preparation" / "real_dataset"
