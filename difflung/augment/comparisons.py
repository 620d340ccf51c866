"""Statistics over training seeds for the augmentation chapter: per-seed scores, their summaries, whether each
comparison is measurable, the chapter's comparisons and their verdicts.

The unit of replication is the training seed. Per seed, the Dice of a class is the mean over test patients of the
Dice pooled over each patient's slices (`difflung.augment.dice`, the same patients for every arm); seed s of every
arm shares its initial weights and augmentation stream with seed s of every other arm, so arms are compared by
paired tests over seeds (`compare_to_reference` -> `stats.compare_seeds`): a t-interval and t-test only from
`stats.MIN_SEEDS` seeds, Holm across the chapter's comparisons and the book's one verdict rule (`judge_arms`).
A comparison is *not measurable* only when its class is absent from the test truth or lost its HU signature at the
run's size (`class_measurability`), or when an arm paints with the main model and that model never learned its masks
(`arm_usable`). Whether a synthetic arm's generator met its convergence criteria (`arm_convergence`, from the
producing chapter's `criteria.json`) is a note beside the verdict, never a gate: a weaker generator's arm must stay
comparable.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from difflung import labels as L
from difflung.augment.arms import ARMS, CONTROL_ARMS, SYNTHETIC_ARMS, arm_label, arm_order, dose_share
from difflung.core import runs
from difflung.generators import display_name
from difflung.judging import stats
from difflung.judging.stats import compare_to_reference


def seed_scores(metrics: pd.DataFrame, dataset: str | None = None) -> pd.DataFrame:
    """The per-seed Dice rows of a chapter-5 metrics table (metric dice, seed >= 0): model, class, seed, value."""
    m = metrics if dataset is None else metrics[metrics["dataset"] == dataset]
    m = m[(m.metric == "dice") & (m.seed >= 0)]
    return m[["model", "class", "seed", "value"]].reset_index(drop=True)


def summarize_arms(scores: pd.DataFrame, *, generator: np.random.Generator,
                   min_seeds: int = stats.MIN_SEEDS) -> pd.DataFrame:
    """Per (class, model): mean Dice over training seeds, its t-interval (`stats.seed_interval`, clipped to [0, 1];
    NaN below `min_seeds` seeds) and the number of seeds with a score."""
    rows = []
    for (cls, arm), g in scores.groupby(["class", "model"], sort=True):
        v = g["value"].to_numpy(np.float64)
        v = v[np.isfinite(v)]
        iv = stats.seed_interval(v, generator=generator, min_seeds=min_seeds)
        rows.append({"class": cls, "model": arm, "mean": float(v.mean()) if v.size else np.nan,
                     "lo": iv.lo if iv else np.nan, "hi": iv.hi if iv else np.nan, "n_seeds": int(v.size)})
    return pd.DataFrame(rows, columns=["class", "model", "mean", "lo", "hi", "n_seeds"])


def dose_response(metrics: pd.DataFrame, dataset: str | None = None) -> pd.DataFrame:
    """The dose-response curve of the Diff-Lung arm from a chapter-5 metrics table: per (share, class, seed) the
    primary Dice, with `ref` at share 0 (columns share, model, class, seed, value; sorted). Empty when the run had
    no dose-response arms."""
    s = seed_scores(metrics, dataset)
    s = s.assign(share=s["model"].map(dose_share)).dropna(subset=["share"])
    if not (s["share"] > 0).any():
        return pd.DataFrame(columns=["share", "model", "class", "seed", "value"])
    cols = ["share", "model", "class", "seed", "value"]
    return s[cols].sort_values(["share", "class", "seed"]).reset_index(drop=True)


def class_measurability(runs_root, test_pixels: dict[str, float]) -> dict[str, tuple[bool, str]]:
    """class -> (measurable, reason) for this chapter's Dice: a class needs pixels in the test truth (else its
    Dice counts only false positives) and, for a pathology class, chapter 1's HU signature at the run's size
    (`instruments.read_signature`); without chapter 1's signature file a pathology class is not measurable."""
    from difflung.judging.instruments import read_signature

    try:
        sig, missing = read_signature(runs.chapter_dir(runs_root, runs.DATA_PREPARATION)), ""
    except FileNotFoundError:
        sig, missing = {}, f"HU signature not checked (no hu_signature.json from {runs.DATA_PREPARATION})"
    out = {}
    for c, n in test_pixels.items():
        if n == 0:
            out[c] = (False, f"no {c} in the test truth")
        elif missing and c in L.BY_NAME and L.BY_NAME[c].pathology:
            out[c] = (False, missing)
        else:
            out[c] = sig.get(c, (True, ""))
    return out


def arm_convergence(runs_root, arms, dataset: str = "phantom") -> dict[str, tuple[bool, str]]:
    """arm -> (converged, note), for the convergence note beside a verdict (never a gate). Arms without a
    generator pass. A synthetic arm passes when its generator met the convergence criteria its producing chapter
    wrote (`criteria.read_criteria`); otherwise the note says it missed them or that no record exists (missing
    criteria.json or generator key, or a generator trained on another dataset than the phantom)."""
    from difflung.judging.criteria import CRITERIA_FILE, read_criteria

    out = {}
    for arm in arms:
        spec = ARMS.get(arm)
        if spec is None or spec.extra != "synthetic":
            out[arm] = (True, "")
            continue
        path = Path(runs_root) / spec.criteria / CRITERIA_FILE
        name, chapter = display_name(spec.generator), spec.producer.split(" (")[0]  # the reader's words, no ids
        if dataset != "phantom":
            out[arm] = (False, f"no convergence criteria are measured for a {name} model trained on {dataset} data")
        elif not path.is_file():
            out[arm] = (False, f"{name} has no convergence record ({chapter} wrote no criteria)")
        else:
            conv = read_criteria(path.parent)["converged"]
            out[arm] = ((True, "") if conv.get(spec.generator) else
                        (False, f"{name} did not meet its convergence criteria ({chapter})"
                         if spec.generator in conv else f"{name} has no convergence record in {chapter}"))
    return out


def arm_usable(runs_root, arms, dataset: str = "phantom") -> dict[str, tuple[bool, str]]:
    """arm -> (usable, reason): the gate. An arm is unusable only when it paints with the main model
    (`judging.claims.MAIN`) and that model never learned its masks (`judging.claims.main_learned`: judge Dice ratio
    on lung below 0.8, or no record of it, as for a model trained on other data than the phantom). A baseline
    generator's outcome never makes its arm unusable."""
    from difflung.judging.claims import MAIN, _records, main_learned

    learned = main_learned(_records(runs_root)) if dataset == "phantom" else (
        False, f"no record of whether {MAIN} trained on {dataset} data learned its masks")
    return {arm: learned if ARMS.get(arm) is not None and ARMS[arm].generator == MAIN else (True, "")
            for arm in arms}


def validity(metrics: pd.DataFrame, runs_root, dataset: str = "phantom") -> tuple[dict, dict]:
    """(class -> (measurable, reason), arm -> (usable, reason)) for the arms and test truth of a chapter-5 metrics
    table (one dataset's rows): the gates of `judge_arms` (`class_measurability`, `arm_usable`)."""
    t = metrics[metrics.metric == "test_pixels"]
    arms = sorted(set(metrics.loc[metrics.metric == "dice", "model"]), key=arm_order)
    return (class_measurability(runs_root, dict(zip(t["class"], t.value))),
            arm_usable(runs_root, arms, dataset))


def comparison_triples(classes, arms, exclude=()) -> list[tuple[str, str, str]]:
    """The chapter's paired comparisons (class, a, b), each tested as "a > b": per class every arm against `ref`
    and every synthetic arm against each control present (`oversample`, `copypaste`), in registry order; triples
    in `exclude` (the poster's claims, judged once for the whole run) are left out. A new arm in `ARMS` joins
    automatically; the dose-response arms are not compared (`dose_response` gives their curve)."""
    present = sorted(set(arms) & set(ARMS), key=arm_order)
    pairs = [(a, "ref") for a in present if a != "ref"] + [
        (a, c) for c in CONTROL_ARMS if c in present for a in present if a in SYNTHETIC_ARMS] + [
        (a, "+difflung") for a in present if ARMS[a].extra == "insert" and "+difflung" in present]
    if "ref" not in present:
        pairs = [p for p in pairs if p[1] != "ref"]
    return [(c, a, b) for c in classes for a, b in pairs if (c, a, b) not in set(exclude)]


def judge_arms(scores: pd.DataFrame, triples, *, measurable: dict[str, tuple[bool, str]],
               usable: dict[str, tuple[bool, str]], convergence: dict[str, tuple[bool, str]] | None = None,
               generator: np.random.Generator | None = None, alpha: float = stats.ALPHA) -> pd.DataFrame:
    """Judge the comparisons `triples` with the book's one rule: `stats.compare_to_reference` (paired over
    training seeds, t-interval and t-test), then `stats.judge_claims` (Holm across these comparisons,
    `stats.verdict`).

    Args:
        scores: per-seed Dice (`seed_scores`).
        measurable: `class_measurability` (a gate). usable: `arm_usable` (a gate).
        convergence: `arm_convergence`: its misses become the convergence note, never a gate; None: no note.
        generator: unused (nothing is drawn); kept for existing callers.
    Returns:
        One row per triple: class, model, vs and `stats.judge_claims`' columns (claim, estimate, lo, hi, n, unit,
        reported, p, p (Holm), verdict, magnitude, note, convergence).
    """
    conv = convergence or {}

    def validity(cls, a, b):
        note = "; ".join(conv[x][1] for x in (a, b) if not conv.get(x, (True, ""))[0])
        ok, why = measurable.get(cls, (False, f"{cls} not scored"))
        if ok:
            bad = [usable[x][1] for x in (a, b) if not usable.get(x, (True, ""))[0]]
            ok, why = (False, "; ".join(dict.fromkeys(bad))) if bad else (True, "")
        return {"convergence": note, **({} if ok else {"measurable": False, "reason": why})}

    t = compare_to_reference(scores, pairs=list(triples), validity=validity,
                             claim=lambda c, a, b: f"Dice {c}: {arm_label(a)} > {arm_label(b)}")
    judged = stats.judge_claims(t["comparison"].tolist(), alpha)
    return pd.concat([t[["class", "model", "vs"]], judged], axis=1)
