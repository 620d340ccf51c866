"""One segmenter configuration for every arm, chosen on the validation split.

Candidate configurations (the base config with a few settings changed) are each trained on the real training
slices and scored on the validation patients by mean rare-class Dice. The one every arm trains with is the first
candidate, in the order of preference, whose score lies within one standard error of the best score (the
"one-standard-error rule": Breiman, Friedman, Olshen, Stone, "Classification and Regression Trees"; Hastie,
Tibshirani, Friedman, "The Elements of Statistical Learning"), so a difference the few validation patients cannot
resolve does not overturn the preferred configuration. The test split is never read here: it is scored once, by
`experiment.run_experiment`.

The default candidates cross the two settings the judge segmenter already changed (`difflung.judging.scoring.
judge_config`): the +-70 HU intensity shift, which can erase emphysema's -950 HU cue against healthy lung near
-850 HU, and the class-weighted loss (inverse square root of pixel frequency, `segmentation.class_weights`).

    choice = choose_segmenter(dataset, config, run_dir, tag="phantom", seed=0)
    run_experiment(dataset, run_dir, tag="phantom", config=choice.config, ...)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from difflung import labels as L
from difflung.augment.arms import rare_ids
from difflung.augment.dice import mean_over_patients, pooled_patient_dice
from difflung.core.provenance import provenance, resolve_device, write_json_atomic
from difflung.data.dataset import Dataset
from difflung.judging.plateau import one_se_choice
from difflung.segmentation import SegConfig, fit_segmenter, train_segmenter

CHOICE_FORMAT = "difflung-segmenter-choice/1"
WEIGHTED = "inverse_sqrt_frequency"
# name -> SegConfig settings that differ from the base, in order of preference: first the judge's rule (no shift,
# class-weighted), last the chapter's former default (+-70 HU shift with p = 0.5, unweighted)
CANDIDATES = {
    "no-shift, weighted": {"shift_prob": 0.0, "class_weighting": WEIGHTED},
    "no-shift, unweighted": {"shift_prob": 0.0, "class_weighting": "none"},
    "shift, weighted": {"shift_prob": 0.5, "class_weighting": WEIGHTED},
    "shift, unweighted": {"shift_prob": 0.5, "class_weighting": "none"},
}


def choice_path(run_dir, tag: str) -> Path:
    """Where the choice for dataset `tag` is recorded: `<run_dir>/segmenter_choice_<tag>.json`, beside
    metrics.csv."""
    return Path(run_dir) / f"segmenter_choice_{tag}.json"


@dataclass
class SegChoice:
    name: str  # the chosen candidate
    config: SegConfig  # the base config with the chosen candidate's settings: every arm trains with it
    scores: pd.DataFrame  # per candidate and rare class: validation Dice; per candidate `score` and `se`
    path: Path | None = None  # the JSON record, when written


def validation_score(pred, val, classes, rare) -> tuple[float, float, dict[str, float]]:
    """(score, se, per-class values) of predictions on the validation slices `val`.

    score: the mean over the rare classes held by some validation patient of the primary Dice
    (`difflung.augment.dice`: per patient pooled over its slices, then the mean over patients). se: the standard
    error over validation patients of each patient's mean over the rare classes it holds (NaN below two patients).
    """
    pooled = pooled_patient_dice(pred, val.labels, val.patient, classes)
    per = mean_over_patients(pooled).set_index("class")
    names = [L.BY_ID[c].name for c in rare if per.loc[L.BY_ID[c].name, "n_patients"] > 0]
    if not names:
        raise ValueError(f"no validation patient holds any of {L.names(rare)}: nothing to choose the segmenter on")
    vals = {c: float(per.loc[c, "dice"]) for c in names}
    by_patient = pooled[pooled["class"].isin(names)].groupby("patient")["dice"].mean().dropna().to_numpy()
    se = float(by_patient.std(ddof=1) / np.sqrt(len(by_patient))) if len(by_patient) > 1 else float("nan")
    return float(np.mean(list(vals.values()))), se, vals


def choose_segmenter(dataset, base: SegConfig, run_dir=None, *, tag: str = "phantom", seed: int = 0,
                     candidates: dict | None = None, steps: int | None = None, rare_classes=None,
                     device: str = "auto", keep_models: bool = True, progress: bool = False,
                     max_budgets: int = 1) -> SegChoice:
    """Train each candidate configuration on the training split and pick the best on the validation split.

    Args:
        dataset: dataset artifact (reads its `train` and `val` splits only).
        base: the chapter's segmenter config; each candidate changes only its own settings.
        run_dir: the chapter's run folder: the record goes to `choice_path(run_dir, tag)` (atomic, with
            provenance) and, with `keep_models`, the candidates' segmenters to `<run_dir>/<tag>/choice/<name>`,
            reused while their run key is unchanged. None: nothing is written.
        tag: the dataset's tag ("phantom" or "real"), as in `run_experiment`.
        seed: the candidates' training seed (the same for all: same initial weights and batch order).
        candidates: name -> SegConfig settings (default `CANDIDATES`: intensity shift on/off x loss weighting
            none/inverse-sqrt frequency), in order of preference (`one_se_choice`).
        steps: the candidates' training steps (None: `base.steps`); the chosen config keeps `base.steps`.
        rare_classes: the classes to choose on (as `run_experiment`'s; None: emphysema/GGO/fibrosis or the
            dataset's lesion classes).
        device: "auto", "cpu" or "cuda".
        max_budgets: the chosen configuration is then trained to its own plateau: at 2, 3, ... times `base.steps`
            (each a fresh training: the LR schedule spans its steps) until the validation score stops improving
            by the one plateau rule (`difflung.judging.plateau.plateaued`), at most this many budgets; every arm
            then trains with the steps where it stopped. 1: `base.steps` as given.
    Returns:
        `SegChoice`: the chosen name (`one_se_choice`) and config, and every candidate's validation scores.
    """
    ds = Dataset(dataset)
    candidates = dict(CANDIDATES if candidates is None else candidates)
    if not candidates:
        raise ValueError("choose_segmenter: no candidate configuration given")
    rare = rare_ids(ds.classes, rare_classes)
    if not rare:
        raise ValueError(f"{ds.root}: has no rare class to choose the segmenter on")
    train, val = ds.split("train"), ds.split("val")
    dev = resolve_device(device)
    rows, table = [], {}
    for name, settings in candidates.items():
        cfg = replace(base, **settings, **({} if steps is None else {"steps": int(steps)}))
        if run_dir is not None and keep_models:
            folder = Path(run_dir) / tag / "choice" / _folder_name(name)
            seg = fit_segmenter(folder, train.images, train.labels, ds.classes, cfg, seed, device=dev,
                                dataset_sha256=ds.manifest["splits"]["train"]["sha256"], progress=progress)
        else:
            seg = train_segmenter(train.images, train.labels, ds.classes, cfg, torch.Generator().manual_seed(seed),
                                  device=dev, progress=progress)
        score, se, per_class = validation_score(seg.predict(val.images), val, ds.classes, rare)
        table[name] = {"settings": settings, "score": score, "se": se, "dice": per_class}
        rows += [{"candidate": name, "class": c, "dice": v, "score": score, "se": se} for c, v in per_class.items()]
    best = one_se_choice({k: (v["score"], v["se"]) for k, v in table.items()})
    chosen = replace(base, **candidates[best])
    budgets = _own_plateau(chosen, table[best] if steps is None else None, max_budgets, train, val, ds, rare, seed,
                           dev, None if run_dir is None or not keep_models else Path(run_dir) / tag / "choice",
                           progress)
    chosen = replace(chosen, steps=next(b["steps"] for b in budgets if b.get("chosen")))
    path = None
    if run_dir is not None:
        path = write_json_atomic(choice_path(run_dir, tag), {
            "format": CHOICE_FORMAT, "dataset": str(ds.root), "tag": tag, "chosen_on": "val",
            "rule": "score: mean over rare classes of the mean over validation patients of pooled per-patient Dice; "
                    "chosen: the first candidate within one standard error (over patients) of the best score",
            "rare_classes": L.names(rare), "n_val_patients": len(set(val.patient.tolist())),
            "n_val_slices": len(val), "candidate_steps": int(steps if steps is not None else base.steps),
            "chosen": best, "config": asdict(chosen), "steps_curve": budgets,
            "candidates": [{"name": k, **v} for k, v in table.items()],  # in preference order
            "provenance": provenance(config={"base": asdict(base), "candidates": candidates}, seed=seed,
                                     device=dev)})
    return SegChoice(best, chosen, pd.DataFrame(rows, columns=["candidate", "class", "dice", "score", "se"]), path)


def _own_plateau(cfg: SegConfig, first: dict | None, max_budgets: int, train, val, ds, rare, seed: int, dev,
                 folder: Path | None, progress: bool) -> list[dict]:
    """Validation scores of `cfg` at 1, 2, ... times its steps until the plateau rule holds or `max_budgets`; the
    entry marked "chosen" (the best before the plateau, else the last) gives the steps every arm trains with.
    `first`: the candidate's score at 1 budget, if known."""
    from difflung.judging.plateau import Score, plateaued

    out = []
    for k in range(1, max(1, int(max_budgets)) + 1):
        c = replace(cfg, steps=cfg.steps * k)
        if k == 1 and first is not None:
            score, se = first["score"], first["se"]
        else:
            if folder is not None:
                seg = fit_segmenter(folder / f"steps-{c.steps}", train.images, train.labels, ds.classes, c, seed,
                                    device=dev, dataset_sha256=ds.manifest["splits"]["train"]["sha256"],
                                    progress=progress)
            else:
                seg = train_segmenter(train.images, train.labels, ds.classes, c, torch.Generator().manual_seed(seed),
                                      device=dev, progress=progress)
            score, se, _ = validation_score(seg.predict(val.images), val, ds.classes, rare)
        out.append({"steps": c.steps, "score": score, "se": se})
        if plateaued([Score(o["score"], o["se"], 0, ()) for o in out]):
            # plateaued: the earlier budget that was as good is the plateau's own (fewer steps, same score)
            out[max(range(len(out) - 1), key=lambda i: out[i]["score"])]["chosen"] = True
            return out
    out[-1]["chosen"] = True
    return out


def _folder_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in name)
