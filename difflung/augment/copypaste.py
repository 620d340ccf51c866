"""The copy-paste control: real lesion patches pasted into the healthy lung of other training slices, no generator.

A patch is one connected component (8-connected) of a rare class in a training slice, cut out with its image
values (its HU, in the model window). A new slice starts from a real training slice (the *base*) and receives
patches from other slices (never its own), each turned by a multiple of 90 degrees and optionally mirrored --
which moves pixels without resampling them, so every pasted pixel keeps a real lesion's exact value -- at a spot
where the whole patch lies on the base's healthy lung (label `lung`). Patches are added per class up to that class's
target share of the base's lung field, as the synthetic masks are (`difflung.data.masksynth`), never beyond it.
Only healthy-lung pixels change; everything else of the base slice stays exact.

This is the "simple copy-paste" augmentation (Ghiasi, Cui, Srinivas, Qian, Lin, Cubuk, Le, Zoph: "Simple Copy-Paste
is a Strong Data Augmentation Method for Instance Segmentation"), restricted to healthy lung: the control for "new
lesion placements with real lesion texture" without a generator. Randomness comes only from the numpy Generator.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy.signal import correlate

from difflung import labels as L
from difflung.data.masksynth import components


@dataclass
class Patch:
    """One lesion component of a training slice, cropped: its class, slice, mask and image values."""

    cls: int
    source: int  # index of the training slice it was cut from
    mask: np.ndarray  # (h, w) bool
    values: np.ndarray  # (h, w) float32 image values (meaningful inside `mask`)


@dataclass
class CopyPaste:
    images: np.ndarray  # (n, S, S) float32
    labels: np.ndarray  # (n, S, S) uint8
    base_index: np.ndarray  # (n,) int64: the training slice each new slice was built on
    # one per pasted patch: slice, class, patch (its index in `patch_bank(...)[class]`), source, y0, x0, rot90,
    # flip, pixels
    pastes: list[dict] = field(default_factory=list)


def patch_bank(images: np.ndarray, labels: np.ndarray, classes, min_pixels: int = 4) -> dict[int, list[Patch]]:
    """Connected components (8-connected, >= `min_pixels`) of each class in `labels` (N, S, S), with the
    matching `images` values."""
    bank: dict[int, list[Patch]] = {int(c): [] for c in classes}
    for c, i, sl, piece in components(labels, list(bank), min_pixels):
        bank[c].append(Patch(c, i, piece, np.where(piece, images[i][sl], 0).astype(np.float32)))
    return bank


def _spot(healthy: np.ndarray, shape: np.ndarray, rng: np.random.Generator):
    """Top-left (y, x) of a uniformly drawn offset where all of `shape` lies on `healthy`, or None."""
    if shape.shape[0] > healthy.shape[0] or shape.shape[1] > healthy.shape[1]:
        return None
    inside = correlate(healthy.astype(np.float32), shape.astype(np.float32), mode="valid", method="fft")
    ok = np.flatnonzero(inside.ravel() >= shape.sum() - 0.5)  # FFT round-off: counts are integers
    if ok.size == 0:
        return None
    y0, x0 = np.unravel_index(ok[int(rng.integers(ok.size))], inside.shape)
    return int(y0), int(x0)


def _targets(rare, boost) -> dict[int, float]:
    if isinstance(boost, dict):
        out = {int(c): float(boost[L.BY_ID[int(c)].name]) for c in rare if L.BY_ID[int(c)].name in boost}
    else:
        out = {int(c): float(boost) for c in rare}
    if not out or any(not 0.0 <= v < 1.0 for v in out.values()):
        raise ValueError(f"copy-paste: target shares {out} must be given and in [0, 1)")
    return out


def copy_paste(images, labels, rare, n: int, rng: np.random.Generator, *, boost: float | dict = 0.15,
               min_pixels: int = 4, min_lung_pixels: int = 64, max_tries: int = 30) -> CopyPaste:
    """`n` new training slices: real bases with real lesion patches of other slices pasted into healthy lung.

    Args:
        images: (N, S, S) float32 training images in [-1, 1].
        labels: (N, S, S) uint8 project ids.
        rare: project ids of the classes to paste.
        n: number of new slices.
        rng: numpy Generator, the only source of randomness (bases, patches, turns, spots).
        boost: target share of the lung field per class in each new slice (a float for all, or name -> share).
        min_pixels: smallest lesion component that becomes a patch.
        min_lung_pixels: bases need at least this many healthy-lung pixels.
        max_tries: failed pastes per slice and class after which its target is given up.
    Returns:
        `CopyPaste` (images, labels, base_index, one record per pasted patch).
    Raises:
        ValueError when a class has no patch to copy or no slice can serve as a base.
    """
    images, labels = np.asarray(images, dtype=np.float32), np.asarray(labels)
    if images.ndim != 3 or labels.shape != images.shape:
        raise ValueError(f"images {images.shape} and labels {labels.shape} must both be (N, S, S)")
    targets = _targets(rare, boost)
    bank = patch_bank(images, labels, targets, min_pixels)
    empty = [L.BY_ID[c].name for c, v in bank.items() if not v]
    if empty:
        raise ValueError(f"copy-paste: no lesion of class {', '.join(empty)} (>= {min_pixels} pixels) in the "
                         f"training slices to copy")
    field_ = np.isin(labels, L.LUNG_IDS).sum((1, 2))
    below = np.all([(labels == c).sum((1, 2)) <= t * field_ for c, t in targets.items()], axis=0)
    eligible = np.flatnonzero(((labels == L.LUNG).sum((1, 2)) >= min_lung_pixels) & below)
    if eligible.size == 0:
        raise ValueError(f"copy-paste: no training slice has {min_lung_pixels} healthy-lung pixels and rare-class "
                         f"shares below their targets to paste into")
    base = rng.choice(eligible, size=int(n), replace=True)
    out_img, out_lab, pastes = images[base].copy(), labels[base].copy(), []
    for m in range(int(n)):
        img, lab, n_field = out_img[m], out_lab[m], int(field_[base[m]])
        for c, share in targets.items():
            donors = [j for j, p in enumerate(bank[c]) if p.source != base[m]]  # patches of other slices only
            need, fails = share * n_field - int((lab == c).sum()), 0
            while donors and need > 0 and fails < max_tries:
                fails += 1  # given back when the patch is pasted
                j = donors[int(rng.integers(len(donors)))]
                p = bank[c][j]
                k, flip = int(rng.integers(4)), bool(rng.integers(2))
                mask, vals = np.rot90(p.mask, k), np.rot90(p.values, k)
                if flip:
                    mask, vals = mask[:, ::-1], vals[:, ::-1]
                area = int(mask.sum())
                if area > need:  # would carry the share past its target: try another patch
                    continue
                pos = _spot(lab == L.LUNG, mask, rng)
                if pos is None:
                    continue
                (y0, x0), (h, w) = pos, mask.shape
                lab[y0:y0 + h, x0:x0 + w][mask] = c
                img[y0:y0 + h, x0:x0 + w][mask] = vals[mask]
                pastes.append({"slice": m, "class": c, "patch": j, "source": p.source, "y0": y0, "x0": x0,
                               "rot90": k, "flip": flip, "pixels": area})
                need, fails = need - area, fails - 1
    return CopyPaste(out_img, out_lab, base.astype(np.int64), pastes)
