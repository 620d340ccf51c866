"""The one plateau rule (when has a generator stopped improving?) and the one choice rule among configurations.
Both read the validation split only.

    s = validation_score(scored, "segguided", measurable)     # Score(mean, se, patients, classes)
    plateaued([s_at_1000, s_at_2000, ...])                     # the rule, on the evaluations so far

The primary score of a generator is how well the judge segmenter reads its masks back from its images, relative to
how well it reads real slices: per validation patient, the mean over the measurable classes (`criteria.
measurable_classes`, from the judge's floors on the real validation slices) of the judge's Dice on that patient's
generated slices over its Dice on all real validation slices of the class; then the mean over patients, with its
standard error (the unit is the patient, as in every interval of the book). 1 is "as readable as real CT".

The rule: a generator has plateaued when its last evaluation is not better than the best earlier one by more than
the standard error of that difference. Both evaluations score the same validation patients, so the difference is
paired: per patient, last minus best earlier, and its standard error is that of the mean paired difference (what
patients share, their anatomy and how readable their slices are, cancels, so steady small gains are seen). It is
checked where a training phase ends (the learning rate has annealed), so a warm restart's transient dip does not
count. The first phase never plateaus on its own first evaluation.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

RULE = ("plateaued when the last evaluation's validation score is not better than the best earlier one by more "
        "than the standard error of that difference, paired by validation patient")
SCORE = "judge Dice ratio (generated over real), mean over measurable classes, per validation patient"


@dataclass(frozen=True)
class Score:
    """One evaluation of one generator on the validation split."""

    mean: float
    se: float  # standard error over patients (NaN with one patient)
    patients: int
    classes: tuple[str, ...]
    measurable: bool = True  # False: the judge met no floor, the score runs over every class (instrument failed)
    per_patient: tuple = ()  # ((patient, score), ...): what the paired plateau rule compares


def validation_score(scored, model: str, measurable: dict[str, tuple[bool, str]], *,
                     train_seed: int | None = None) -> Score:
    """The primary score of `model`'s images in a validation `scoring.Scored` (module docstring).

    Args:
        scored: `scoring.generate_and_score(..., split="val")` with the judge's rows (model "real" included).
        model: the generator key.
        measurable: class name -> (measurable, reason), e.g. `criteria.measurable_classes(scored, signature)`.
        train_seed: which training seed (the first in `scored` when None).
    """
    rows = scored.rows[(scored.rows["metric"] == "dice") & (scored.rows["condition"] == "full")]
    names = [c for c, (ok, _) in measurable.items() if ok]
    ok = bool(names)
    if not ok:  # shown as a failed instrument, not hidden: the curve is still drawn, over every class
        names = list(measurable)
    real = rows[(rows["model"] == "real") & rows["class"].isin(names)].groupby("class")["value"].mean()
    real = real[real > 0]  # a class the judge never finds on real slices has no ratio
    gen = rows[(rows["model"] == model) & rows["class"].isin(list(real.index))]
    if gen.empty:
        raise KeyError(f"no judge rows of {model!r} in the validation scores")
    gen = gen[gen["train_seed"] == (gen["train_seed"].iloc[0] if train_seed is None else train_seed)]
    per = gen.groupby(["patient", "class"])["value"].mean().div(real, level="class")  # ratio per patient, class
    by_patient = per.groupby(level="patient").mean()
    per_patient = by_patient.to_numpy(dtype=float)
    n = len(per_patient)
    se = float(np.std(per_patient, ddof=1) / np.sqrt(n)) if n > 1 else float("nan")
    return Score(float(per_patient.mean()), se, n, tuple(sorted(set(gen["class"]))), ok,
                 tuple((str(p), float(v)) for p, v in by_patient.items()))


def one_se_choice(scores: dict[str, tuple[float, float]]) -> str:
    """The first name (dict order: preference) whose score is within one standard error of the best score (the
    "one-standard-error rule": Breiman, Friedman, Olshen, Stone, "Classification and Regression Trees"): every
    choice among configurations on validation (segmenter, Seg-Guided's recipe) uses it.

    Args:
        scores: name -> (score, se); an unknown se (NaN) counts as 0, so the best score wins.
    """
    if not scores:
        raise ValueError("one_se_choice: no scores")
    best = max(scores, key=lambda k: scores[k][0])  # the first of equal scores
    se = scores[best][1] if np.isfinite(scores[best][1]) else 0.0
    return next(k for k, (v, _) in scores.items() if v >= scores[best][0] - se)


def plateaued(scores: list[Score]) -> bool:
    """The rule (module docstring) on the evaluations so far, oldest first."""
    if len(scores) < 2:
        return False
    last = scores[-1]
    best = max(scores[:-1], key=lambda s: s.mean)
    a, b = dict(last.per_patient), dict(best.per_patient)
    shared = sorted(set(a) & set(b))
    if len(shared) >= 2:  # paired by patient
        d = np.array([a[p] - b[p] for p in shared])
        se = float(d.std(ddof=1) / np.sqrt(len(d)))
        return bool(d.mean() <= se)
    se = 0.0 if np.isnan(last.se) else last.se  # no patients to pair: the last evaluation's own error
    return bool(last.mean - best.mean <= se)


def status(plateau: bool, phases: int, max_phases: int) -> str:
    """The words a table shows for how a generator's training ended."""
    if plateau:
        return "plateaued at the budget" if phases == 1 else f"plateaued at {phases}x budget"
    if phases >= max_phases:
        return f"still improving at {phases}x budget"
    return f"not plateaued at {phases}x budget"


def curve_frame(points: list[dict]) -> pd.DataFrame:
    """Curve points (dicts of `training_curves.CurvePoint`) as a frame sorted by model, seed and step."""
    return pd.DataFrame(points).sort_values(["model", "seed", "step"], kind="stable").reset_index(drop=True)
