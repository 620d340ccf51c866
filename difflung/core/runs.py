"""Where a run's artifacts live: every path under `runs/<profile>/`, in one place.

    runs/<profile>/
        01_data_preparation/dataset/          phantom dataset artifact (chapter 1)
        01_data_preparation/real_dataset/     real-CT dataset of chapter 1's worked `prepare` example
        02_mask_ablation_study/models/<key>/  one diffusion model per ablation strategy
        03_cbmat_training/model/              the profile's main Diff-Lung model (chapters 4 and 5 reuse it)
        06_lesion_insertion/model/            the patch model that inserts lesions into real CT (chapter 6)
        04_baseline_comparison/models/<key>[-seed<k>]/
        judge/                                the judge (faithfulness) segmenter shared by every chapter
        <stem>/metrics.csv, <stem>/metrics.json, <stem>/per_image.csv

Chapter modules and notebooks take `runs_root` (`runs/<profile>`) and `run_dir` (`<runs_root>/<stem>`); the
functions here turn them into artifact paths. Model keys are those of `difflung.generators.REGISTRY`.
"""
from __future__ import annotations

from pathlib import Path

DATA_PREPARATION = "01_data_preparation"
MASK_ABLATION = "02_mask_ablation_study"
CBMAT_TRAINING = "03_cbmat_training"
BASELINE_COMPARISON = "04_baseline_comparison"
SEGMENTATION_AUGMENTATION = "05_segmentation_augmentation"
LESION_INSERTION = "06_lesion_insertion"  # placed before the results chapter in _toc.yml
RESULTS = "07_results"
PHANTOM_DATASET, REAL_DATASET = "dataset", "real_dataset"  # folders in chapter 1's run folder
CHAPTERS = (DATA_PREPARATION, MASK_ABLATION, CBMAT_TRAINING, BASELINE_COMPARISON, SEGMENTATION_AUGMENTATION,
            LESION_INSERTION, RESULTS)


def chapter_dir(runs_root, stem: str) -> Path:
    """`<runs_root>/<stem>`, the run folder of one chapter."""
    if stem not in CHAPTERS:
        raise ValueError(f"unknown chapter {stem!r}; chapters: {', '.join(CHAPTERS)}")
    return Path(runs_root) / stem


def phantom_dataset_dir(runs_root) -> Path:
    """Chapter 1's phantom dataset artifact of a run."""
    return chapter_dir(runs_root, DATA_PREPARATION) / PHANTOM_DATASET


def real_dataset_dir(runs_root) -> Path:
    """Chapter 1's real-CT dataset artifact of a run (written by its worked `prepare` example)."""
    return chapter_dir(runs_root, DATA_PREPARATION) / REAL_DATASET


def main_model_dir(runs_root) -> Path:
    """The profile's main Diff-Lung model (chapter 3); chapters 4 and 5 reuse it."""
    return chapter_dir(runs_root, CBMAT_TRAINING) / "model"


def model_dir(run_dir, key: str, seed: int | None = None) -> Path:
    """`<run_dir>/models/<key>`, or `<key>-seed<seed>` for a training seed other than the chapter's main one."""
    return Path(run_dir) / "models" / (key if seed is None else f"{key}-seed{seed}")


PLATEAU_FILE = "training_plateau.json"  # chapter 4's record of where each generator's training stopped


def compared_model_dir(runs_root, key: str) -> Path | None:
    """The folder of generator `key` (main training seed) that chapter 4 compared: where its training stopped
    (a later budget's folder when it trained on, Seg-Guided's chosen recipe), read from chapter 4's
    `training_plateau.json`; None when chapter 4 has not recorded it."""
    import json

    path = chapter_dir(runs_root, BASELINE_COMPARISON) / PLATEAU_FILE
    if not path.is_file():
        return None
    seeds = json.loads(path.read_text()).get("curves", {}).get(key, {})
    if not seeds:
        return None
    return Path(runs_root) / seeds[min(seeds, key=int)]["folder"]  # stored relative to the run's root


def judge_dir(runs_root) -> Path:
    """The judge segmenter of the run (`difflung.judging.scoring.judge`), one for every chapter."""
    return Path(runs_root) / "judge"


def metrics_path(run_dir) -> Path:
    """A chapter's tidy `metrics.csv` (model keys, never display names)."""
    return Path(run_dir) / "metrics.csv"


def per_image_path(run_dir) -> Path:
    """A chapter's per-test-slice scores in the long-form schema of `difflung.judging.scoring`."""
    return Path(run_dir) / "per_image.csv"
