"""Dice computed identically for every arm of the augmentation experiment.

Primary (per training seed): per test patient, Dice pooled over that patient's slices -- the sum of the
intersections over the sum of the sizes, 2 sum|P n T| / (sum|P| + sum|T|) -- then the mean over the patients
whose truth holds the class. The patient set is fixed by the truth, so every arm is scored on the same patients,
and a patient's small lesions on a few slices are not outweighed by many empty slices.

Secondary: per-image Dice (`difflung.judging.metrics.dice_per_class`) averaged over one fixed slice set, the slices
whose *truth* holds the class (the old average over slices where truth or prediction held the class gave each arm
its own slice set).

    per_slice = per_image_dice(pred, test.labels, classes)                # + column `truth`
    per_patient = pooled_patient_dice(pred, test.labels, test.patient, classes)
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from difflung import labels as L
from difflung.judging.metrics import dice_per_class


def _name(c: int) -> str:
    return L.BY_ID[c].name if c in L.BY_ID else str(c)


def pooled_patient_dice(pred, truth, patient, classes) -> pd.DataFrame:
    """Per (patient, class): Dice pooled over the patient's slices.

    Args:
        pred, truth: (N, S, S) integer label maps of project ids.
        patient: (N,) patient id of each slice.
        classes: project ids to score.
    Returns:
        DataFrame with columns patient, class (name), class_id, intersection, pred_pixels, truth_pixels, dice;
        patient-major (patients sorted), classes in the order given. Dice is NaN where the patient's truth lacks
        the class (that patient is not in the class's fixed patient set, whatever the prediction).
    """
    pred, truth, patient = np.asarray(pred), np.asarray(truth), np.asarray(patient).astype(str)
    if pred.shape != truth.shape or pred.ndim != 3:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} must both be (N, S, S)")
    if patient.shape != (len(truth),):
        raise ValueError(f"patient {patient.shape}: expected one id per slice ({len(truth)},)")
    classes = [int(c) for c in classes]
    if not classes:
        raise ValueError("no classes to score")
    rows = []
    for p in np.unique(patient):
        sel = patient == p
        for c in classes:
            pm, tm = pred[sel] == c, truth[sel] == c
            inter, npred, ntrue = int((pm & tm).sum()), int(pm.sum()), int(tm.sum())
            rows.append({"patient": p, "class": _name(c), "class_id": c, "intersection": inter,
                         "pred_pixels": npred, "truth_pixels": ntrue,
                         "dice": 2.0 * inter / (npred + ntrue) if ntrue else np.nan})
    return pd.DataFrame(rows, columns=["patient", "class", "class_id", "intersection", "pred_pixels",
                                       "truth_pixels", "dice"])


def per_image_dice(pred, truth, classes) -> pd.DataFrame:
    """`dice_per_class` (image, class, class_id, dice) with a column `truth`: whether the image's truth holds the
    class -- the fixed slice set of the secondary, per-image view."""
    d = dice_per_class(pred, truth, classes)
    ids = [int(c) for c in classes]
    held = np.stack([(np.asarray(truth) == c).any((-2, -1)) for c in ids], -1).reshape(-1, len(ids))  # (N, C)
    d["truth"] = held[d["image"].to_numpy(), [ids.index(c) for c in d["class_id"]]]
    return d


def mean_over_patients(per_patient: pd.DataFrame, keys=()) -> pd.DataFrame:
    """Per (keys..., class): the primary Dice -- the mean of the pooled per-patient Dice over the patients whose
    truth holds the class (NaN when none does) -- and that number of patients (`n_patients`)."""
    g = per_patient.groupby([*keys, "class"], sort=True)["dice"]
    return pd.DataFrame({"dice": g.mean(), "n_patients": g.count()}).reset_index()


def mean_over_truth_slices(per_slice: pd.DataFrame, keys=()) -> pd.DataFrame:
    """Per (keys..., class): the secondary Dice -- the mean per-image Dice over the slices whose truth holds the
    class (`dice_image`) -- and that number of slices (`n_slices`, the same for every arm)."""
    d = per_slice.assign(dice=per_slice["dice"].where(per_slice["truth"].astype(bool)))
    g = d.groupby([*keys, "class"], sort=True)["dice"]
    return pd.DataFrame({"dice_image": g.mean(), "n_slices": g.count()}).reset_index()
