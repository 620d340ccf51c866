"""Lesion shapes for insertion: lesions of the phantom placed on a real scan's healthy lung (`--synthesize`), and
the new lesions a synthesised mask adds to its base slice (the `+insert` arm).

`--synthesize CLASS --target-ml N` draws donor lesions from phantom patients rendered at the scan's pixel size
(`phantom_lesion_sources`) and pastes them with `difflung.data.masksynth`'s pasting until they add up to N ml
(within `TARGET_TOLERANCE`, never above: `synthesize_lesions`).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from difflung import labels as L
from difflung.data.ctio import read_volume
from difflung.insertion.scan_io import InsertError, lesion_class_id, partial_path

PHANTOM_CLASSES = (L.EMPHYSEMA, L.GGO, L.FIBROSIS)  # classes whose shapes `--synthesize` can draw
TARGET_TOLERANCE = 0.10  # --target-ml: the placed volume lies within 10 % of the target, else an error


def phantom_lesion_sources(cls: int, pixel_mm: float, rng: np.random.Generator, *, min_lesions: int = 30,
                           max_patients: int = 16, fov_mm: float = 350.0) -> np.ndarray:
    """Phantom label slices holding class `cls`, rendered at `pixel_mm` pixels: (K, S, S) uint8 lesion donors."""
    from difflung.data.masksynth import lesion_bank
    from difflung.phantom import PhantomConfig, phantom_patient

    knobs = {L.BY_ID[c].name: (0.15 if c == cls else 0.0) for c in PHANTOM_CLASSES}
    size = int(round(fov_mm / pixel_mm))
    cfg = PhantomConfig(size=size, fov_mm=size * pixel_mm, slices_per_patient=8, **knobs)
    found, n = [], 0
    for i in range(max_patients):
        v = phantom_patient(f"donor{i}", rng, cfg)
        keep = (v.labels == cls).any(axis=(1, 2))
        found.append(v.labels[keep])
        n += sum(len(x) for x in lesion_bank(v.labels[keep], [cls]).values())
        if n >= min_lesions:
            break
    return np.concatenate(found)


def synthesize_lesions(labels: np.ndarray, cls: int, target_ml: float, voxel_ml: float, sources: np.ndarray,
                       rng: np.random.Generator, *, stop: float = 0.02, max_fails: int = 300,
                       max_rotation_deg: float = 180.0, max_dilation: int = 2) -> np.ndarray:
    """Lesions of class `cls` pasted on healthy lung (label 2) of `labels` (z, y, x) until `target_ml` is reached.

    One lesion at a time, as `masksynth.synthesize_masks` pastes them (a connected component of `sources`,
    rotated, flipped, dilated, placed entirely on healthy lung), on a slice drawn in proportion to its healthy
    lung; a lesion larger than what is still missing is not used, so the total never exceeds the target. Stops
    within `stop` of the target or after `max_fails` lesions in a row that do not fit.
    Returns (z, y, x) uint8: `cls` on the new lesions, 0 elsewhere. InsertError when the total ends more than
    TARGET_TOLERANCE below the target.
    """
    from difflung.data.masksynth import _place, _transform, lesion_bank

    bank = lesion_bank(sources, [cls])[cls]
    if not bank:
        raise InsertError(f"--synthesize {L.BY_ID[cls].name}: no lesion shapes of this class to paste")
    lab = labels.copy()
    healthy = (lab == L.LUNG).sum(axis=(1, 2)).astype(np.float64)
    target = target_ml / voxel_ml  # voxels
    if target > 0.5 * healthy.sum():
        raise InsertError(f"--target-ml {target_ml:g}: more than half of the healthy lung "
                          f"({healthy.sum() * voxel_ml:.0f} ml) would become lesion")
    remaining, fails = target, 0
    while remaining > stop * target and fails < max_fails:
        k = int(rng.choice(len(lab), p=healthy / healthy.sum()))
        les = bank[int(rng.integers(len(bank)))]
        shape = _transform(les.mask, float(rng.uniform(-max_rotation_deg, max_rotation_deg)),
                           bool(rng.integers(2)), int(rng.integers(max_dilation + 1)))
        area = int(shape.sum())
        pos = _place(lab[k] == L.LUNG, shape, area, 1.0, rng) if 0 < area <= remaining else None
        if pos is None:
            fails += 1
            continue
        (y0, x0), (h, w) = pos, shape.shape
        region = np.zeros(lab.shape[1:], bool)
        region[y0:y0 + h, x0:x0 + w] = shape
        region &= lab[k] == L.LUNG  # never outside healthy lung
        lab[k][region] = cls
        remaining -= int(region.sum())
        healthy[k] -= int(region.sum())
        fails = 0
    placed = (target - remaining) * voxel_ml
    if placed < (1 - TARGET_TOLERANCE) * target_ml:
        raise InsertError(f"--target-ml {target_ml:g}: only {placed:.1f} ml of {L.BY_ID[cls].name} could be placed "
                          f"in the healthy lung ({healthy.sum() * voxel_ml:.0f} ml left)")
    return np.where((lab == cls) & (labels != cls), cls, 0).astype(np.uint8)


def synthesize_mask_file(ct, out, classes, target_ml: float, *, seed: int = 0) -> dict:
    """Place lesions of several classes in one CT's healthy lung (`--synthesize` for each, one after the other,
    each on the lung the earlier ones left healthy) and write them as a lesion mask with the CT's geometry.

    One mask lets one `insert_lesions(ct, ..., lesion_mask=out)` call paint every class in a single pass.
    Args:
        ct: CT file or DICOM folder; out: the mask file to write (.nii.gz etc.; written atomically).
        classes: class names or ids (phantom classes); target_ml: the volume of each class.
        seed: seeds the donors and the placement (class i uses the i-th child streams).
    Returns {class name: placed ml}.
    """
    from difflung.data.ct_anatomy import segment
    from difflung.data.ctio import write_volume

    vol = read_volume(ct)
    labels = segment(vol.hu, vol.spacing, name=str(ct)).labels()
    lesions, placed = np.zeros(labels.shape, np.uint8), {}
    streams = np.random.SeedSequence(seed).spawn(len(classes))
    for c, ss in zip((lesion_class_id(c, PHANTOM_CLASSES, "--synthesize") for c in classes), streams):
        rng_bank, rng_place = (np.random.default_rng(s) for s in ss.spawn(2))
        donors = phantom_lesion_sources(c, float(np.mean(vol.spacing[1:])), rng_bank)
        new = synthesize_lesions(labels, c, float(target_ml), vol.voxel_ml, donors, rng_place)
        lesions[new > 0], labels[new > 0] = c, c
        placed[L.BY_ID[c].name] = float((new > 0).sum()) * vol.voxel_ml
    out = Path(out)
    tmp = partial_path(out)
    try:
        write_volume(tmp, lesions, vol.spacing, origin=tuple(vol.origin), direction=tuple(vol.direction))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return placed


def new_lesions(base_labels: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Pathology of `masks` that `base_labels` does not have there: (N, S, S) project ids, 0 elsewhere."""
    base_labels, masks = np.asarray(base_labels), np.asarray(masks)
    if base_labels.shape != masks.shape:
        raise ValueError(f"base labels {base_labels.shape} and masks {masks.shape} must have the same shape")
    new = (masks != base_labels) & np.isin(masks, L.PATHOLOGY_IDS)
    return np.where(new, masks, 0).astype(np.uint8)
