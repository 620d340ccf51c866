"""Painting lesions with RePaint (`difflung.diffusion.inpaint`): into a scan at its own resolution, window by
window on the patch model's grid (`paint`), or into whole training slices with the run's whole-slice model
(`insert_into_slices`, the `+insert` augmentation arm). Both condition the model on one label map built the same
way (`condition`) and repaint only the edit region (`difflung.insertion.region.edit_region`).

A scan: slice by slice, at the scan's own resolution, the region is covered by windows (`plan_windows`); each
window is resampled to the model's patch grid (`PATCH_SPACING_MM`, `difflung.insertion.patches.sample_plane`),
painted with the window's label map as condition, and resampled back only at the region's voxels. By default
(`InsertConfig.z_guide`, `z_rho`) slices are painted in z order, each window guided by what the slice below got
and started from noise correlated with it (`difflung.insertion.zpaint`), so a lesion's texture continues in z.

Whole slices: the `+difflung` arm paints whole synthetic slices from synthesised masks. `+insert` keeps the slice
the mask was built on (a real or phantom training slice, `MaskSynthesis.source_index`) and lets the whole-slice,
mask-conditioned model of the run (chapter 3's, at the dataset's size) repaint only the new lesions and a thin
margin around them: LeFusion's "lesion-focused" augmentation at the dataset's own scale. Every pixel outside the
dilated lesion region keeps the base slice's value, bit for bit. `insertion_arm` builds the arm's extra set from a
`MaskSynthesis`, with the same masks as `+difflung`:

    images = insert_into_slices(runs.main_model_dir(runs_root), base.images, base.labels, lesions,
                                generator=torch.Generator().manual_seed(seed), steps=50)
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from difflung import labels as L
from difflung.data.dataset import unwindow, window
from difflung.diffusion.model import UNSPECIFIED
from difflung.diffusion.patch_model import PATCH_SPACING_MM, SPACING_KEY
from difflung.insertion.patches import sample_plane, to_grid_index
from difflung.insertion.region import edit_region
from difflung.insertion.shapes import new_lesions


@dataclass
class InsertConfig:
    """Sampler and geometry settings of `insert_lesions`.

    Args:
        steps: RePaint reverse steps; jump_length, jump_n_sample: its resampling (1: none).
        eta: 0 DDIM steps, 1 DDPM steps for the painted region.
        margin_mm: in-plane dilation of the lesions into the edit region (blends the boundary).
        context: share of the patch side kept as known context on each side of a window's painted part.
        batch_size: windows per UNet batch.
        spacing_mm: the patch spacing the model must have been trained at.
        seed: seeds the sampler and the lesion synthesis.
        z_guide: continuity in z: share of the reverse steps (the noisiest first) during which the painted texture
            of the slice below (k - 1) is the known part of slice k's window where both are painted (RePaint's
            known-region mechanism, so the layout continues and the fine texture stays the model's own).
        z_rho: correlation of the initial noise of adjacent slices (an AR(1) field in z on the scan's frame).
            z_guide = z_rho = 0 paints every slice independently, in batched rounds (the earlier behaviour).
    """

    steps: int = 50
    jump_length: int = 10
    jump_n_sample: int = 2
    eta: float = 0.0
    margin_mm: float = 2.0
    context: float = 0.25
    batch_size: int = 16
    spacing_mm: float = PATCH_SPACING_MM
    seed: int = 0
    # benchmarks/bench_insert_truth.py (16 px model trained 300 steps, 3 mm slices, 10 steps): z-continuity of the
    # inserted lesions 0.24-0.25 independent, 0.41-0.51 at z_guide 0.85, 0.65-0.91 at 0.9 (phantom truth: GGO
    # 0.68, emphysema 0.84; real lung2 at 5 mm: 0.51); z_rho 0.5 -> 0.9 moves it by 0.01-0.05
    z_guide: float = 0.85
    z_rho: float = 0.5

    def __post_init__(self):
        if not 0.0 <= self.z_guide <= 1.0:
            raise ValueError(f"InsertConfig.z_guide={self.z_guide}: must lie in [0, 1]")
        if not 0.0 <= self.z_rho < 1.0:
            raise ValueError(f"InsertConfig.z_rho={self.z_rho}: must lie in [0, 1)")

    @property
    def z_continuous(self) -> bool:
        return self.z_guide > 0 or self.z_rho > 0


def condition(labels: np.ndarray, classes, lesions: np.ndarray | None = None) -> np.ndarray:
    """The label map a model paints from: `labels` with `lesions` (> 0) merged in, every class the model was not
    trained with (`classes`, its meta["classes"]) as `UNSPECIFIED`. uint8, the shape of `labels`."""
    cond = labels if lesions is None else np.where(lesions > 0, lesions, labels)
    return np.where(np.isin(cond, classes), cond, UNSPECIFIED).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# a scan at its own resolution, window by window on the patch grid

def plan_windows(region: np.ndarray, spacing_yx, size: int, out_mm: float, context: float = 0.25):
    """Windows covering one slice's edit region: [(centre (y, x), ys, xs)], the pixels each window paints.

    A window paints at most a cell of size * (1 - 2 context) patch pixels, so that at least `context` of the
    patch on every side is known. Connected pieces of the region share a window while their union fits a cell;
    a larger piece is cut on a grid of cells.
    """
    cell = [max(1, int(np.floor(size * (1 - 2 * context) * out_mm / s))) for s in spacing_yx]  # scan pixels
    lab, _ = ndi.label(region, structure=np.ones((3, 3), bool))
    pieces = []
    for i, sl in enumerate(ndi.find_objects(lab)):
        m = lab[sl] == i + 1
        for a in range(0, m.shape[0], cell[0]):
            for b in range(0, m.shape[1], cell[1]):
                ys, xs = np.nonzero(m[a:a + cell[0], b:b + cell[1]])
                if ys.size:
                    pieces.append((ys + sl[0].start + a, xs + sl[1].start + b))
    windows = []  # [bbox (y0, y1, x0, x1), ys list, xs list]
    for ys, xs in pieces:
        bb = (ys.min(), ys.max(), xs.min(), xs.max())
        for w in windows:
            u = (min(w[0][0], bb[0]), max(w[0][1], bb[1]), min(w[0][2], bb[2]), max(w[0][3], bb[3]))
            if u[1] - u[0] < cell[0] and u[3] - u[2] < cell[1]:
                w[0] = u
                w[1].append(ys)
                w[2].append(xs)
                break
        else:
            windows.append([bb, [ys], [xs]])
    return [(((bb[0] + bb[1]) / 2.0, (bb[2] + bb[3]) / 2.0), np.concatenate(ys), np.concatenate(xs))
            for bb, ys, xs in windows]


def paint(hu: np.ndarray, labels: np.ndarray, region: np.ndarray, spacing, unet, meta: dict, cfg: InsertConfig,
          generator, *, device=None, progress: bool = False) -> tuple[np.ndarray, dict]:
    """Repaint the `region` voxels of `hu` (z, y, x) with the model, conditioned on `labels` (project ids).

    With `cfg.z_continuous` (the default), windows are painted in z order, each conditioned on the slice below
    (`paint_z`). Otherwise windows of all slices are painted in rounds (round r: the r-th window of every slice,
    one `inpaint` call, batched), so a later window of a slice sees the earlier ones' result as known context.
    Returns (float32 HU, a copy of `hu` changed only on `region`; info dict).
    """
    from tqdm import tqdm

    from difflung.progress import show_progress
    from difflung.diffusion.inpaint import inpaint

    size, out_mm = int(meta["sample_size"]), float(meta[SPACING_KEY])
    sp = (float(spacing[1]), float(spacing[2]))
    cond = condition(labels, meta["classes"])
    work = hu.astype(np.float32, copy=True)
    plans = {int(k): plan_windows(region[k], sp, size, out_mm, cfg.context)
             for k in np.flatnonzero(region.any(axis=(1, 2)))}
    if cfg.z_continuous:
        from difflung.insertion.zpaint import paint_z

        return paint_z(work, cond, region, plans, sp, unet, meta, cfg, generator, device=device, progress=progress)
    rounds = max((len(p) for p in plans.values()), default=0)
    for r in tqdm(range(rounds), disable=not show_progress(progress), desc="insert", unit="round"):
        items = [(k, plans[k][r]) for k in sorted(plans) if r < len(plans[k])]
        imgs, known, labs = map(list, zip(*(window_inputs(work, cond, k, plan, sp, size, out_mm)
                                             for k, plan in items)))
        out = inpaint(unet, meta, np.stack(imgs), np.stack(known), np.stack(labs), generator=generator,
                      steps=cfg.steps, jump_length=cfg.jump_length, jump_n_sample=cfg.jump_n_sample, eta=cfg.eta,
                      batch_size=cfg.batch_size, device=device)
        write_back(work, items, out, sp, size, out_mm)
    return work, {"slices_edited": len(plans), "windows": sum(len(p) for p in plans.values()), "rounds": rounds}


def window_inputs(work, cond, k: int, plan, sp, size: int, out_mm: float):
    """One window's model inputs on slice k: the image in [-1, 1], its condition labels and the known mask
    (True outside the window's planned pixels `plan` = (centre, ys, xs))."""
    c, ys, xs = plan
    mask = np.zeros(work.shape[1:], np.float32)
    mask[ys, xs] = 1.0
    img = window(sample_plane(work[k], c, sp, size, out_mm))
    lab = sample_plane(cond[k], c, sp, size, out_mm, order=0, cval=L.BACKGROUND)
    return img, lab, sample_plane(mask, c, sp, size, out_mm, cval=0.0) <= 1e-6


def write_back(work, items, out, sp, size: int, out_mm: float) -> None:
    """Resample each painted window `out` back onto its planned pixels of `work` (HU), in place."""
    for (k, (c, ys, xs)), o in zip(items, out):
        gi, gj = to_grid_index(ys, xs, c, sp, size, out_mm)
        work[k, ys, xs] = unwindow(ndi.map_coordinates(o, [gi, gj], order=1, mode="nearest"))


# ---------------------------------------------------------------------------------------------------------------
# whole slices (the `+insert` augmentation arm)

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
    from difflung.core.provenance import resolve_device
    from difflung.diffusion.inpaint import inpaint
    from difflung.diffusion.train import load_model

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
    cond = condition(labels, meta["classes"], lesions)
    known = ~edit_region(lesions, np.isin(labels, L.LUNG_IDS), None, margin_px, metric="chessboard")
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
