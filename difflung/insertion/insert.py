"""Insert lesions into a real CT with the patch model, keeping every voxel outside the edit region exact.

    python -m difflung insert CT --lesion-mask MASK.nii.gz --model DIR --out OUT.nii.gz
    python -m difflung insert CT --synthesize emphysema --target-ml 50 --model DIR --out OUT.nii.gz

CT is a NIfTI/NRRD/MHA/MHD volume or a DICOM series folder (read like `prepare`). The lesion mask holds project
class ids (`difflung.labels`: 4 emphysema, 5 ggo, 6 fibrosis, ...), or any non-zero value with
`--lesion-class NAME`; it must have the CT's geometry and lie inside the lung field that `difflung.data.ct_anatomy`
segments. `--synthesize` places 3D lesions of the phantom (its lesions' extents, built on the scan's voxel grid,
scaled and rotated within limits) wholly on healthy lung until they add up to `--target-ml` (within 10 %, never
above; `shapes`).

How, one module per step: the scan and the mask are read and checked (`scan_io`); `--synthesize` places lesion
shapes (`shapes`); the edit region is the lesions dilated in-plane by `margin_mm` within the lung field
(`region`); the region is painted window by window on the model's patch grid (`painting`); the output array is a
copy of the input's own values (its file dtype, not HU floats) with the region's voxels replaced; after writing,
the file is read back and the voxels outside the region are compared with the input (the count must be 0,
`scan_io`). The command's arguments are parsed in `difflung.cli.insert`.

Written atomically: OUT (the edited CT in the input's geometry: spacing, origin, direction and pixel type kept;
a DICOM input is written in the project's LPI orientation) and OUT_lesions (uint8 project class ids, same
geometry). The JSON summary goes to stdout, errors to stderr as one line naming the file; nothing is written on
bad input.
"""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from difflung import labels as L
from difflung.diffusion.patch_model import PATCH_SPACING_MM, SPACING_KEY
from difflung.insertion.painting import InsertConfig, paint
from difflung.insertion.region import edit_region
from difflung.insertion.scan_io import (InsertError, cast_like, check_in_lung, check_paths, lesion_class_id,
                                        lesions_path, read_ct, read_lesion_mask, write_checked)
from difflung.insertion.shapes import phantom_lesion_extents, synthesize_lesions


def load_insert_model(model_dir, spacing_mm: float = PATCH_SPACING_MM, device="cpu"):
    """(unet, meta) of a patch model; InsertError when it records no patch spacing or another one."""
    from difflung.diffusion.train import META_FILE, ModelLoadError, load_model

    try:
        unet, meta = load_model(model_dir, device=device)
    except (FileNotFoundError, ModelLoadError) as e:
        raise InsertError(str(e)) from e
    sp = meta.get(SPACING_KEY)
    where = Path(model_dir) / META_FILE
    if sp is None:
        raise InsertError(f"{where}: records no {SPACING_KEY}; a whole-slice model cannot insert lesions at a "
                          "scan's resolution (train one on patches: difflung.diffusion.patch_model.train_patch_model)")
    if abs(float(sp) - float(spacing_mm)) > 1e-6:
        raise InsertError(f"{where}: the model was trained at {float(sp):g} mm pixels, insertion works at "
                          f"{float(spacing_mm):g} mm (use a model trained at that spacing, or pass --spacing-mm "
                          f"{float(sp):g})")
    return unet, meta


def paintable_classes(meta: dict) -> list[int]:
    """Lung-field pathology classes the model was trained with (what it can paint)."""
    return [int(c) for c in meta["classes"] if L.BY_ID[int(c)].in_lung and L.BY_ID[int(c)].pathology]


def lesion_report(lesions: np.ndarray, hu: np.ndarray, voxel_ml: float) -> list[dict]:
    """Per lesion (26-connected component of one class), requested against achieved: its volume in the mask, the
    mean painted HU inside it, and the volume whose painted HU lies in the class's literature range
    (`labels.ClassInfo.hu_range`; None where the class has none), so a lesion painted as something else shows.

    Args:
        lesions: (z, y, x) project ids of the inserted lesions, 0 elsewhere.
        hu: (z, y, x) the painted scan in HU (LPI, as `lesions`).
        voxel_ml: one voxel's volume in ml.
    """
    out = []
    for c in (int(v) for v in np.unique(lesions) if v):
        comp, n = ndi.label(lesions == c, structure=np.ones((3, 3, 3), bool))
        lo_hi = L.BY_ID[c].hu_range
        for k in range(1, n + 1):
            inside = comp == k
            values = hu[inside]
            zs = np.flatnonzero(inside.any(axis=(1, 2)))
            out.append({"class": L.BY_ID[c].name, "requested_ml": round(float(inside.sum()) * voxel_ml, 3),
                        "achieved_ml": None if lo_hi is None else round(
                            float(((values >= lo_hi[0]) & (values <= lo_hi[1])).sum()) * voxel_ml, 3),
                        "mean_hu": round(float(values.mean()), 1), "slices": [int(zs.min()), int(zs.max())]})
    return out


def insert_lesions(ct, out, model_dir, *, lesion_mask=None, lesion_class=None, synthesize=None,
                   target_ml: float | None = None, config: InsertConfig | None = None, device: str = "auto",
                   progress: bool = False) -> dict:
    """Insert lesions into a CT file and write OUT and OUT_lesions (module docstring); return the summary.

    Args:
        ct: CT volume file or DICOM series folder.
        out: edited CT to write (.nii.gz, .nii, .nrrd, .mha, .mhd); OUT_lesions is written beside it.
        model_dir: a patch model (`difflung.diffusion.patch_model.train_patch_model`).
        lesion_mask: label file of project class ids aligned with the CT (or any non-zero value with lesion_class).
        lesion_class: class name or id for every non-zero voxel of lesion_mask.
        synthesize: class name or id to place with the mask synthesis instead of a mask; target_ml: its volume.
        config: `InsertConfig` (sampler, margin, seed).
        device: "auto", "cpu" or "cuda".
        progress: tqdm bar over painting rounds.
    Returns the summary dict (lesion ml per class, slices edited, seconds, differing voxels outside the region).
    """
    import torch

    from difflung.core.provenance import resolve_device
    from difflung.data.ct_anatomy import segment
    from difflung.diffusion.inpaint import network_calls

    cfg, t0, sec = config or InsertConfig(), time.perf_counter(), {}
    out = check_paths(ct, out, lesion_mask, synthesize, target_ml)
    device = resolve_device(device)
    unet, meta = load_insert_model(model_dir, cfg.spacing_mm, device=device)
    allowed = paintable_classes(meta)
    cls = lesion_class_id(synthesize, allowed, "--synthesize") if synthesize is not None else None
    vol, raw, ref = read_ct(ct)
    anat = segment(vol.hu, vol.spacing, name=str(ct))
    sec["read_and_anatomy"] = time.perf_counter() - t0
    if lesion_mask is not None:
        lesions = read_lesion_mask(lesion_mask, vol, lesion_class, allowed)
        check_in_lung(lesions, anat.lung, str(lesion_mask))
    else:
        t = time.perf_counter()
        rng_bank, rng_place = (np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(2))
        extents = phantom_lesion_extents(cls, rng_bank)
        lesions = synthesize_lesions(anat.labels(), cls, float(target_ml), vol.spacing, extents, rng_place)
        sec["synthesis"] = time.perf_counter() - t
    region = edit_region(lesions, anat.lung, vol.spacing, cfg.margin_mm)
    t = time.perf_counter()
    gen = torch.Generator().manual_seed(int(cfg.seed))
    hu, info = paint(vol.hu, anat.labels(lesions), region, vol.spacing, unet, meta, cfg, gen, device=device,
                     progress=progress)
    sec["painting"] = time.perf_counter() - t
    edited = raw.copy()
    edited[region] = cast_like(hu[region], raw.dtype)  # everything else keeps the input's own values
    t = time.perf_counter()
    differ = write_checked(edited, lesions, raw, region, vol, ref, out)
    sec["writing"] = time.perf_counter() - t
    per_lesion = lesion_report(lesions, hu, vol.voxel_ml)
    n_lesions = len(per_lesion)
    total = time.perf_counter() - t0
    return {
        "input": str(ct), "output": str(out), "lesions_output": str(lesions_path(out)), "model": str(model_dir),
        "mode": "lesion-mask" if lesion_mask is not None else "synthesize",
        "lesion_mask": str(lesion_mask) if lesion_mask is not None else None, "target_ml": target_ml,
        "lesion_ml": {L.BY_ID[c].name: round(float((lesions == c).sum()) * vol.voxel_ml, 3)
                      for c in np.unique(lesions) if c},
        "lesions": n_lesions, "per_lesion": per_lesion, "edit_region_voxels": int(region.sum()),
        "differing_voxels_outside_region": differ, **info,
        "spacing_mm": list(vol.spacing), "model_pixel_spacing_mm": float(meta[SPACING_KEY]),
        "patch_size": int(meta["sample_size"]), "config": asdict(cfg),
        "network_calls_per_window": network_calls(cfg.steps, cfg.jump_length, cfg.jump_n_sample),
        "device": device, "seconds": round(total, 2), "seconds_per_lesion": round(total / max(n_lesions, 1), 3),
        "seconds_by_stage": {k: round(v, 2) for k, v in sec.items()},
    }
