"""Patches at physical scale: the training data of the lesion-insertion model (`difflung.insertion.insert`).

Whole-slice models at 32-128 px cannot paint texture into a 512x512 scan at 0.6-0.9 mm. The insertion model is
trained on square patches of `size` pixels cut around lung tissue, every pixel `PATCH_SPACING_MM` = 1.0 mm
wide whatever the source's own pixel spacing, each with its project label map (the model's condition):

    phantom volumes   pathology (emphysema, GGO, fibrosis); half of the patches centred on lesion pixels
    real CT volumes   healthy lung, vessels and airway of real scans (their anatomy from `difflung.data.ct_anatomy`)

A source slice is resampled on the patch grid directly (`sample_plane`: Gaussian anti-aliasing when the grid is
coarser than the slice, then linear interpolation for HU, nearest for labels), so the same function cuts the
training patches and the insertion windows. The patches are written as an ordinary dataset artifact
(`difflung.data.dataset`, `size` = the patch side), so `train_diffusion` trains on them unchanged; the manifest's
params record `pixel_spacing_mm`, and `difflung.diffusion.patch_model.train_patch_model` (training and saving the
model) copies it into the model's `difflung_config.json`, so that insertion refuses a model trained at another
spacing.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import numpy as np
from scipy import ndimage as ndi

from difflung import labels as L
from difflung.data.dataset import Dataset, DatasetError, Slices, Volume, split_patients, window, write_dataset
from difflung.diffusion.patch_model import PATCH_SPACING_MM, SPACING_KEY


# ---------------------------------------------------------------------------------------------------------------
# resampling one slice on a patch grid

def grid_coords(centre_yx, spacing_yx, size: int, out_mm: float = PATCH_SPACING_MM):
    """Source-pixel coordinates (ys, xs), each (size,), of a size x size grid of out_mm pixels centred on centre_yx."""
    off = (np.arange(size, dtype=np.float64) - (size - 1) / 2.0) * out_mm
    return centre_yx[0] + off / spacing_yx[0], centre_yx[1] + off / spacing_yx[1]


def to_grid_index(ys, xs, centre_yx, spacing_yx, size: int, out_mm: float = PATCH_SPACING_MM):
    """The inverse of `grid_coords`: patch-grid coordinates (rows, cols) of source pixels (ys, xs)."""
    c = (size - 1) / 2.0
    return ((np.asarray(ys) - centre_yx[0]) * spacing_yx[0] / out_mm + c,
            (np.asarray(xs) - centre_yx[1]) * spacing_yx[1] / out_mm + c)


def sample_plane(img: np.ndarray, centre_yx, spacing_yx, size: int, out_mm: float = PATCH_SPACING_MM, *,
                 order: int = 1, cval: float = L.MODEL_WINDOW[0]) -> np.ndarray:
    """Resample a 2D slice on a size x size grid of out_mm pixels centred on `centre_yx` (source pixel units).

    Args:
        img: (H, W) source slice (HU, or labels with order=0).
        centre_yx: grid centre in source pixel coordinates (floats allowed).
        spacing_yx: source pixel spacing (y, x) in mm.
        size: grid side in pixels.
        out_mm: grid pixel spacing in mm.
        order: 1 (linear, Gaussian anti-aliasing where the grid is coarser, for images) or 0 (nearest, labels).
        cval: value outside the slice (air for HU; pass 0 for labels).
    Returns (size, size) array, float32 for order 1, the input dtype for order 0.
    """
    ys, xs = grid_coords(centre_yx, spacing_yx, size, out_mm)
    # crop the source around the grid (plus the filter's reach) so that filtering costs O(patch), not O(slice)
    sigma = [max(0.0, (out_mm / s - 1.0) / 2.0) if order else 0.0 for s in spacing_yx]  # skimage's convention
    pad = [int(np.ceil(4 * s)) + 2 for s in sigma]
    y0, y1 = int(np.floor(ys[0])) - pad[0], int(np.ceil(ys[-1])) + pad[0] + 1
    x0, x1 = int(np.floor(xs[0])) - pad[1], int(np.ceil(xs[-1])) + pad[1] + 1
    crop = _crop(img, y0, y1, x0, x1, cval)
    if order == 0:
        yi = np.clip(np.rint(ys - y0).astype(np.int64), 0, crop.shape[0] - 1)
        xi = np.clip(np.rint(xs - x0).astype(np.int64), 0, crop.shape[1] - 1)
        return crop[np.ix_(yi, xi)]
    crop = crop.astype(np.float32)
    if any(sigma):
        crop = ndi.gaussian_filter(crop, sigma, mode="nearest")
    yy, xx = np.meshgrid(ys - y0, xs - x0, indexing="ij")
    return ndi.map_coordinates(crop, [yy, xx], order=1, mode="nearest").astype(np.float32)


def _crop(img: np.ndarray, y0: int, y1: int, x0: int, x1: int, cval) -> np.ndarray:
    """img[y0:y1, x0:x1] with `cval` where the window leaves the slice."""
    h, w = img.shape
    out = np.full((y1 - y0, x1 - x0), cval, dtype=img.dtype)
    sy0, sy1, sx0, sx1 = max(y0, 0), min(y1, h), max(x0, 0), min(x1, w)
    if sy1 > sy0 and sx1 > sx0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = img[sy0:sy1, sx0:sx1]
    return out


# ---------------------------------------------------------------------------------------------------------------
# cutting patches

def cut_patches(volume: Volume, size: int, rng: np.random.Generator, *, per_slice: int = 4,
                out_mm: float = PATCH_SPACING_MM, lesion_share: float = 0.5, min_lung_fraction: float = 0.25,
                max_tries: int = 8) -> Slices:
    """Patches of `size` px at `out_mm` around lung tissue of one volume.

    Args:
        volume: HU and project labels (z, y, x) with their spacing (phantom or prepared real CT).
        size: patch side in pixels.
        rng: the only source of randomness (centres).
        per_slice: patches per slice with lung.
        out_mm: patch pixel spacing.
        lesion_share: share of a slice's patches centred on pathology pixels when the slice has some.
        min_lung_fraction: a patch needs at least this fraction of lung-field pixels (else redrawn).
        max_tries: redraws per patch before it is skipped.
    Returns Slices (images windowed to [-1, 1], labels uint8, patient, z in mm).
    """
    sp = (float(volume.spacing[1]), float(volume.spacing[2]))
    imgs, labs, zs = [], [], []
    for k in range(volume.hu.shape[0]):
        lab = volume.labels[k]
        field = np.isin(lab, L.LUNG_IDS)
        if field.sum() < 16:
            continue
        lung_pool = np.flatnonzero(field.ravel())
        lesion_pool = np.flatnonzero(np.isin(lab, L.PATHOLOGY_IDS).ravel())
        n_lesion = int(round(lesion_share * per_slice)) if lesion_pool.size else 0
        for i in range(per_slice):
            pool = lesion_pool if i < n_lesion else lung_pool
            for _ in range(max_tries):
                cy, cx = np.unravel_index(pool[int(rng.integers(pool.size))], lab.shape)
                pl = sample_plane(lab, (cy, cx), sp, size, out_mm, order=0, cval=L.BACKGROUND)
                if np.isin(pl, L.LUNG_IDS).mean() >= min_lung_fraction:
                    imgs.append(window(sample_plane(volume.hu[k], (cy, cx), sp, size, out_mm)))
                    labs.append(pl.astype(np.uint8))
                    zs.append(k * float(volume.spacing[0]))
                    break
    n = len(imgs)
    if n == 0:
        return Slices(np.zeros((0, size, size), np.float32), np.zeros((0, size, size), np.uint8),
                      np.array([], dtype=str), np.zeros(0, np.float32))
    return Slices(np.stack(imgs), np.stack(labs), np.array([volume.patient] * n), np.array(zs, np.float32))


def phantom_volumes(n_patients: int, rng: np.random.Generator, *, slices_per_patient: int = 12,
                    out_mm: float = PATCH_SPACING_MM, fov_mm: float = 350.0, **knobs) -> list[Volume]:
    """Phantom patients rendered at `out_mm` pixels (size = fov / out_mm), so their patches need no resampling.

    Args:
        n_patients: patients ("P000", ...).
        rng: the only source of randomness.
        slices_per_patient: slices per patient, apex to base.
        out_mm: pixel spacing of the rendered slices.
        fov_mm: field of view.
        **knobs: other `PhantomConfig` fields (e.g. emphysema=0.1, ggo=0.2, fibrosis=0.1).
    """
    from difflung.phantom import PhantomConfig, phantom_cohort

    size = int(round(fov_mm / out_mm))
    cfg = PhantomConfig(size=size, fov_mm=size * out_mm, slices_per_patient=slices_per_patient, **knobs)
    return phantom_cohort(n_patients, rng, cfg)


def pathology_volumes(classes, per_class: int, rng: np.random.Generator, *, slices_per_patient: int = 12,
                       fraction: float = 0.1, out_mm: float = PATCH_SPACING_MM, fov_mm: float = 350.0,
                       max_tries: int = 8) -> list[Volume]:
    """Phantom patients at `out_mm` pixels, `per_class` of them holding each class of `classes` (ids).

    A patient is drawn with one pathology knob at `fraction` (the others 0) and kept when that class appears;
    redrawn up to `max_tries` times, so that every class reaches the patch set even in a tiny cohort.
    Patient ids "<class name><k>". ValueError when a class does not appear within max_tries draws.
    """
    from difflung.phantom import PhantomConfig, phantom_patient

    size, out = int(round(fov_mm / out_mm)), []
    for c in classes:
        knobs = {L.BY_ID[k].name: (fraction if k == c else 0.0) for k in (L.EMPHYSEMA, L.GGO, L.FIBROSIS)}
        cfg = PhantomConfig(size=size, fov_mm=size * out_mm, slices_per_patient=slices_per_patient, **knobs)
        for k in range(per_class):
            for _ in range(max_tries):
                v = phantom_patient(f"{L.BY_ID[c].name}{k}", rng, cfg)
                if (v.labels == c).any():
                    out.append(v)
                    break
            else:
                raise ValueError(f"no phantom patient with {L.BY_ID[c].name} in {max_tries} draws at fraction "
                                 f"{fraction:g}; raise the fraction or the slices per patient")
    return out


def real_volumes(paths: Iterable, labels: Iterable | None = None, classes=None) -> list[Volume]:
    """Real CT volumes with their classical anatomy (and lesions, when label files and a class map are given).

    Args:
        paths: volume files or DICOM folders (as `python -m difflung prepare` reads them).
        labels: optional label files, one per path (None entries for none).
        classes: class map for the label files (`difflung.data.classmap`), e.g. "nodule".
    """
    from difflung.data.ct_anatomy import AnatomyConfig
    from difflung.data.classmap import load_classmap
    from difflung.data.prepare import Case, prepare_volume

    paths = list(paths)
    labels = list(labels) if labels is not None else [None] * len(paths)
    cmap = load_classmap(classes) if classes is not None else None
    return [prepare_volume(Case(Path(p), Path(q) if q else None, None), cmap, AnatomyConfig())[0]
            for p, q in zip(paths, labels)]


def build_patch_dataset(out_dir, phantom: list[Volume], real: list[Volume] = (), *, size: int = 64,
                        rng: np.random.Generator, per_slice: int = 4, real_per_slice: int | None = None,
                        out_mm: float = PATCH_SPACING_MM, seed: int = 0, real_split: str = "train") -> Dataset:
    """Cut patches from phantom and real volumes and write them as a dataset artifact.

    Args:
        out_dir: artifact folder (written atomically).
        phantom: phantom volumes (pathology); split by patient (stratified by the classes they hold).
        real: real CT volumes (background); all go to `real_split` (default: train, as they teach background).
        size: patch side in pixels; out_mm: patch pixel spacing (recorded as params["pixel_spacing_mm"]).
        rng: the only source of randomness.
        per_slice, real_per_slice: patches per slice with lung (real: default per_slice).
        seed: the phantom patients' split seed.
    """
    parts = [cut_patches(v, size, rng, per_slice=per_slice, out_mm=out_mm) for v in phantom]
    parts += [cut_patches(v, size, rng, per_slice=real_per_slice or per_slice, out_mm=out_mm, lesion_share=0.0)
              for v in real]
    parts = [p for p in parts if len(p)]
    if not parts:
        raise DatasetError(f"{out_dir}: no patch with lung tissue could be cut from the input volumes")
    sl = Slices(*(np.concatenate([getattr(p, a) for p in parts]) for a in ("images", "labels", "patient", "z")))
    ph_ids = sorted({v.patient for v in phantom})
    real_ids = sorted({v.patient for v in real})
    if set(ph_ids) & set(real_ids):
        raise DatasetError(f"{out_dir}: patient ids {sorted(set(ph_ids) & set(real_ids))} are both phantom and real")
    strata = {p: set(np.unique(sl.labels[sl.patient == p]).tolist()) & set(L.PATHOLOGY_IDS) for p in ph_ids}
    split = split_patients(ph_ids, seed=seed, strata=strata) if ph_ids else {s: [] for s in ("train", "val", "test")}
    split[real_split] = sorted(split[real_split] + real_ids)
    params = {SPACING_KEY: float(out_mm), "patch_size": int(size), "per_slice": int(per_slice),
              "real_per_slice": int(real_per_slice or per_slice), "real_split": real_split,
              "phantom_patients": ph_ids, "real_patients": real_ids,
              "real_sources": [v.source for v in real]}
    return write_dataset(out_dir, sl, source="patches", params=params, seed=seed, split=split)
