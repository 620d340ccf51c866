"""Lesions inserted into whole training slices: the `+insert` augmentation arm.

    images = insert_into_slices(runs.main_model_dir(runs_root), base.images, base.labels, lesions,
                                generator=torch.Generator().manual_seed(seed), steps=50)

The `+difflung` arm paints whole synthetic slices from synthesised masks. `+insert` keeps the slice the mask was
built on (a real or phantom training slice, `MaskSynthesis.source_index`) and lets the whole-slice,
mask-conditioned model of the run (chapter 3's, at the dataset's size) repaint only the new lesions and a thin
margin around them, with RePaint (`difflung.diffusion.inpaint`): LeFusion's "lesion-focused" augmentation at the
dataset's own scale. Every pixel outside the dilated lesion region keeps the base slice's value, bit for bit.
`insertion_arm` builds the arm's extra set from a `MaskSynthesis`, with the same masks as `+difflung`.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from difflung import labels as L


def new_lesions(base_labels: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Pathology of `masks` that `base_labels` does not have there: (N, S, S) project ids, 0 elsewhere."""
    base_labels, masks = np.asarray(base_labels), np.asarray(masks)
    if base_labels.shape != masks.shape:
        raise ValueError(f"base labels {base_labels.shape} and masks {masks.shape} must have the same shape")
    new = (masks != base_labels) & np.isin(masks, L.PATHOLOGY_IDS)
    return np.where(new, masks, 0).astype(np.uint8)


def slice_edit_region(lesions: np.ndarray, labels: np.ndarray, margin_px: int = 1) -> np.ndarray:
    """(N, S, S) bool: the lesions, dilated by `margin_px` pixels (8-connected) within the lung field."""
    les = np.asarray(lesions) > 0
    if margin_px <= 0:
        return les
    grown = ndi.binary_dilation(les, structure=np.ones((1, 3, 3), bool), iterations=int(margin_px))
    return les | (grown & np.isin(labels, L.LUNG_IDS))


def insert_into_slices(model_dir, images, labels, lesion_masks, *, generator: torch.Generator, steps: int = 50,
                       jump_length: int = 10, jump_n_sample: int = 2, eta: float = 0.0, margin_px: int = 1,
                       batch_size: int = 32, device: str = "auto", progress: bool = False) -> np.ndarray:
    """Insert lesions into whole slices with a whole-slice mask-conditioned model, keeping everything else.

    Args:
        model_dir: a mask-conditioned diffusion model at the slices' size (e.g. `runs.main_model_dir(runs_root)`),
            epsilon or v-prediction.
        images: (N, S, S) base slices in the model window [-1, 1] (a dataset's images).
        labels: (N, S, S) their project-id label maps.
        lesion_masks: (N, S, S) project ids of the lesions to insert (0: none); inside the lung field.
        generator: CPU torch.Generator, the only source of noise.
        steps, jump_length, jump_n_sample, eta: the RePaint sampler (`difflung.diffusion.inpaint`).
        margin_px: the painted region is the lesions dilated by this many pixels within the lung (blends the edge).
        batch_size: slices per UNet batch; device: "auto", "cpu" or "cuda"; progress: tqdm bar.
    Returns:
        (N, S, S) float32 in [-1, 1]: `images` with the region repainted, conditioned on `labels` with the lesions
        merged in; bit-identical to `images` outside the region (slices without a lesion come back unchanged).
    """
    from difflung.diffusion.inpaint import inpaint
    from difflung.diffusion.model import UNSPECIFIED
    from difflung.diffusion.train import load_model
    from difflung.core.provenance import resolve_device

    images = np.asarray(images, dtype=np.float32)
    labels, lesions = np.asarray(labels), np.asarray(lesion_masks)
    if images.ndim != 3 or labels.shape != images.shape or lesions.shape != images.shape:
        raise ValueError(f"images {images.shape}, labels {labels.shape} and lesion_masks {lesions.shape} must all be "
                         "the same (N, S, S)")
    bad = sorted(set(np.unique(lesions).tolist()) - {0} - set(L.PATHOLOGY_IDS))
    if bad:
        raise ValueError(f"lesion_masks hold {bad}: not pathology classes ({L.names(L.PATHOLOGY_IDS)})")
    outside = (lesions > 0) & ~np.isin(labels, L.LUNG_IDS)
    if outside.any():
        raise ValueError(f"lesion_masks: {int(outside.sum())} lesion pixels lie outside the slices' lung field")
    dev = resolve_device(device)
    unet, meta = load_model(model_dir, device=dev)
    missing = sorted(set(np.unique(lesions).tolist()) - {0} - set(meta["classes"]))
    if missing:
        raise ValueError(f"{Path(model_dir)}: the model cannot paint {L.names(missing)} (its classes: "
                         f"{L.names(meta['classes'])})")
    cond = np.where(lesions > 0, lesions, labels)
    cond = np.where(np.isin(cond, meta["classes"]), cond, UNSPECIFIED).astype(np.uint8)
    known = ~slice_edit_region(lesions, labels, margin_px)
    return inpaint(unet, meta, images, known, cond, generator=generator, steps=steps, jump_length=jump_length,
                   jump_n_sample=jump_n_sample, eta=eta, batch_size=batch_size, device=dev, progress=progress)


@dataclass
class InsertedSet:
    images: np.ndarray  # (n, S, S) float32 in [-1, 1]: base slices with the lesions inserted
    labels: np.ndarray  # (n, S, S) uint8: the masks (base labels with the new lesions)
    source_index: np.ndarray  # (n,) the base slice of each image
    seconds: float


def insertion_arm(model_dir, images, labels, masks, source_index, *, seed: int, steps: int = 50,
                  jump_length: int = 10, jump_n_sample: int = 2, margin_px: int = 1, batch_size: int = 32,
                  device: str = "auto", progress: bool = False) -> InsertedSet:
    """The `+insert` arm's extra set: each synthesised mask's new lesions inserted into its own base slice.

    Args:
        model_dir: the whole-slice model (chapter 3's).
        images, labels: (N, S, S) the training slices the masks were built on.
        masks, source_index: a `MaskSynthesis`' labels (n, S, S) and source_index (n,).
        seed: seeds the sampler (`torch.Generator().manual_seed(seed)`); the rest as `insert_into_slices`.
    """
    idx = np.asarray(source_index, dtype=np.int64)
    base_img, base_lab = np.asarray(images)[idx], np.asarray(labels)[idx]
    t0 = time.perf_counter()
    out = insert_into_slices(model_dir, base_img, base_lab, new_lesions(base_lab, masks),
                             generator=torch.Generator().manual_seed(int(seed)), steps=steps,
                             jump_length=jump_length, jump_n_sample=jump_n_sample, margin_px=margin_px,
                             batch_size=batch_size, device=device, progress=progress)
    return InsertedSet(out, np.asarray(masks, dtype=np.uint8), idx, time.perf_counter() - t0)
