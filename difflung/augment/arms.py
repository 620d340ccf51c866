"""The arms of the augmentation experiment and each arm's training set.

An experiment compares *arms*, each the same MONAI UNet (`difflung.segmentation`) trained for the same number
of steps with the same seeds on a different training set, scored on the held-out test slices:

    ref          real training slices only
    oversample   real + `n_extra` real slices with rare classes, drawn so that the extra set has the rare-class
                 balance of the synthetic masks (`difflung.augment.oversample`): the control for "more rare-class
                 pixels" without new images
    copypaste    real + `n_extra` real slices with real lesion patches (their HU) of other slices pasted into their
                 healthy lung, up to the synthetic masks' boost (`difflung.augment.copypaste`): the control for
                 "new lesion placements" without a generator
    +segguided   real + `n_extra` synthetic pairs: synthesised masks, images by Segmentation-Guided Diffusion
    +difflung    real + the same `n_extra` synthesised masks, images by Diff-Lung (CBMAT)
    +insert      real + the same masks' new lesions inserted into their own real base slices, background kept exact
    +uniform     real + the same masks, images by Diff-Lung's network trained with uniform ablation (CBMAT's control)

`ARMS` is the registry: a new arm is one `ArmSpec` entry. Beside it, the dose-response of the Diff-Lung arm
(`dose_arms`, `build_dose_arms`): real + a share of the real set's size in Diff-Lung images, named `+difflung@<share>`
(share 0 is `ref`). `n_extra = round(mix_ratio * n_real)`; batches draw
uniformly from real + extra, so on average a fraction mix_ratio / (1 + mix_ratio) of each batch is extra. The
synthetic arms paint the same masks (`difflung.augment.synthetic`), so they differ only in the generator.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from difflung import labels as L
from difflung.augment.copypaste import copy_paste
from difflung.augment.oversample import oversample_indices
from difflung.augment.synthetic import SyntheticSet
from difflung.core import runs
from difflung.data.dataset import Slices


@dataclass(frozen=True)
class ArmSpec:
    key: str  # the key stored in metrics.csv
    label: str  # display name in tables and figures
    # what is added to the real slices: "none", "oversample", "copypaste" (real lesion patches pasted into healthy
    # lung of real slices), "synthetic" (whole slices painted from the synthesised masks) or "insert" (the masks'
    # new lesions inserted into their own real base slices, background kept exact)
    extra: str
    model: str | None = None  # synthetic arms: the generator's folder inside a run (runs/<profile>/...)
    producer: str | None = None  # the chapter that writes `model`, named in the error when it is missing
    criteria: str | None = None  # synthetic arms: the chapter folder whose criteria.json judges the generator
    generator: str | None = None  # the generator's key in that criteria.json
    optional: bool = False  # synthetic arms: run only when the run holds the generator (else left out, with a note)


ARMS = {a.key: a for a in (
    ArmSpec("ref", "ref-UNet", "none"),
    ArmSpec("oversample", "oversample-UNet", "oversample"),
    ArmSpec("copypaste", "copy-paste-UNet", "copypaste"),
    ArmSpec("+segguided", "Seg-Guided-UNet", "synthetic", f"{runs.BASELINE_COMPARISON}/models/segguided",
            f"chapter 4 ({runs.BASELINE_COMPARISON})", runs.BASELINE_COMPARISON, "segguided"),
    ArmSpec("+difflung", "Diff-Lung-UNet", "synthetic", f"{runs.CBMAT_TRAINING}/model",
            f"chapter 3 ({runs.CBMAT_TRAINING})", runs.CBMAT_TRAINING, "difflung"),
    ArmSpec("+insert", "Insert-UNet", "insert", f"{runs.CBMAT_TRAINING}/model",
            f"chapter 3 ({runs.CBMAT_TRAINING})", runs.CBMAT_TRAINING, "difflung"),
    # CBMAT's downstream claim: the same network and one-hot masks trained with the parent's uniform ablation
    # (chapter 4's matched comparator where it trained one, else chapter 2's `uniform` strategy)
    ArmSpec("+uniform", "uniform-UNet", "synthetic", f"{runs.MASK_ABLATION}/models/uniform",
            f"chapter 2 ({runs.MASK_ABLATION})", runs.MASK_ABLATION, "uniform", optional=True),
)}
ARM_NAMES = {k: a.label for k, a in ARMS.items()}
SYNTHETIC_ARMS = tuple(k for k, a in ARMS.items() if a.extra in ("synthetic", "insert"))  # arms with a generator
CONTROL_ARMS = tuple(k for k, a in ARMS.items() if a.extra in ("oversample", "copypaste"))  # extra data, no generator
DOSE_ARM = "+difflung"  # the arm whose synthetic share the dose-response varies
RARE_DEFAULT = ("emphysema", "ggo", "fibrosis")  # the poster's rare classes


def dose_arm(share: float) -> str:
    """The key of the dose-response arm with `share` x the real set's size in Diff-Lung images (0: `ref`)."""
    share = float(share)
    if not 0.0 <= share or not np.isfinite(share):
        raise ValueError(f"dose-response share {share!r}: expected a finite share >= 0 of the real set")
    return "ref" if share == 0 else f"{DOSE_ARM}@{share:g}"


def dose_share(key: str) -> float | None:
    """The synthetic share of a dose-response arm key (`ref`: 0), None for any other arm."""
    if key == "ref":
        return 0.0
    if key.startswith(DOSE_ARM + "@"):
        return float(key[len(DOSE_ARM) + 1:])
    return None


def dose_arms(shares) -> dict[float, str]:
    """share -> arm key for a dose-response over `shares` (sorted, duplicates dropped; 0 maps to `ref`)."""
    return {float(s): dose_arm(s) for s in sorted({float(s) for s in shares})}


def arm_order(key: str) -> float:
    """Sort key: registry order, then the dose-response arms by share, other unknown arms last."""
    if key in ARMS:
        return list(ARMS).index(key)
    share = dose_share(key)
    return len(ARMS) + (share / (1 + share) if share is not None else 1)


def arm_label(key: str) -> str:
    """Display name of an arm: the registry's label, `Diff-Lung-UNet @0.25` for a dose-response arm, else its key."""
    if key in ARMS:
        return ARMS[key].label
    share = dose_share(key)
    return f"{ARMS[DOSE_ARM].label} @{share:g}" if share is not None else key


def rare_ids(classes, rare_classes=None) -> list[int]:
    """Project ids of `rare_classes` (names or ids) that the dataset has; None: the poster's three
    (emphysema, GGO, fibrosis) if the dataset has any, else every in-lung pathology class it has (a real CT's
    lesion class, e.g. nodule)."""
    if rare_classes is None:
        found = rare_ids(classes, RARE_DEFAULT)
        return found or [c for c in classes if L.BY_ID[c].pathology and L.BY_ID[c].in_lung]
    wanted = {L.class_id(c) for c in rare_classes}
    return [c for c in classes if c in wanted]


def n_extra(mix_ratio: float, n_real: int) -> int:
    """Extra (synthetic or oversampled) images for `n_real` real training slices."""
    n = int(round(mix_ratio * n_real))
    if n < 1:
        raise ValueError(f"mix_ratio {mix_ratio} gives no extra image for {n_real} training slices")
    return n


# ---------------------------------------------------------------------------------------------------------------
# the arms' training sets

@dataclass
class Arm:
    name: str
    images: np.ndarray  # (N, S, S) real + extra
    labels: np.ndarray
    n_real: int
    n_extra: int


def build_arms(train: Slices, n: int, masks: np.ndarray | None, synthetic: dict[str, SyntheticSet], *,
               rare: list[int], seed: int, arms=None, boost: float | dict = 0.15) -> dict[str, Arm]:
    """The training set of each arm in `arms`: real; real + `n` oversampled real slices (matched to `masks`'
    class balance when given); real + `n` copy-paste slices (`copypaste.copy_paste`: lesion patches up to `boost`
    of the lung field, drawn from `seed`); real + the arm's synthetic set (of `n` images). A synthetic arm without
    a set in `synthetic` is left out. `arms`: keys of `ARMS` (None: all, in registry order)."""
    out = {}
    for name in (arms if arms is not None else ARMS):
        extra = ARMS[name].extra
        if extra == "none":
            out[name] = Arm(name, train.images, train.labels, len(train), 0)
        elif extra == "oversample":
            idx = oversample_indices(train.labels, masks, rare, n, np.random.default_rng(seed))
            out[name] = Arm(name, np.concatenate([train.images, train.images[idx]]),
                            np.concatenate([train.labels, train.labels[idx]]), len(train), n)
        elif extra == "copypaste":
            cp = copy_paste(train.images, train.labels, rare, n, np.random.default_rng(seed), boost=boost)
            out[name] = Arm(name, np.concatenate([train.images, cp.images]),
                            np.concatenate([train.labels, cp.labels]), len(train), n)
        elif name in synthetic:
            s = synthetic[name]
            if len(s.images) != n:
                raise ValueError(f"arm {name}: {len(s.images)} synthetic images, expected {n} like the other arms")
            out[name] = Arm(name, np.concatenate([train.images, s.images]),
                            np.concatenate([train.labels, s.labels]), len(train), n)
    return out


def build_dose_arms(train: Slices, dose: SyntheticSet, shares) -> dict[str, Arm]:
    """The dose-response arms: real + the first round(share x len(train)) images of `dose` (one set of Diff-Lung
    images, so each larger share holds every image of the smaller ones) for every share > 0 (share 0 is `ref`,
    trained anyway). An error when `dose` is too small or a share gives no image."""
    out = {}
    for share, key in dose_arms(shares).items():
        if share == 0:
            continue
        k = int(round(share * len(train)))
        if k < 1 or k > len(dose.images):
            raise ValueError(f"dose-response share {share:g}: {k} images of {len(train)} real slices; the dose set "
                             f"has {len(dose.images)} and a share must give at least one")
        out[key] = Arm(key, np.concatenate([train.images, dose.images[:k]]),
                       np.concatenate([train.labels, dose.labels[:k]]), len(train), k)
    return out


def class_balance_table(arms: dict[str, Arm], rare: list[int], masks: np.ndarray | None = None) -> pd.DataFrame:
    """Per training set: images and each rare class's share of all pixels (%), and the same for the extra
    images alone -- the check that `oversample` (and `copypaste`) add as many rare-class pixels as the synthetic
    arms."""
    rows = []
    sets = [(ARM_NAMES.get(a.name, a.name), a.labels) for a in arms.values()]
    for key, name in (("oversample", "oversampled extra alone"), ("copypaste", "copy-paste extra alone")):
        if key in arms:
            sets.append((name, arms[key].labels[arms[key].n_real:]))
    if masks is not None:
        sets.append(("synthetic masks alone", masks))
    for name, lab in sets:
        distinct = len(np.unique(lab.reshape(len(lab), -1), axis=0)) if len(lab) else 0
        rows.append({"training set": name, "images": len(lab), "distinct masks": distinct,
                     **{f"{L.BY_ID[c].name} %": 100 * float((lab == c).mean()) for c in rare}})
    return pd.DataFrame(rows).set_index("training set")
