"""The evaluation chapters 2, 3 and 4 share: one `evaluate` (judge, generators, generate and score, per-image
file, metrics) and one `check` (measurable classes and convergence criteria, written to `criteria.json`).

Each chapter passes what is its own: which generator folders, which classes are withheld, which rows go to its
`metrics.csv`. The order of the calls (and so of every random draw) is fixed here, so a chapter that moves onto
these functions writes the same bytes as before. Chapters may import this module and `scope`, never each other.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from difflung.core import runs
from difflung.core.metrics_csv import write_metrics
from difflung.core.provenance import resolve_device
from difflung.data.dataset import Dataset
from difflung.generators import Generator, load_generator
from difflung.judging import criteria, scoring
from difflung.judging import instruments as I


def open_dataset(runs_root) -> Dataset:
    """The phantom dataset of chapter 1; a clear error naming it if missing."""
    return Dataset(runs.phantom_dataset_dir(runs_root))


def hu_signature(runs_root) -> dict[str, tuple[bool, str]]:
    """Chapter 1's HU-signature check (`instruments.read_signature`): which classes keep their HU at this size."""
    return I.read_signature(runs.chapter_dir(runs_root, runs.DATA_PREPARATION))


def curve_job(runs_root, key: str, config, folder, *, judge_steps: int, seed: int, n_val: int, curve_evals: int,
              max_budgets: int, sampler: str, sampler_steps: int, device: str, later=None):
    """The `training_curves.CurveJob` of a chapter's generator: scored on validation by the run's judge (trained
    once with `judge_steps` and `seed`, as `evaluate`'s), with chapter 1's HU signature for the measurable classes."""
    from difflung.training_curves import CurveJob, JudgeSpec

    return CurveJob(key=key, config=config, folder=str(folder), dataset=str(runs.phantom_dataset_dir(runs_root)),
                    judge=JudgeSpec(str(runs.judge_dir(runs_root)), judge_steps, seed), n_val=n_val,
                    evals=curve_evals, max_phases=max_budgets, sampler=sampler, sampler_steps=sampler_steps,
                    signature=hu_signature(runs_root), device=device, later=None if later is None else str(later))


@dataclass
class Evaluation:
    """What `evaluate` made: the scored images, the generators that made them and the metrics file written."""
    scored: scoring.Scored
    generators: list[Generator]
    metrics: Path


def evaluate(runs_root, run_dir, models: Sequence[tuple[str, Path]], *, judge_steps: int, n_test: int,
             sampler: str, sampler_steps: int, seeds=(0,), seed: int = 0, batch_size: int = 32,
             device: str = "auto", progress: bool = False, dataset: Dataset | None = None, withheld=(),
             per_image: bool = True, metric_rows: Callable[[scoring.Scored, list[Generator]], object]) -> Evaluation:
    """Judge, load each generator, generate and score the test masks, write per_image.csv and metrics.csv.

    Args:
        runs_root: the profile's runs folder (chapter 1's dataset, the shared judge).
        run_dir: the chapter's folder (`per_image.csv`, `metrics.csv`).
        models: (registry key, folder) of every generator, in scoring order (a key may come several times, one
            folder per training seed).
        judge_steps: training steps of the run's judge segmenter (`scoring.judge`, trained once, then reused).
        n_test: test slices scored; sampler, sampler_steps: the diffusion sampler; seeds: sampling seeds.
        seed: the judge's training seed (and, by convention, the chapter's bootstrap seed).
        batch_size: generation batch. device: "auto", "cpu" or "cuda".
        dataset: the phantom `Dataset` when the chapter holds it already (else opened from `runs_root`).
        withheld: classes withheld from the masks in turn (`scoring.generate_and_score`, first seed only).
        per_image: write `<run_dir>/per_image.csv` (every scored image's rows).
        metric_rows: `(scored, generators) -> rows` for `metrics.csv` (a DataFrame or a list of dicts): the
            chapter's own summary, computed after scoring in this fixed order.
    """
    ds, dev = dataset if dataset is not None else open_dataset(runs_root), resolve_device(device)
    seg = scoring.judge(ds, runs.judge_dir(runs_root), steps=judge_steps, seed=seed, device=dev, progress=progress)
    gens = [load_generator(folder, key=key, dataset=ds, device=dev, sampler=sampler, sampler_steps=sampler_steps)
            for key, folder in models]
    scored = scoring.generate_and_score(gens, ds, seg, n_test=n_test, seeds=list(seeds), withheld=list(withheld),
                                        batch_size=batch_size, progress=progress)
    if per_image:
        scoring.write_per_image(runs.per_image_path(run_dir), scored.rows)
    rows = metric_rows(scored, gens)
    return Evaluation(scored, gens, write_metrics(runs.metrics_path(run_dir), rows))


def check(runs_root, run_dir, scored: scoring.Scored, models: Sequence[str], *, seed: int = 0,
          classifier_steps: int = 300, dataset: Dataset | None = None,
          signature: dict[str, tuple[bool, str]] | None = None, **meta):
    """Measurable classes (judge floors, chapter 1's HU signature) and each generator's convergence criteria
    (`difflung.judging.criteria.check`), written to `<run_dir>/criteria.json` with `meta`.

    Args:
        runs_root, run_dir: the profile's runs folder and the chapter's folder.
        scored: `evaluate(...).scored`.
        models: generator keys to measure (their first training and sampling seed).
        seed: seeds each generator's classifier two-sample test. classifier_steps: its training steps.
        dataset: the phantom `Dataset` (training slices: the memorisation reference) when already open.
        signature: chapter 1's check when already read (else read here, `hu_signature`).
        meta: recorded in `criteria.json` beside the criteria (image size, sampler, ...).
    Returns:
        (measurable, {model: criteria result}).
    """
    ds = dataset if dataset is not None else open_dataset(runs_root)
    sig = signature if signature is not None else hu_signature(runs_root)
    train = ds.split("train")
    return criteria.check(scored, list(models), train=train.images, signature=sig, seed=seed,
                          classifier_steps=classifier_steps, run_dir=run_dir, train_labels=train.labels,
                          judge=runs.judge_dir(runs_root), **meta)

