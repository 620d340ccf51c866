"""Instruments validated before they judge: the judge segmenter's floors, HU signatures, convergence criteria.

Everything a chapter needs to call a class or a generator "not measurable" is stated here, once:
- the judge segmenter must reach JUDGE_FLOOR Dice on *real* test slices for a class before its Dice on generated
  slices means anything (lung and the large anatomy 0.7, every rarer class present 0.3; the aim is 0.5);
- a class whose HU signature does not survive resampling to the run's image size cannot be judged on texture;
- a generator meets its convergence criteria (judge Dice ratio, HU distance, air, real-vs-generated classifier)
  before comparisons involving it are judged;
- an instrument must have power: the judge's ratio is bounded on both sides (a lesion far easier to find than a
  real one is a caricature), a class's HU distance is read against its contrast with healthy lung, and the
  classifier must detect known perturbations of real slices (positive controls) before its "cannot tell" counts.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Mapping

import numpy as np
import pandas as pd

from difflung import labels as L

# judge segmenter: Dice on real test slices
JUDGE_FLOOR_ANATOMY = 0.7  # lung (and body/background, the large structures)
JUDGE_FLOOR_RARE = 0.3  # every other class present in the test truth
JUDGE_AIM_RARE = 0.5  # what the judge should reach on every rare class
ANATOMY = ("background", "body", "lung")

# HU signatures
EMPHYSEMA_THRESHOLD_HU = -950.0  # the usual low-attenuation-area threshold
EMPHYSEMA_MIN_SHARE = 0.2  # share of emphysema pixels below the threshold that keeps the signature

# convergence criteria of the main generator
DICE_RATIO_MIN = 0.8  # judge Dice on generated / on real, per measurable class
DICE_RATIO_MAX = 1.25  # = 1 / 0.8: lesions much easier to find than real ones are caricatures
HU_W1_MAX = 50.0  # per-class Wasserstein-1 between generated and real HU
# W1 / |median HU(class) - median HU(lung)|: 1 = lesion drawn as lung, 0.5 = halfway there; a quarter keeps a margin
HU_W1_CONTRAST_MAX = 0.25
AIR_TOLERANCE_HU = 30.0  # a generated slice's air mean within this of the real slice's
AIR_SHARE_MIN = 0.95  # share of generated slices whose air passes
CLASSIFIER_ACCURACY_MAX = 0.8  # real-vs-generated classifier on held-out patients
# a positive control counts as detected when the classifier would fail a generator that made it, so the bound is
# the criterion's own: accuracy above CLASSIFIER_ACCURACY_MAX
CONTROL_ACCURACY_MIN = CLASSIFIER_ACCURACY_MAX


def judge_floor(cls: str) -> float:
    """The judge's Dice floor for a class name."""
    return JUDGE_FLOOR_ANATOMY if cls in ANATOMY else JUDGE_FLOOR_RARE


def judge_validity(real_dice_by_class: Mapping[str, float]) -> dict[str, tuple[bool, str]]:
    """Whether the judge segmenter may judge each class, from its mean Dice on real test slices.

    Args:
        real_dice_by_class: class name -> mean Dice of the judge on the real test slices (NaN: class absent
            from the test truth).
    Returns:
        class -> (ok, reason); reason is "" when ok, else a phrase for "not measurable: <reason>".
    """
    out = {}
    for cls, d in real_dice_by_class.items():
        floor = judge_floor(cls)
        if d is None or not np.isfinite(d):
            out[cls] = (False, f"{cls} absent from the test truth")
        elif d < floor:
            out[cls] = (False, f"judge Dice on real {cls} {d:.3g} < floor {floor:g}")
        else:
            out[cls] = (True, "")
    return out


def _share_below(hu: np.ndarray, threshold: float) -> float:
    return float(np.mean(hu < threshold)) if hu.size else math.nan


def hu_signature(hu, labels, cls: str | int) -> tuple[bool, str]:
    """Whether a class keeps its HU signature in these slices (e.g. after resizing to the run's size).

    - emphysema: at least EMPHYSEMA_MIN_SHARE of its pixels below -950 HU, and more than healthy lung's share;
    - other pathology classes with a literature HU range (labels.CLASSES): mean HU inside that range;
    - anatomy classes (background, body, lung, airway): no signature check (ok).

    Args:
        hu: (..., S, S) HU values. labels: same shape, project ids. cls: class name or id.
    Returns:
        (ok, reason); reason "" when ok (or when no check applies, then it says so).
    """
    hu, labels = np.asarray(hu, dtype=np.float64), np.asarray(labels)
    if hu.shape != labels.shape:
        raise ValueError(f"hu {hu.shape} and labels {labels.shape} must have the same shape")
    c = L.BY_ID[L.class_id(cls)]
    x = hu[labels == c.id]
    if x.size == 0:
        return False, f"{c.name} absent"
    if c.id == L.EMPHYSEMA:
        share = _share_below(x, EMPHYSEMA_THRESHOLD_HU)
        healthy = _share_below(hu[labels == L.LUNG], EMPHYSEMA_THRESHOLD_HU)
        ok = share >= EMPHYSEMA_MIN_SHARE and (math.isnan(healthy) or share > healthy)
        why = f"{share:.0%} of emphysema below {EMPHYSEMA_THRESHOLD_HU:g} HU (healthy lung {healthy:.0%})"
        return ok, "" if ok else f"HU signature lost: {why}, need >= {EMPHYSEMA_MIN_SHARE:.0%}"
    if not c.pathology or c.hu_range is None:
        return True, ""
    m = float(x.mean())
    lo, hi = c.hu_range
    ok = lo <= m <= hi
    return ok, "" if ok else f"HU signature lost: {c.name} mean {m:.0f} HU outside {lo:.0f}..{hi:.0f}"


def dice_ratios(generated_dice: Mapping[str, float], real_dice: Mapping[str, float],
                measurable: Mapping[str, tuple[bool, str]] | None = None) -> dict[str, float]:
    """Judge Dice on generated slices / on real slices, per class the judge may judge.

    Args:
        generated_dice, real_dice: class -> mean judge Dice on generated and on real test slices.
        measurable: class -> (ok, reason), e.g. from `judge_validity`; classes not ok are left out.
    Returns:
        class -> ratio (NaN when the real Dice is 0 or missing).
    """
    out = {}
    for c, r in real_dice.items():
        if measurable is not None and not measurable.get(c, (False, ""))[0]:
            continue
        g = generated_dice.get(c, math.nan)
        out[c] = float(g) / float(r) if r and np.isfinite(r) else math.nan
    return out


def hu_contrast(hu, labels, classes) -> dict[str, float]:
    """Each class's HU contrast with healthy lung: |median HU of the class - median HU of lung| (`labels.LUNG`).

    Measure it on the real *training* slices at the run's size (never the test slices the criteria judge).

    Args:
        hu: (..., S, S) HU. labels: same shape, project ids. classes: names or ids.
    Returns:
        class name -> contrast in HU; NaN where the class or lung is absent (lung itself: 0).
    """
    hu, labels = np.asarray(hu, dtype=np.float64), np.asarray(labels)
    if hu.shape != labels.shape:
        raise ValueError(f"hu {hu.shape} and labels {labels.shape} must have the same shape")
    lung = hu[labels == L.LUNG]
    ref = float(np.median(lung)) if lung.size else math.nan
    out = {}
    for c in classes:
        x = hu[labels == L.class_id(c)]
        out[L.BY_ID[L.class_id(c)].name] = abs(float(np.median(x)) - ref) if x.size else math.nan
    return out


def relative_w1(hu_w1: Mapping[str, float], contrast: Mapping[str, float]) -> dict[str, float]:
    """HU W1 over the class's contrast with healthy lung (`hu_contrast`), for each pathology class with a W1 and a
    finite contrast: a lesion is told from lung by that contrast, so its HU error counts against it (anatomy keeps
    the absolute HU_W1_MAX). A zero contrast gives inf: no W1 is small against it."""
    out = {}
    for c, w in hu_w1.items():
        k = contrast.get(c, math.nan)
        if not L.BY_NAME[c].pathology or k is None or not np.isfinite(k):
            continue
        out[c] = float(w) / k if k > 0 else math.inf
    return out


def convergence(*, dice_ratio: Mapping[str, float], hu_w1: Mapping[str, float], air_share: float,
                classifier_accuracy: float, hu_w1_relative: Mapping[str, float] | None = None,
                controls: Mapping[str, float] | None = None) -> pd.DataFrame:
    """The main generator's convergence criteria as a table (criterion, value, threshold, met).

    Args:
        dice_ratio: class -> judge Dice on generated slices / judge Dice on the real slices, for lung and each
            rare class that is measurable (pass only those); met inside DICE_RATIO_MIN .. DICE_RATIO_MAX.
        hu_w1: class -> Wasserstein-1 distance (HU) between generated and real HU within the class.
        air_share: share of generated slices whose air (background) mean is within 30 HU of the real slice's.
        classifier_accuracy: held-out accuracy of the real-vs-generated classifier.
        hu_w1_relative: class -> W1 over the class's contrast with healthy lung (`relative_w1`); None: no rows.
        controls: positive control name -> the classifier's accuracy on real against perturbed-real slices; each
            must exceed CONTROL_ACCURACY_MIN (the classifier has power) for the table to be met. None: no rows.
    Returns:
        One row per criterion; `met` is False for a missing (NaN) value.
    """
    rows = [(f"judge Dice ratio, {c}", v, f"{DICE_RATIO_MIN:g} .. {DICE_RATIO_MAX:g}",
             DICE_RATIO_MIN <= v <= DICE_RATIO_MAX) for c, v in dice_ratio.items()]
    rows += [(f"HU Wasserstein-1, {c} (HU)", v, f"<= {HU_W1_MAX:g}", v <= HU_W1_MAX) for c, v in hu_w1.items()]
    rows += [(f"HU Wasserstein-1 / contrast with lung, {c}", v, f"<= {HU_W1_CONTRAST_MAX:g}",
              v <= HU_W1_CONTRAST_MAX) for c, v in (hu_w1_relative or {}).items()]
    rows.append((f"slices with air within {AIR_TOLERANCE_HU:g} HU", air_share, f">= {AIR_SHARE_MIN:g}",
                 air_share >= AIR_SHARE_MIN))
    rows.append(("real-vs-generated classifier accuracy", classifier_accuracy, f"<= {CLASSIFIER_ACCURACY_MAX:g}",
                 classifier_accuracy <= CLASSIFIER_ACCURACY_MAX))
    rows += [(f"classifier detects positive control: {c}", v, f"> {CONTROL_ACCURACY_MIN:g}",
              v > CONTROL_ACCURACY_MIN) for c, v in (controls or {}).items()]
    df = pd.DataFrame(rows, columns=["criterion", "value", "threshold", "met"])
    df["value"] = df["value"].astype(float)
    df["met"] = df["met"].astype(bool) & np.isfinite(df["value"])
    return df


def converged(table: pd.DataFrame) -> bool:
    """True when every criterion of a `convergence` table is met (and there is at least one)."""
    return bool(len(table)) and bool(table["met"].all())


# ---------------------------------------------------------------------------------------------------------------
# HU signatures per class, at the phantom's resolution and at the run's size, saved for later chapters

SIGNATURE_FILE = "hu_signature.json"


def signature_stats(hu, labels, cls: str | int) -> dict[str, float]:
    """Mean HU and share of pixels below EMPHYSEMA_THRESHOLD_HU of one class (NaN when absent)."""
    hu, labels = np.asarray(hu, dtype=np.float64), np.asarray(labels)
    x = hu[labels == L.class_id(cls)]
    return {"mean_hu": float(x.mean()) if x.size else math.nan,
            "share_below_threshold": _share_below(x, EMPHYSEMA_THRESHOLD_HU), "pixels": int(x.size)}


def signature_check(cls: str | int) -> str:
    """The criterion `hu_signature` applies to a class, in words."""
    c = L.BY_ID[L.class_id(cls)]
    if c.id == L.EMPHYSEMA:
        return f">= {EMPHYSEMA_MIN_SHARE:.0%} below {EMPHYSEMA_THRESHOLD_HU:g} HU, more than healthy lung"
    if c.pathology and c.hu_range is not None:
        return f"mean HU in {c.hu_range[0]:g} .. {c.hu_range[1]:g}"
    return "none (anatomy)"


def signature_survival(full: tuple, resized: tuple, classes, size: int) -> pd.DataFrame:
    """Per class, whether its HU signature holds at full resolution and after resizing to `size`.

    Args:
        full: (hu, labels) at the source resolution, e.g. the training patients' phantom slices.
        resized: (hu, labels) of the same slices at the run's size, in HU.
        classes: class names or ids to check.
        size: the run's image size (pixels per side), recorded in the table.
    Returns:
        One row per class: class, check, full_* and size_* statistics (mean_hu, share_below_threshold, ok),
        measurable (the signature holds at `size`) and reason ("" when measurable).
    """
    rows = []
    for cls in classes:
        name = L.BY_ID[L.class_id(cls)].name
        row = {"class": name, "check": signature_check(name), "size": int(size)}
        for tag, (hu, lab) in (("full", full), ("size", resized)):
            ok, why = hu_signature(hu, lab, name)
            st = signature_stats(hu, lab, name)
            row.update({f"{tag}_mean_hu": st["mean_hu"], f"{tag}_share_below_threshold": st["share_below_threshold"],
                        f"{tag}_ok": bool(ok), f"{tag}_reason": why})
        row["measurable"] = row["size_ok"]
        row["reason"] = "" if row["size_ok"] else f"at {size} px: {row['size_reason']}"
        rows.append(row)
    return pd.DataFrame(rows)


def _plain(v):
    v = v.item() if isinstance(v, np.generic) else v
    return None if isinstance(v, float) and math.isnan(v) else v


def write_signature(run_dir, table: pd.DataFrame, **meta) -> Path:
    """Save a `signature_survival` table as `<run_dir>/hu_signature.json` (atomic); `meta` adds e.g. split."""
    from difflung.core.provenance import write_json_atomic

    path = Path(run_dir) / SIGNATURE_FILE
    size = int(table["size"].iloc[0]) if len(table) else None
    doc = {"size": size, "threshold_hu": EMPHYSEMA_THRESHOLD_HU, **meta,
           "classes": {r["class"]: {k: _plain(v) for k, v in r.items() if k != "class"}
                       for r in table.to_dict("records")}}
    write_json_atomic(path, doc)
    return path


def read_signature(run_dir) -> dict[str, tuple[bool, str]]:
    """Which classes keep their HU signature at the run's size, from chapter 1's `hu_signature.json`.

    Args:
        run_dir: chapter 1's run folder (e.g. `<runs_root>/01_data_preparation`).
    Returns:
        class name -> (measurable, reason), the form `judge_validity` returns; reason names the size, e.g.
        "at 32 px: HU signature lost: ...". Classes not listed were not checked.
    """
    path = Path(run_dir) / SIGNATURE_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no HU signature check here; run the data preparation chapter "
                                f"(01_data_preparation) first")
    try:
        doc = json.loads(path.read_text())
        return {c: (bool(r["measurable"]), str(r["reason"])) for c, r in doc["classes"].items()}
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{path}: not a HU signature file ({e})") from e
