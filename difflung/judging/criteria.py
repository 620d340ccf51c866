"""Which classes a run can measure, and whether a generator has converged: one place for every chapter.

Two questions come before any verdict (`difflung.judging.stats.verdict`):
- *Measurable classes.* A class can be judged only when the judge segmenter meets its floor on the real test
  slices (`instruments.judge_validity`) and the class keeps its HU signature at the run's image size (chapter 1's
  `hu_signature.json`, `instruments.read_signature`). `measurable_classes` merges the two, with the reason.
- *Convergence.* Whether a generator meets the convergence criteria on the test masks, noted beside each verdict
  and never a gate (`stats.Comparison`; only the main model never learning its masks gates, `claims.main_learned`)
  (`instruments.convergence`): judge Dice on generated slices within 0.8 to 1.25 times that on real slices for
  each measurable class (above: caricatures), per-class HU Wasserstein-1 at most 50 HU and, for lesions, at most a
  quarter of the class's HU contrast with healthy lung on the training slices, at least 95 % of slices with their
  air within 30 HU of the real slice's, and a real-vs-generated classifier no better than 0.8 on held-out
  patients, which must itself tell real slices from known perturbations of them (positive controls, above 0.8).
  `measure` computes them from a `scoring.Scored` (the same images every other number comes from), with the
  memorisation check and the judge-feature distances (`features`: Fréchet distance, precision, recall, density,
  coverage) beside them (reported, not criteria). `benchmarks/bench_convergence.py` measures time to quality with
  the same `measure`.

Each chapter writes what it measured with `write_criteria`; later chapters read it with `read_criteria`.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from difflung.judging import instruments as I
from difflung import labels as L
from difflung.core.provenance import write_json_atomic

CRITERIA_FILE = "criteria.json"
REAL_FLOOR = "real training slices"  # the judge-feature distances' reference set beside the generated one


def measurable_classes(scored, signature: dict[str, tuple[bool, str]] | None = None) -> dict[str, tuple[bool, str]]:
    """class -> (measurable, reason) from the judge's Dice on real test slices and chapter 1's HU signature.

    Args:
        scored: `scoring.Scored` with the judge's rows (model "real").
        signature: `instruments.read_signature(<chapter 1 run folder>)`; None skips that check.
    """
    real = scored.rows[(scored.rows.model == "real") & (scored.rows.metric == "dice")]
    dice = real.groupby("class", sort=False)["value"].mean().dropna().to_dict()
    out = I.judge_validity(dice)
    for c, (ok, reason) in (signature or {}).items():
        if c in out and out[c][0] and not ok:
            out[c] = (False, reason)
    return out


def _dice_means(rows: pd.DataFrame, model: str, train_seed: int | None, seed: int | None = None) -> dict[str, float]:
    r = rows[(rows.model == model) & (rows.metric == "dice") & (rows.condition == "full")]
    if train_seed is not None:
        r = r[r.train_seed == train_seed]
    if seed is not None:
        r = r[r.seed == seed]
    return r.groupby("class", sort=False)["value"].mean().to_dict()


def _judge(judge):
    """The judge `Segmenter` from itself or its folder; None for None or a folder without a saved judge."""
    if judge is None or not isinstance(judge, (str, Path)):
        return judge
    from difflung.core.training import ModelNotFoundError
    from difflung.segmentation import Segmenter

    try:
        return Segmenter.load(judge)
    except ModelNotFoundError:
        return None


def measure(scored, model: str, *, train: np.ndarray, measurable: dict[str, tuple[bool, str]],
            generator: torch.Generator, train_seed: int | None = None, seed: int | None = None,
            classifier_steps: int = 300, signature: dict[str, tuple[bool, str]] | None = None,
            details: bool = False, train_labels: np.ndarray | None = None, judge=None) -> dict:
    """The convergence criteria of one generator on the scored masks: the one rule of the chapters and of
    `benchmarks/bench_convergence.py` (which scores a training run's checkpoints on the validation split).

    Args:
        scored: `scoring.Scored` holding the generator's images and the judge's rows.
        model: the generator's key; train_seed, seed: which of its image sets (default: the first).
        train: (N, S, S) real training slices in [-1, 1] (memorisation reference).
        measurable: `measurable_classes(scored, ...)`: the judge's Dice ratio uses measurable classes only.
        generator: CPU torch.Generator for the classifier two-sample test, then its positive controls
            (`realism.positive_controls`, on the scored real slices).
        classifier_steps: its training steps.
        signature: chapter 1's HU-signature check. The HU distance needs no judge: it covers every class present
            in the test masks except background and classes whose HU signature the run's size erases, so a model
            is not called converged on anatomy alone while its lesions are wrong.
        details: also return "air" (the `realism.air_check` table) and "classifier" (`classifier_two_sample`).
        train_labels: (N, S, S) masks of `train`: each lesion's HU contrast with healthy lung is measured there
            (`instruments.hu_contrast`) and its W1 is also judged against it. None: absolute W1 only.
        judge: the judge `Segmenter` (or its folder) whose bottleneck features give the Fréchet distance,
            precision, recall, density and coverage against the scored real slices (`features.feature_distances`)
            of the generated slices, of as many real training slices (`REAL_FLOOR`: what other real patients
            score) and of each control's slices. None: no "features".
    Returns:
        {"table": DataFrame (criterion, value, threshold, met), "converged": bool, "memorisation": dict,
        "controls": {control: accuracy}, "contrast": {class: HU} (with train_labels), "features":
        {"generated", REAL_FLOOR or a control: feature_distances dict} (with a judge)}.
    """
    from difflung.diffusion.sample import to_hu
    from difflung.judging.realism import (air_check, classifier_two_sample, hu_wasserstein, memorisation, perturb,
                                          positive_controls, CONTROLS)

    key = scored.image_key(model, seed=seed, train_seed=train_seed)  # (model, train_seed, condition, seed)
    _, train_seed, _, seed = key
    gen = scored.images[key]  # (n, S, S)
    gen_hu, real_hu = to_hu(gen), to_hu(scored.real)
    ok = [c for c, (m, _) in measurable.items() if m and c != "background"]
    # the judge's Dice of the same image set as every other criterion, not the mean over training seeds
    ratio = I.dice_ratios(_dice_means(scored.rows, model, train_seed, seed), _dice_means(scored.rows, "real", None),
                          {c: measurable[c] for c in ok})
    lost = {c for c, (good, _) in (signature or {}).items() if not good}
    present = [L.BY_ID[int(i)].name for i in np.unique(scored.labels) if int(i) != L.BACKGROUND
               and int(i) in L.BY_ID and L.BY_ID[int(i)].name not in lost]
    w1 = hu_wasserstein(gen_hu, real_hu, scored.labels, present)
    contrast = None if train_labels is None else I.hu_contrast(to_hu(train), train_labels, present)
    air = air_check(gen_hu, real_hu, scored.labels, I.AIR_TOLERANCE_HU)
    clf = classifier_two_sample(scored.real, gen, scored.patient, scored.patient, generator=generator,
                                steps=classifier_steps)
    controls = positive_controls(scored.real, scored.labels, scored.patient, generator=generator,
                                 steps=classifier_steps)  # after the test: its draws are those it always had
    table = I.convergence(dice_ratio=ratio, hu_w1=w1, air_share=float(air["ok"].mean()) if len(air) else math.nan,
                          classifier_accuracy=float(clf["accuracy"]), controls=controls,
                          hu_w1_relative=None if contrast is None else I.relative_w1(w1, contrast))
    mem = memorisation(gen, train, scored.real)
    out = {"table": table, "converged": I.converged(table),
           "memorisation": {k: mem[k] for k in ("ratio", "share_flagged", "threshold")}, "controls": controls}
    if contrast is not None:
        out["contrast"] = contrast
    seg = _judge(judge)
    if seg is not None:
        from difflung.judging.features import feature_distances, judge_features

        from difflung.judging.scoring import subset_indices

        real_f = judge_features(seg, scored.real)
        # the floor: as many real training slices (other patients, evenly spread) as there are scored slices
        sets = {"generated": gen, REAL_FLOOR: np.asarray(train)[subset_indices(len(train), len(scored.real))],
                **{c: perturb(scored.real, scored.labels, c) for c in CONTROLS}}
        out["features"] = {name: feature_distances(real_f, judge_features(seg, x)) for name, x in sets.items()}
    return {**out, "air": air, "classifier": clf} if details else out


INSTRUMENT_KEYS = ("controls", "contrast", "features")  # what `measure` reports beside the criteria table


def _plain(v):
    """JSON-ready copy: numpy scalars as Python numbers, NaN as None, dicts recursively."""
    if isinstance(v, dict):
        return {str(k): _plain(x) for k, x in v.items()}
    v = v.item() if isinstance(v, np.generic) else v
    return None if isinstance(v, float) and math.isnan(v) else v


def write_criteria(run_dir, results: dict[str, dict], measurable: dict[str, tuple[bool, str]], **meta) -> Path:
    """`<run_dir>/criteria.json`: per generator key its criteria table and verdict, the instruments' readings
    beside them (`INSTRUMENT_KEYS`, where measured), and the measurable classes."""
    doc = {"measurable": {c: {"measurable": bool(m), "reason": r} for c, (m, r) in measurable.items()},
           "generators": {k: {"converged": bool(v["converged"]), "memorisation": v.get("memorisation", {}),
                              "criteria": v["table"].to_dict(orient="records"),
                              **{i: _plain(v[i]) for i in INSTRUMENT_KEYS if i in v}} for k, v in results.items()},
           **meta}
    return write_json_atomic(Path(run_dir) / CRITERIA_FILE, doc)


def read_criteria(run_dir) -> dict:
    """Read `criteria.json` back: {"measurable": {cls: (ok, reason)}, "converged": {key: bool}, "tables": {key: df},
    "memorisation": {key: dict}, "instruments": {key: {"controls", "contrast", "features" where written}}}.

    Raises FileNotFoundError naming the file when the chapter that writes it has not run.
    """
    path = Path(run_dir) / CRITERIA_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no convergence criteria here; run the chapter that writes them first")
    doc = json.loads(path.read_text())
    gens = doc.get("generators", {})
    return {"measurable": {c: (r["measurable"], r["reason"]) for c, r in doc.get("measurable", {}).items()},
            "converged": {k: v["converged"] for k, v in gens.items()},
            "tables": {k: pd.DataFrame(v["criteria"]) for k, v in gens.items()},
            "memorisation": {k: v.get("memorisation", {}) for k, v in gens.items()},
            "instruments": {k: {i: v[i] for i in INSTRUMENT_KEYS if i in v} for k, v in gens.items()}}


def validity(classes: list[str], measurable: dict[str, tuple[bool, str]], converged: dict[str, bool],
             models: list[str]) -> dict:
    """`stats.Comparison` validity flags for a comparison of `models` on `classes` ("all" for image quality).

    A comparison is not measurable when a class is not measurable (its reason). A generator involved that did not
    meet its convergence criteria (or has no record) gives converged=False, which `stats.verdict` shows as a note,
    never as a gate.
    """
    for c in classes:
        if c != "all" and not measurable.get(c, (False, f"{c}: not scored in this run"))[0]:
            return {"measurable": False, "reason": measurable.get(c, (False, f"{c}: not scored"))[1]}
    bad = list(dict.fromkeys(m for m in models if not converged.get(m, False)))  # a model named twice, once
    if bad:
        return {"converged": False, "reason": f"{', '.join(bad)} did not meet the convergence criteria"}
    return {}


# ---------------------------------------------------------------------------------------------------------------
# what the chapters show

def check(scored, models, *, train: np.ndarray, signature: dict[str, tuple[bool, str]] | None, seed: int = 0,
          classifier_steps: int = 300, run_dir=None, train_labels: np.ndarray | None = None, judge=None,
          **meta) -> tuple[dict[str, tuple[bool, str]], dict[str, dict]]:
    """Measurable classes of a scored run and the convergence criteria (`measure`) of each of `models`.

    Args:
        scored: `scoring.Scored` with the judge's rows and every model's images.
        models: generator keys to measure (their first training and sampling seed).
        train: (N, S, S) real training slices (memorisation reference).
        signature: chapter 1's `instruments.read_signature(...)`.
        seed: seeds each model's classifier two-sample test (the same for every model).
        train_labels, judge: as in `measure` (lesion HU contrast; judge-feature distances).
        run_dir: when given, the results go to `<run_dir>/criteria.json` (`write_criteria`, with `meta`).
    Returns:
        (measurable, {model: `measure` result}).
    """
    measurable = measurable_classes(scored, signature)
    results = {m: measure(scored, m, train=train, measurable=measurable, classifier_steps=classifier_steps,
                          generator=torch.Generator().manual_seed(seed), signature=signature,
                          train_labels=train_labels, judge=_judge(judge)) for m in models}
    if run_dir is not None:
        write_criteria(run_dir, results, measurable, **meta)
    return measurable, results
