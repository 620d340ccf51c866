"""Running the augmentation experiment: the arms' training sets built, a segmenter trained per arm and training
seed, scored on the held-out test slices, and the rows of the chapter's metrics.csv.

Every arm is scored the same way (`difflung.augment.dice`): per seed, the primary Dice of a class is the mean over
test patients whose truth holds it of the Dice pooled over the patient's slices (metric `dice`); the secondary is
the mean per-image Dice over the test slices whose truth holds it (metric `dice_image`).

    res, synthesis, balance = run_experiment(dataset, run_dir, tag="phantom", models=..., config=..., seeds=...)

The arms and their data: `difflung.augment.arms`; the statistics over seeds: `difflung.augment.comparisons`.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from difflung import labels as L
from difflung.augment.arms import (ARMS, DOSE_ARM, SYNTHETIC_ARMS, Arm, build_arms, build_dose_arms,
                                   class_balance_table, dose_share, n_extra, rare_ids)
from difflung.augment.comparisons import summarize_arms
from difflung.augment.dice import mean_over_patients, mean_over_truth_slices, per_image_dice, pooled_patient_dice
from difflung.augment.synthetic import Synthesis, SyntheticSet, inserted_sets, paint_masks, synthesize_masks
from difflung.core.parallel import run_jobs
from difflung.core.provenance import atomic_path, provenance, resolve_device
from difflung.data.dataset import Dataset, Slices
from difflung.segmentation import SegConfig, fit_segmenter, train_segmenter


def training_seeds(seed: int, n_seeds: int, min_seeds: int = 2) -> list[int]:
    """seed, seed + 1, ..., seed + n_seeds - 1; an error below `min_seeds` (the profile's floor of seeds per arm;
    intervals need `stats.MIN_SEEDS` whatever the floor)."""
    if n_seeds < min_seeds:
        raise ValueError(f"n_seeds={n_seeds}: the profile asks for at least min_seeds={min_seeds} training seeds "
                         f"per arm")
    return list(range(seed, seed + n_seeds))


# ---------------------------------------------------------------------------------------------------------------
# training and scoring the arms over seeds

@dataclass
class Results:
    tag: str  # "phantom" or "real"
    classes: list[int]
    seeds: list[int]
    dice: pd.DataFrame  # per slice: arm, seed, image, class, class_id, dice, truth (the truth holds the class)
    # arm, seed, class, dice (primary: mean over patients of pooled Dice), n_patients, dice_image, n_slices
    per_seed: pd.DataFrame
    test: Slices
    example_idx: np.ndarray
    examples: dict[str, np.ndarray]  # arm -> (k, S, S) predictions of the first seed on example_idx
    timings: list[dict]
    n_extra: int
    notes: list[str] = field(default_factory=list)
    # per patient: arm, seed, patient, class, class_id, intersection, pred_pixels, truth_pixels, dice (pooled)
    patients: pd.DataFrame | None = None


def example_slices(test: Slices, rare: list[int], k: int = 4) -> np.ndarray:
    """The `k` test slices with most rare-class pixels (ties by index): the same slices for every arm."""
    score = np.isin(test.labels, rare).sum((1, 2)) if rare else np.zeros(len(test))
    return np.sort(np.argsort(-score, kind="stable")[:k])


def per_seed_dice(dice: pd.DataFrame, patients: pd.DataFrame) -> pd.DataFrame:
    """Per (arm, seed, class), the same way for every arm (`difflung.augment.dice`): `dice`, the mean over test
    patients whose truth holds the class of the Dice pooled over each patient's slices, and `n_patients`;
    `dice_image`, the mean per-image Dice over the slices whose truth holds the class, and `n_slices`.

    Args:
        dice: per slice (arm, seed, image, class, dice, truth), from `dice.per_image_dice`.
        patients: per patient (arm, seed, patient, class, dice), from `dice.pooled_patient_dice`.
    """
    keys = ("arm", "seed")
    return mean_over_patients(patients, keys).merge(mean_over_truth_slices(dice, keys), on=[*keys, "class"],
                                                    how="outer", validate="one_to_one")


def _fit_and_predict(images, labels, classes, config: SegConfig, seed: int, device: str, test_images,
                     folder=None, data_sha256: str = "") -> tuple[np.ndarray, dict]:
    """One arm, one training seed: train (or reuse the segmenter `folder` holds for the same run key), predict
    the test slices. A module-level function, so `parallel.run_jobs` can run it in a worker process."""
    if folder is None:
        seg = train_segmenter(images, labels, classes, config, torch.Generator().manual_seed(int(seed)),
                              device=device, progress=False)
    else:
        seg = fit_segmenter(folder, images, labels, classes, config, int(seed), dataset_sha256=data_sha256,
                            device=device, progress=False)
    t0 = time.perf_counter()
    pred = seg.predict(test_images)
    return pred, {"train_s": seg.info["wall_s"], "train_images_per_s": seg.info["images_per_s"],
                  "predict_s": round(time.perf_counter() - t0, 3), "n_train": len(images)}


def _data_sha256(images: np.ndarray, labels: np.ndarray) -> str:
    h = hashlib.sha256(np.ascontiguousarray(images, dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.uint8).tobytes())
    return h.hexdigest()


def train_and_evaluate(arms: dict[str, Arm], test: Slices, classes, config: SegConfig, seeds, run_dir, *,
                       tag: str = "phantom", rare: list[int] = (), device: str = "auto", n_examples: int = 4,
                       save_models: bool = True, workers: int = 1) -> Results:
    """Train every arm with every seed (same config, steps and seeds), predict the test slices, score Dice.

    Seed s gives every arm the same generator, hence the same initial weights and augmentation stream.
    With `save_models` each segmenter is kept under `<run_dir>/<tag>/segmenters/<arm>` (the first seed) or
    `<arm>-seed<k>`, and reused while its run key (config, classes, seed, the arm's training data) is unchanged,
    so an interrupted chapter resumes; per-slice Dice goes to `<run_dir>/<tag>/dice_per_slice.csv`. `workers` > 1
    trains that many at once, one thread each (`difflung.core.parallel`). Pooled per-patient Dice goes to
    `<run_dir>/<tag>/dice_per_patient.csv`.
    """
    out = Path(run_dir) / tag
    dev = resolve_device(device)
    ex = example_slices(test, list(rare), n_examples)
    jobs = [(name, int(s)) for name in arms for s in seeds]
    sha = {name: _data_sha256(a.images, a.labels) for name, a in arms.items()} if save_models else {}
    folder = lambda name, s: (out / "segmenters" / (name.lstrip("+") + ("" if s == int(seeds[0]) else f"-seed{s}"))
                              if save_models else None)
    done = run_jobs(_fit_and_predict, [
        (arms[name].images, arms[name].labels, classes, config, s, dev, test.images, folder(name, s),
         sha.get(name, "")) for name, s in jobs], workers=workers, device=dev)
    frames, pframes, timings, examples = [], [], [], {}
    for (name, s), (pred, timing) in zip(jobs, done):
        timings.append({"dataset": tag, "arm": name, "seed": s, **timing})
        for f, d in ((frames, per_image_dice(pred, test.labels, classes)),
                     (pframes, pooled_patient_dice(pred, test.labels, test.patient, classes))):
            d.insert(0, "seed", s)
            d.insert(0, "arm", name)
            f.append(d)
        if s == int(seeds[0]):
            examples[name] = pred[ex]
    dice, patients = pd.concat(frames, ignore_index=True), pd.concat(pframes, ignore_index=True)
    out.mkdir(parents=True, exist_ok=True)
    for name, frame in (("dice_per_slice.csv", dice), ("dice_per_patient.csv", patients)):
        with atomic_path(out / name) as tmp:
            frame.to_csv(tmp, index=False, float_format="%.6g")
    # the extra count the registry's arms share (dose-response arms add other counts, see `synthetic_share`)
    n = max((a.n_extra for k, a in arms.items() if k in ARMS), default=0)
    return Results(tag, list(classes), [int(s) for s in seeds], dice, per_seed_dice(dice, patients), test, ex,
                   examples, timings, n, patients=patients)


def metric_rows(res: Results, *, generator: np.random.Generator) -> list[dict]:
    """Tidy rows for metrics.csv.

    Per training seed (seed >= 0): `dice`, the primary Dice (mean over test patients of the Dice pooled over each
    patient's slices: the rows `difflung.judging.claims` reads), and `dice_image`, the secondary (mean per-image
    Dice over the slices whose truth holds the class). Per (arm, class), seed = -1: `dice_mean`, `dice_lo`,
    `dice_hi`, `n_seeds` of the primary (interval NaN below `stats.MIN_SEEDS` seeds), `n_patients` and `n_slices`
    (the fixed patient and slice sets), then `dice_image_mean`, `dice_image_lo`, `dice_image_hi`. Per
    dose-response arm and `ref` when there is one: `synthetic_share` (class "all"). Then the test set's sizes.
    `generator` drives the bootstrap intervals (primary first, then secondary)."""
    ps = res.per_seed
    rows = [{"model": r.arm, "metric": m, "class": r["class"], "seed": r.seed, "value": r[m], "dataset": res.tag}
            for _, r in ps.iterrows() for m in ("dice", "dice_image")]
    sizes = ps.groupby(["class", "arm"])[["n_patients", "n_slices"]].max()
    summaries = {m: summarize_arms(ps.rename(columns={"arm": "model", m: "value"}), generator=generator)
                 for m in ("dice", "dice_image")}
    image = summaries["dice_image"].set_index(["class", "model"])
    for _, r in summaries["dice"].iterrows():
        q = image.loc[(r["class"], r.model)]
        vals = {"dice_mean": r["mean"], "dice_lo": r.lo, "dice_hi": r.hi, "n_seeds": r.n_seeds,
                "n_patients": sizes.loc[(r["class"], r.model), "n_patients"],
                "n_slices": sizes.loc[(r["class"], r.model), "n_slices"],
                "dice_image_mean": q["mean"], "dice_image_lo": q.lo, "dice_image_hi": q.hi}
        rows += [{"model": r.model, "metric": k, "class": r["class"], "seed": -1, "value": float(v),
                  "dataset": res.tag} for k, v in vals.items()]
    arms = sorted(set(ps.arm))
    if any(dose_share(a) is not None and a != "ref" for a in arms):
        rows += [{"model": a, "metric": "synthetic_share", "class": "all", "seed": -1, "value": dose_share(a),
                  "dataset": res.tag} for a in arms if dose_share(a) is not None]

    def total(metric, value, cls="all"):
        rows.append({"model": "all", "metric": metric, "class": cls, "seed": -1, "value": value, "dataset": res.tag})

    total("n_test_slices", len(res.test))
    total("image_size", res.test.labels.shape[-1])
    for c in res.classes:  # truth pixels per class in the test slices: 0 means Dice can only be 0 (false positives)
        total("test_pixels", int((res.test.labels == c).sum()), L.BY_ID[c].name)
    total("n_test_patients", len(set(res.test.patient.tolist())))
    total("n_extra_images", res.n_extra)
    return rows


def timing_record(results: list[Results], synthetic: dict[str, SyntheticSet] | None, *, config: SegConfig,
                  seed: int, extra: dict | None = None) -> dict:
    """Wall times and images/s of training and painting, with provenance (these vary from run to run)."""
    return {"segmentation": [t for r in results for t in r.timings],
            "synthesis": {arm: {"seconds": s.seconds, "images_per_s": s.images_per_s, "n": len(s.images)}
                          for arm, s in (synthetic or {}).items()},
            "provenance": provenance(config={"segmentation": asdict(config), **(extra or {})}, seed=seed)}


# ---------------------------------------------------------------------------------------------------------------
# the experiment on one dataset

def _masks_for_arms(train: Slices, classes, rare, n, seed, boost, need: bool):
    """Synthesised masks and their report; without lesion pixels to copy: (None, empty, note) unless `need`."""
    try:
        ms = synthesize_masks(train, classes, rare, n, seed, boost)
        return ms, None
    except ValueError as e:
        if need:
            raise
        return None, f"no masks synthesised ({e}); oversample repeats rare-class slices uniformly"


def run_experiment(dataset, run_dir, *, tag: str, models: dict, config: SegConfig, seeds, seed: int,
                   mix_ratio: float, boost: float | dict, sampler: str, sampler_steps: int | None,
                   rare_classes=None, device: str = "auto", eval_splits=("test",),
                   n_examples: int = 4, workers: int = 1, dose_shares=(),
                   progress: bool = False) -> tuple[Results, Synthesis, pd.DataFrame]:
    """Synthesise masks and images, build the arms, train and score them on one dataset.

    Args:
        dataset: dataset artifact (phantom or real CT).
        run_dir: the chapter's run folder; outputs go to `<run_dir>/<tag>/`.
        tag: "phantom" or "real" (the `dataset` column of metrics.csv).
        models: synthetic arm -> generator folder trained on this dataset; arms without one are left out,
            the arms without synthetic data always run.
        config: the segmentation model and its number of steps, the same for every arm.
        seeds: training seeds (each arm trains once per seed).
        seed: seeds mask synthesis, image sampling, the oversampling and the copy-paste draws.
        mix_ratio: extra images per real training image (synthetic, oversampled or copy-paste).
        boost: target fraction of the lung field per boosted class in each synthetic mask and copy-paste slice.
        sampler, sampler_steps: diffusion sampler and its steps (None: the sampler's default).
        rare_classes: classes to boost; None: emphysema/GGO/fibrosis, or the dataset's lesion classes.
        eval_splits: held-out splits to score on (no step of the experiment uses them otherwise).
        workers: segmenters trained at once, one thread each (`difflung.core.parallel.run_jobs`).
        dose_shares: the Diff-Lung arm's dose-response, e.g. (0, 0.25, 0.5, 1.0): per share > 0 an arm
            `+difflung@<share>` (`arms.dose_arm`) of real + share x len(train) Diff-Lung images, all taken from one
            set painted from its own synthesised masks (each larger share holds the smaller's images); share 0 is
            `ref`. Needs `models["+difflung"]`; without it the dose-response is left out with a note.
    Returns:
        (results, synthesis, class-balance table). If masks cannot be synthesised (too few lesion pixels in the
        training split) and no model needs them, `oversample` repeats rare-class slices uniformly, `copypaste` is
        left out, and `results.notes` says so.
    """
    ds = Dataset(dataset)
    rare = rare_ids(ds.classes, rare_classes)
    if not rare:
        raise ValueError(f"{ds.root}: has no rare class to study (classes: {L.names(ds.classes)})")
    train = ds.split("train")
    n = n_extra(mix_ratio, len(train))
    try:
        ms, note = _masks_for_arms(train, ds.classes, rare, n, seed, boost, need=bool(models))
    except ValueError as e:
        raise ValueError(f"{ds.root}: cannot synthesise masks for the synthetic arms ({e})") from e
    masks, report = (ms.labels, ms.report) if ms is not None else (None, pd.DataFrame())
    notes = [note] if note else []
    paint = {k: v for k, v in models.items() if ARMS[k].extra == "synthetic"}
    insert = {k: v for k, v in models.items() if ARMS[k].extra == "insert"}
    sets = paint_masks(paint, ds, masks, run_dir, seed=seed, tag=tag, sampler=sampler, steps=sampler_steps,
                       device=device, progress=progress) if paint else {}
    if insert:
        sets.update(inserted_sets(insert, train, ms, run_dir, seed=seed, tag=tag, steps=sampler_steps,
                                   device=device, progress=progress))
    skip = set() if ms is not None else {k for k, a in ARMS.items() if a.extra == "copypaste"}
    if skip:
        notes.append(f"arms {', '.join(sorted(skip))} not run: no lesion to copy ({note})")
    arms = build_arms(train, n, masks, sets, rare=rare, seed=seed, boost=boost,
                      arms=[k for k in ARMS if (k not in SYNTHETIC_ARMS or k in sets) and k not in skip])
    missing = [a for a in SYNTHETIC_ARMS if a not in sets]
    if missing:
        notes.append(f"arms {', '.join(missing)} not run: no generator trained on this dataset was given")
    balance = class_balance_table(arms, rare, masks)
    dose = None
    if dose_shares and DOSE_ARM not in paint:
        notes.append(f"dose-response not run: no {DOSE_ARM} generator trained on this dataset was given")
    elif dose_shares:
        dose = _dose_set(paint[DOSE_ARM], ds, train, rare, dose_shares, run_dir, seed=seed, tag=tag, boost=boost,
                         sampler=sampler, sampler_steps=sampler_steps, device=device, progress=progress)
        arms.update(build_dose_arms(train, dose, dose_shares))
    parts = [ds.split(s) for s in eval_splits]
    test = Slices(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("images", "labels", "patient", "z")))
    res = train_and_evaluate(arms, test, ds.classes, config, list(seeds), run_dir, tag=tag, rare=rare,
                             device=device, n_examples=n_examples, workers=workers)
    res.notes = notes
    return res, Synthesis(masks, report, sets, dose), balance


DOSE_SET = f"{DOSE_ARM}-dose"  # the dose-response's painted set: `<run_dir>/<tag>/synthetic_difflung-dose.npz`


def _dose_set(model_dir, ds: Dataset, train: Slices, rare, shares, run_dir, *, seed: int, tag: str, boost,
              sampler: str, sampler_steps: int | None, device: str, progress: bool) -> SyntheticSet:
    """One Diff-Lung set for the largest share: masks synthesised from `seed` (as the synthetic arms' are, but
    as many as the largest share needs), painted with the same sampler and seed."""
    k = int(round(max(float(s) for s in shares) * len(train)))
    if k < 1:
        raise ValueError(f"dose_shares {list(shares)}: the largest gives no Diff-Lung image for {len(train)} "
                         f"training slices")
    ms = synthesize_masks(train, ds.classes, rare, k, seed, boost)
    return paint_masks({DOSE_SET: model_dir}, ds, ms.labels, run_dir, seed=seed, tag=tag, sampler=sampler,
                       steps=sampler_steps, device=device, progress=progress)[DOSE_SET]
