"""One way to judge and score generators, used by every chapter: the judge segmenter and `generate_and_score`.

    seg = judge(ds, runs.judge_dir(runs_root), steps=judge_steps, seed=seed)
    scored = generate_and_score([load_generator(p) for p in folders], ds, seg, n_test=16, seeds=[0, 1])
    scored.rows        # long form, one row per (model, train_seed, condition, seed, slice, patient, metric, class)
    scored.generated("difflung", seed=0)   # the images behind those rows, for sample figures

Rules (the same for every chapter, so two chapters report the same number for the same model and slices):
- Test subset: `n_test` slices spread evenly over the test split in its stored order (sorted by patient), the
  whole split when it has no more; no randomness (`subset_indices`).
- Seeding (common random numbers): the noise of test slice i under sampling seed s comes from a CPU
  torch.Generator seeded from (s, i) only (`slice_generator`), never from the model, the subset or the batch:
  every generator sees the same initial noise for the same mask and seed.
- Scores per generated slice: PSNR and SSIM against the real slice of the same mask (model window, data range
  2.0), and Dice per class between the judge's reading of the generated slice and the full mask. Rows of model
  "real" hold the judge's Dice on the real slices (the ceiling), with seed and train_seed -1.
- Images are compared in the model window: HU [-1000, 400] mapped to [-1, 1].
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from difflung import labels as L
from difflung.judging.metrics import DATA_RANGE, dice_per_class, psnr_ssim

SCHEMA = ("model", "train_seed", "condition", "seed", "slice", "patient", "metric", "class", "value")
JUDGE_CHANNELS = (16, 32, 64, 128)  # MONAI UNet, strides 2: images must be divisible by 8


# ---------------------------------------------------------------------------------------------------------------
# the judge

def judge_config(steps: int, batch_size: int = 16):
    """The judge's one training rule: a MONAI UNet of `JUDGE_CHANNELS`, `steps` optimisation steps.

    Two choices differ from the downstream segmenter's, because the judge must read classes that are partly
    defined by absolute attenuation (emphysema below -950 HU against healthy lung near -850 HU): no intensity
    shift or noise augmentation (a +-70 HU shift erases that difference), and class-weighted loss (inverse square
    root of pixel frequency), so that lesions a few percent of the pixels weigh in. Measured on the phantom at
    64x64 (mean per-image Dice on real test slices, one seed each): without intensity augmentation emphysema
    0.19 -> 0.27 (16 patients, 1,500 steps); class weighting on top, 40 patients, 2,000 steps: emphysema
    0.23 -> 0.34, fibrosis 0.42 -> 0.42, GGO 0.61 -> 0.55. Emphysema is what the weighting is for.
    """
    from difflung.segmentation import SegConfig

    return SegConfig(channels=JUDGE_CHANNELS, strides=(2,) * (len(JUDGE_CHANNELS) - 1), steps=steps,
                     batch_size=batch_size, shift_prob=0.0, noise_prob=0.0,
                     class_weighting="inverse_sqrt_frequency")


def judge(dataset, folder, *, steps: int, batch_size: int = 16, seed: int = 0, device: str = "auto",
          progress: bool = False):
    """The judge (faithfulness) segmenter: trained on the training split's real slices, saved in `folder` and
    reused while its reuse key (training data, config, seed) is unchanged.

    Args:
        dataset: the phantom `Dataset`.
        folder: where it lives (`difflung.core.runs.judge_dir(runs_root)`).
        steps, batch_size: its training budget (`judge_config`).
        seed: its training seed.
        device: "auto", "cpu" or "cuda".
    Returns:
        the `Segmenter`.
    """
    from difflung.core.provenance import resolve_device
    from difflung.segmentation import fit_segmenter

    train = dataset.split("train")
    # the training shell's reuse rule (config, classes, seed, the training split's sha256)
    return fit_segmenter(folder, train.images, train.labels, dataset.classes, judge_config(steps, batch_size), seed,
                         dataset_sha256=dataset.manifest["splits"]["train"]["sha256"], device=resolve_device(device),
                         progress=progress)


# ---------------------------------------------------------------------------------------------------------------
# subset and seeding

def subset_indices(n_slices: int, n_test: int) -> np.ndarray:
    """`n_test` indices spread evenly over a split of `n_slices` (all of them when n_test >= n_slices)."""
    if n_slices == 0:
        raise ValueError("the test split is empty")
    if n_test >= n_slices:
        return np.arange(n_slices)
    return np.unique(np.linspace(0, n_slices - 1, n_test).round().astype(int))


def rare_rich(labels: np.ndarray, n: int) -> np.ndarray:
    """Positions of the `n` label maps with the most rare-class pixels (ties: lower position first), for figures."""
    count = np.isin(labels, L.PATHOLOGY_IDS).reshape(len(labels), -1).sum(1)
    return np.argsort(-count, kind="stable")[:n]


def slice_generator(seed: int, index: int) -> torch.Generator:
    """The CPU torch.Generator of test slice `index` under sampling seed `seed` (common random numbers)."""
    state = np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0]
    return torch.Generator().manual_seed(int(state))


# ---------------------------------------------------------------------------------------------------------------
# generate and score

@dataclass
class Scored:
    """Scores in the long-form `SCHEMA` and the generated images behind them."""

    rows: pd.DataFrame
    index: np.ndarray  # (n,) test-split indices of the scored slices
    patient: np.ndarray  # (n,) their patient ids
    real: np.ndarray  # (n, S, S) real slices, [-1, 1]
    labels: np.ndarray  # (n, S, S) their masks
    images: dict = field(default_factory=dict)  # (model, train_seed, condition, seed) -> (n, S, S) [-1, 1]

    def image_key(self, model: str, *, seed: int | None = None, condition: str = "full",
                  train_seed: int | None = None) -> tuple:
        """(model, train_seed, condition, seed) of one image set (first train seed and sampling seed unless given)."""
        hits = [k for k in self.images if k[0] == model and k[2] == condition and (seed is None or k[3] == seed)
                and (train_seed is None or k[1] == train_seed)]
        if not hits:
            raise KeyError(f"no generated images for model {model!r}, seed {seed}, condition {condition!r}")
        return hits[0]

    def generated(self, model: str, *, seed: int | None = None, condition: str = "full",
                  train_seed: int | None = None) -> np.ndarray:
        """The images of one model (first train seed and sampling seed unless given)."""
        return self.images[self.image_key(model, seed=seed, condition=condition, train_seed=train_seed)]


def _score(gen: np.ndarray, real: np.ndarray, labels: np.ndarray, seg, classes, with_quality: bool) -> pd.DataFrame:
    """Long rows (image, metric, class, value) for one batch of images."""
    parts = []
    if seg is not None:
        d = dice_per_class(seg.predict(gen), labels, classes).rename(columns={"dice": "value"}).assign(metric="dice")
        parts.append(d[["image", "metric", "class", "value"]])
    if with_quality:
        q = psnr_ssim(gen, real, DATA_RANGE).melt(id_vars="image", var_name="metric", value_name="value")
        parts.append(q.assign(**{"class": "all"}))
    return pd.concat(parts, ignore_index=True)


def generate_and_score(generators, dataset, seg, *, n_test: int, seeds=(0,), withheld=(), withheld_seeds=None,
                       batch_size: int = 16, progress: bool = False, split: str = "test") -> Scored:
    """Generate the test subset's masks with every generator and sampling seed, and score every image.

    Args:
        generators: `difflung.generators.Generator`s (the same key may come with several training seeds).
        dataset: the `Dataset` whose test split is scored (`split`: another split, e.g. "val" for choosing a
            recipe without looking at the test patients).
        seg: the judge (`judge`); None: PSNR and SSIM only.
        n_test: test slices scored (`subset_indices`).
        seeds: sampling seeds (`slice_generator`).
        withheld: class ids withheld from the masks one at a time (partial masks, condition "no <class>"); the
            pixels of the class are left to the model and Dice is still scored against the full mask.
        withheld_seeds: sampling seeds of the partial masks (default: the first of `seeds`).
        batch_size: masks per forward batch.
    Returns:
        `Scored`: rows in `SCHEMA` order and the generated images.
    """
    from difflung.diffusion.sample import remove_classes

    test = dataset.split(split)
    idx = subset_indices(len(test), n_test)
    real, labels, patient = test.images[idx], test.labels[idx], test.patient[idx].astype(str)
    scored = [c for c in dataset.classes if c != L.BACKGROUND]
    withheld_seeds = list(seeds[:1] if withheld_seeds is None else withheld_seeds)
    runs = [("full", None, s) for s in seeds] + [(f"no {L.BY_ID[c].name}", c, s) for c in withheld
                                                 for s in withheld_seeds]
    parts = [] if seg is None else [_score(real, real, labels, seg, scored, False).assign(
        model="real", train_seed=-1, condition="full", seed=-1)]
    images = {}
    for g in generators:
        for condition, removed, s in runs:
            masks = labels if removed is None else remove_classes(labels, [removed])
            gen = g.sample(masks, generator=[slice_generator(s, i) for i in idx], batch_size=batch_size,
                           progress=progress)  # (n, S, S)
            images[(g.key, g.train_seed, condition, s)] = gen
            parts.append(_score(gen, real, labels, seg, scored, True).assign(
                model=g.key, train_seed=g.train_seed, condition=condition, seed=s))
    rows = pd.concat(parts, ignore_index=True)
    pos = rows.pop("image").to_numpy().astype(int)
    rows["slice"], rows["patient"] = idx[pos], patient[pos]
    return Scored(rows[list(SCHEMA)], idx, patient, real, labels, images)


def write_per_image(path, rows: pd.DataFrame) -> Path:
    """Write long-form rows to `path` (sorted, fixed float format: the same run gives the same bytes)."""
    from difflung.core.metrics_csv import write_metrics

    return write_metrics(Path(path), rows)


def paired(rows: pd.DataFrame, a: str, b: str, metric: str, cls: str = "all", condition: str = "full") -> pd.DataFrame:
    """Scores of models `a` and `b` on the same (sampling seed, slice), for `stats.compare_slices`.

    Returns columns seed, slice, patient, a, b (pairs where either score is missing are dropped).
    """
    sel = rows[(rows["metric"] == metric) & (rows["class"] == cls) & (rows["condition"] == condition)]
    key = ["seed", "slice", "patient"]
    x, y = (sel[sel["model"] == m].groupby(key)["value"].mean().rename(n) for m, n in ((a, "a"), (b, "b")))
    return pd.concat([x, y], axis=1, join="inner").dropna().reset_index()

