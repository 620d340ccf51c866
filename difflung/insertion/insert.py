"""Insert lesions into a real CT with the patch model, keeping every voxel outside the edit region exact.

    python -m difflung insert CT --lesion-mask MASK.nii.gz --model DIR --out OUT.nii.gz
    python -m difflung insert CT --synthesize emphysema --target-ml 50 --model DIR --out OUT.nii.gz

CT is a NIfTI/NRRD/MHA/MHD volume or a DICOM series folder (read like `prepare`). The lesion mask holds project
class ids (`difflung.labels`: 4 emphysema, 5 ggo, 6 fibrosis, ...), or any non-zero value with
`--lesion-class NAME`; it must have the CT's geometry and lie inside the lung field that `difflung.data.ct_anatomy`
segments. `--synthesize` places lesion shapes of the phantom (drawn at the scan's pixel size) in healthy lung
with `difflung.data.masksynth`'s pasting until they add up to `--target-ml` (within 10 %, never above).

How: the edit region is the lesions dilated in-plane by `margin_mm` within the lung field. Slice by slice, at
the scan's own resolution, the region is covered by windows; each window is resampled to the model's patch grid
(`PATCH_SPACING_MM`, `difflung.insertion.patches.sample_plane`), painted by RePaint (`difflung.diffusion.inpaint`) with the
window's label map as condition, and resampled back only at the region's voxels. The output array is a copy of
the input's own values (its file dtype, not HU floats) with the region's voxels replaced; after writing, the file
is read back and the voxels outside the region are compared with the input (the count must be 0).

Written atomically: OUT (the edited CT in the input's geometry: spacing, origin, direction and pixel type kept;
a DICOM input is written in the project's LPI orientation) and OUT_lesions (uint8 project class ids, same
geometry). The JSON summary goes to stdout, errors to stderr as one line naming the file; nothing is written on
bad input.
"""
from __future__ import annotations

import json
import os
import secrets
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from difflung import labels as L
from difflung.data.ctio import CTReadError, CTVolume, read_label, read_volume, stem, volume_suffix
from difflung.data.dataset import DatasetError, unwindow, window
from difflung.insertion.patches import PATCH_SPACING_MM, SPACING_KEY, sample_plane, to_grid_index

PHANTOM_CLASSES = (L.EMPHYSEMA, L.GGO, L.FIBROSIS)  # classes whose shapes `--synthesize` can draw
TARGET_TOLERANCE = 0.10  # --target-ml: the placed volume lies within 10 % of the target, else an error


class InsertError(DatasetError):
    """Bad input to lesion insertion; the message names the file (or option) and the problem."""


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


# ---------------------------------------------------------------------------------------------------------------
# inputs

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
                          "scan's resolution (train one on patches: difflung.insertion.patches.train_patch_model)")
    if abs(float(sp) - float(spacing_mm)) > 1e-6:
        raise InsertError(f"{where}: the model was trained at {float(sp):g} mm pixels, insertion works at "
                          f"{float(spacing_mm):g} mm (use a model trained at that spacing, or pass --spacing-mm "
                          f"{float(sp):g})")
    return unet, meta


def _read_ct(path):
    """(CTVolume, input values (z, y, x) in LPI with the file's own dtype, reference image in the stored order)."""
    import SimpleITK as sitk

    from difflung.data.ctio import _orient, _read_sitk, to_native

    vol = read_volume(path)
    if Path(path).is_dir():  # DICOM: HU from stored values, int16 when they stay integers
        hu = vol.hu
        exact = np.all(hu == np.round(hu)) and hu.min() >= -32768 and hu.max() <= 32767
        raw = hu.astype(np.int16) if exact else hu.copy()
        return vol, raw, to_native(raw, vol)  # OUT keeps the series' own slice order and geometry
    ref = _read_sitk(Path(path))
    return vol, sitk.GetArrayFromImage(_orient(ref)), ref


def _read_lesion_mask(path, vol: CTVolume, lesion_class, allowed) -> np.ndarray:
    """The lesion mask as project ids (z, y, x) uint8, checked for geometry, emptiness and classes."""
    from difflung.data.ctio import _orient, _read_sitk

    path = Path(path)
    raw = read_label(path, vol)  # shape, spacing and origin must match the CT
    if not path.is_dir():
        d = np.asarray(_orient(_read_sitk(path)).GetDirection())
        if not np.allclose(d, vol.direction, atol=1e-3):
            raise InsertError(f"{path}: lesion mask direction {tuple(np.round(d, 4))} differs from the CT's "
                              f"{tuple(np.round(vol.direction, 4))} ({vol.source}); it is not aligned with the CT")
    if not raw.any():
        raise InsertError(f"{path}: lesion mask is empty (no non-zero voxel); nothing to insert")
    if lesion_class is not None:
        return np.where(raw > 0, _class_arg(lesion_class, allowed, "--lesion-class"), 0).astype(np.uint8)
    values = [int(v) for v in np.unique(raw) if v]
    bad = [v for v in values if v not in allowed]
    if bad:
        raise InsertError(f"{path}: lesion mask values {bad} are not lesion classes this model can paint "
                          f"(allowed project ids: {_names(allowed)}); relabel the mask or pass --lesion-class NAME")
    return raw.astype(np.uint8)


def _names(ids) -> str:
    return ", ".join(f"{i}={L.BY_ID[i].name}" for i in ids) or "none"


def _class_arg(name, allowed, option: str) -> int:
    try:
        c = L.class_id(int(name) if str(name).isdigit() else str(name))
    except ValueError as e:
        raise InsertError(f"{option} {name}: {e}") from e
    if c not in allowed:
        raise InsertError(f"{option} {name}: class {L.BY_ID[c].name!r} cannot be inserted with this model "
                          f"(it paints {_names(allowed)})")
    return c


def paintable_classes(meta: dict) -> list[int]:
    """Lung-field pathology classes the model was trained with (what it can paint)."""
    return [int(c) for c in meta["classes"] if L.BY_ID[int(c)].in_lung and L.BY_ID[int(c)].pathology]


def _check_in_lung(lesions: np.ndarray, lung: np.ndarray, name: str) -> None:
    out = (lesions > 0) & ~lung
    if out.any():
        n, tot = int(out.sum()), int((lesions > 0).sum())
        z = np.flatnonzero(out.any(axis=(1, 2)))
        raise InsertError(f"{name}: {n} of {tot} lesion voxels ({n / tot:.1%}, slices {z[0]}..{z[-1]}) lie outside "
                          "the lung field segmented from the CT; lesions are inserted into lung only")


# ---------------------------------------------------------------------------------------------------------------
# lesion synthesis (--synthesize CLASS --target-ml N)

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
    for c, ss in zip((_class_arg(c, PHANTOM_CLASSES, "--synthesize") for c in classes), streams):
        rng_bank, rng_place = (np.random.default_rng(s) for s in ss.spawn(2))
        donors = phantom_lesion_sources(c, float(np.mean(vol.spacing[1:])), rng_bank)
        new = synthesize_lesions(labels, c, float(target_ml), vol.voxel_ml, donors, rng_place)
        lesions[new > 0], labels[new > 0] = c, c
        placed[L.BY_ID[c].name] = float((new > 0).sum()) * vol.voxel_ml
    out = Path(out)
    tmp = out.with_name(f".{stem(out)}.{secrets.token_hex(6)}.partial{volume_suffix(out)}")
    try:
        write_volume(tmp, lesions, vol.spacing, origin=tuple(vol.origin), direction=tuple(vol.direction))
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return placed


# ---------------------------------------------------------------------------------------------------------------
# painting

def edit_region(lesions: np.ndarray, lung: np.ndarray, spacing, margin_mm: float) -> np.ndarray:
    """The voxels that may change (z, y, x) bool: lesions dilated in-plane by margin_mm, kept within the lung."""
    region = lesions > 0
    out = region.copy()
    for k in np.flatnonzero(region.any(axis=(1, 2))):
        near = ndi.distance_transform_edt(~region[k], sampling=spacing[1:]) <= margin_mm
        out[k] |= near & lung[k]
    return out


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

    Windows of all slices are painted in rounds (round r: the r-th window of every slice, one `inpaint` call,
    batched), so a later window of a slice sees the earlier ones' result as known context.
    Returns (float32 HU, a copy of `hu` changed only on `region`; info dict).
    """
    from tqdm import tqdm

    from difflung.diffusion.inpaint import inpaint
    from difflung.diffusion.model import UNSPECIFIED
    from difflung.core.progress import show_progress

    size, out_mm = int(meta["sample_size"]), float(meta[SPACING_KEY])
    sp = (float(spacing[1]), float(spacing[2]))
    cond = np.where(np.isin(labels, meta["classes"]), labels, UNSPECIFIED).astype(np.uint8)
    work = hu.astype(np.float32, copy=True)
    plans = {int(k): plan_windows(region[k], sp, size, out_mm, cfg.context)
             for k in np.flatnonzero(region.any(axis=(1, 2)))}
    rounds = max((len(p) for p in plans.values()), default=0)
    for r in tqdm(range(rounds), disable=not show_progress(progress), desc="insert", unit="round"):
        items = [(k, plans[k][r]) for k in sorted(plans) if r < len(plans[k])]
        imgs, known, labs = [], [], []
        for k, (c, ys, xs) in items:
            mask = np.zeros(region.shape[1:], np.float32)
            mask[ys, xs] = 1.0
            imgs.append(window(sample_plane(work[k], c, sp, size, out_mm)))
            labs.append(sample_plane(cond[k], c, sp, size, out_mm, order=0, cval=L.BACKGROUND))
            known.append(sample_plane(mask, c, sp, size, out_mm, cval=0.0) <= 1e-6)
        out = inpaint(unet, meta, np.stack(imgs), np.stack(known), np.stack(labs), generator=generator,
                      steps=cfg.steps, jump_length=cfg.jump_length, jump_n_sample=cfg.jump_n_sample, eta=cfg.eta,
                      batch_size=cfg.batch_size, device=device)
        for (k, (c, ys, xs)), o in zip(items, out):
            gi, gj = to_grid_index(ys, xs, c, sp, size, out_mm)
            work[k, ys, xs] = unwindow(ndi.map_coordinates(o, [gi, gj], order=1, mode="nearest"))
    return work, {"slices_edited": len(plans), "windows": sum(len(p) for p in plans.values()), "rounds": rounds}


# ---------------------------------------------------------------------------------------------------------------
# output

def lesions_path(out) -> Path:
    """OUT.nii.gz -> OUT_lesions.nii.gz (same folder and format)."""
    out = Path(out)
    return out.with_name(stem(out) + "_lesions" + volume_suffix(out))


def _cast(values: np.ndarray, dtype) -> np.ndarray:
    """HU floats -> the input's pixel type (rounded and clipped for integers)."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def _image(arr: np.ndarray, vol: CTVolume, ref):
    """A SimpleITK image of an LPI array, in the reference file's orientation and exact geometry when given."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(arr))
    img.SetSpacing(tuple(float(s) for s in vol.spacing[::-1]))
    img.SetOrigin(tuple(float(v) for v in vol.origin))
    img.SetDirection(tuple(float(v) for v in vol.direction))
    if ref is not None:
        img = sitk.DICOMOrient(img, sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(ref.GetDirection()))
        img.CopyInformation(ref)  # the reorientation gives the geometry up to float rounding; keep it exactly
    return img


def _write_checked(edited: np.ndarray, lesions: np.ndarray, raw: np.ndarray, region: np.ndarray, vol: CTVolume,
                   ref, out: Path) -> int:
    """Write OUT and OUT_lesions through temporary files, read OUT back, count differing voxels outside the
    region (must be 0, else nothing is renamed into place), then rename both. Returns that count."""
    import SimpleITK as sitk

    from difflung.data.ctio import _orient

    targets = [out, lesions_path(out)]
    temps = [p.with_name(f".{stem(p)}.{secrets.token_hex(6)}.partial{volume_suffix(p)}")
             for p in targets]
    try:
        for arr, tmp in zip((edited, lesions), temps):
            tmp.parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(_image(arr, vol, ref), str(tmp), useCompression=volume_suffix(tmp) != ".nii")
        back = sitk.GetArrayFromImage(_orient(sitk.ReadImage(str(temps[0]))))
        if back.dtype != raw.dtype or back.shape != raw.shape:
            raise InsertError(f"{out}: read back as {back.dtype} {back.shape}, expected {raw.dtype} {raw.shape}")
        differ = int(np.count_nonzero(_bits(back)[~region] != _bits(raw)[~region]))
        if differ:
            raise InsertError(f"{out}: {differ} voxels outside the edit region differ from the input; not written")
        for tmp, p in zip(temps, targets):
            os.replace(tmp, p)
        return differ
    finally:
        for tmp in temps:
            tmp.unlink(missing_ok=True)


def _bits(a: np.ndarray) -> np.ndarray:
    """The array's raw bytes as unsigned integers: equality means bit-identical (also for floats)."""
    return a.view(np.dtype(f"u{a.dtype.itemsize}")) if a.dtype.kind == "f" else a


# ---------------------------------------------------------------------------------------------------------------
# the command

def _check_paths(ct, out, lesion_mask, synthesize, target_ml) -> Path:
    out = Path(out)
    if volume_suffix(out) is None:
        raise InsertError(f"{out}: the output must be a volume file (.nii.gz, .nii, .nrrd, .mha, .mhd)")
    if out.resolve() == Path(ct).resolve() or lesions_path(out).resolve() == Path(ct).resolve():
        raise InsertError(f"{out}: would overwrite the input CT; choose another output")
    if (lesion_mask is None) == (synthesize is None):
        raise InsertError("give either --lesion-mask MASK or --synthesize CLASS --target-ml N")
    if synthesize is not None and (target_ml is None or not np.isfinite(target_ml) or target_ml <= 0):
        raise InsertError(f"--target-ml {target_ml}: --synthesize needs a positive lesion volume in ml")
    return out


def insert_lesions(ct, out, model_dir, *, lesion_mask=None, lesion_class=None, synthesize=None,
                   target_ml: float | None = None, config: InsertConfig | None = None, device: str = "auto",
                   progress: bool = False) -> dict:
    """Insert lesions into a CT file and write OUT and OUT_lesions (module docstring); return the summary.

    Args:
        ct: CT volume file or DICOM series folder.
        out: edited CT to write (.nii.gz, .nii, .nrrd, .mha, .mhd); OUT_lesions is written beside it.
        model_dir: a patch model (`difflung.insertion.patches.train_patch_model`).
        lesion_mask: label file of project class ids aligned with the CT (or any non-zero value with lesion_class).
        lesion_class: class name or id for every non-zero voxel of lesion_mask.
        synthesize: class name or id to place with the mask synthesis instead of a mask; target_ml: its volume.
        config: `InsertConfig` (sampler, margin, seed).
        device: "auto", "cpu" or "cuda".
        progress: tqdm bar over painting rounds.
    Returns the summary dict (lesion ml per class, slices edited, seconds, differing voxels outside the region).
    """
    import torch

    from difflung.data.ct_anatomy import segment
    from difflung.diffusion.inpaint import network_calls
    from difflung.core.provenance import resolve_device

    cfg, t0, sec = config or InsertConfig(), time.perf_counter(), {}
    out = _check_paths(ct, out, lesion_mask, synthesize, target_ml)
    device = resolve_device(device)
    unet, meta = load_insert_model(model_dir, cfg.spacing_mm, device=device)
    allowed = paintable_classes(meta)
    cls = _class_arg(synthesize, allowed, "--synthesize") if synthesize is not None else None
    vol, raw, ref = _read_ct(ct)
    anat = segment(vol.hu, vol.spacing, name=str(ct))
    sec["read_and_anatomy"] = time.perf_counter() - t0
    if lesion_mask is not None:
        lesions = _read_lesion_mask(lesion_mask, vol, lesion_class, allowed)
        _check_in_lung(lesions, anat.lung, str(lesion_mask))
    else:
        t = time.perf_counter()
        rng_bank, rng_place = (np.random.default_rng(s) for s in np.random.SeedSequence(cfg.seed).spawn(2))
        donors = phantom_lesion_sources(cls, float(np.mean(vol.spacing[1:])), rng_bank)
        lesions = synthesize_lesions(anat.labels(), cls, float(target_ml), vol.voxel_ml, donors, rng_place)
        sec["synthesis"] = time.perf_counter() - t
    region = edit_region(lesions, anat.lung, vol.spacing, cfg.margin_mm)
    t = time.perf_counter()
    gen = torch.Generator().manual_seed(int(cfg.seed))
    hu, info = paint(vol.hu, anat.labels(lesions), region, vol.spacing, unet, meta, cfg, gen, device=device,
                     progress=progress)
    sec["painting"] = time.perf_counter() - t
    edited = raw.copy()
    edited[region] = _cast(hu[region], raw.dtype)  # everything else keeps the input's own values
    t = time.perf_counter()
    differ = _write_checked(edited, lesions, raw, region, vol, ref, out)
    sec["writing"] = time.perf_counter() - t
    n_lesions = int(ndi.label(lesions > 0, structure=np.ones((3, 3, 3), bool))[1])
    total = time.perf_counter() - t0
    return {
        "input": str(ct), "output": str(out), "lesions_output": str(lesions_path(out)), "model": str(model_dir),
        "mode": "lesion-mask" if lesion_mask is not None else "synthesize",
        "lesion_mask": str(lesion_mask) if lesion_mask is not None else None, "target_ml": target_ml,
        "lesion_ml": {L.BY_ID[c].name: round(float((lesions == c).sum()) * vol.voxel_ml, 3)
                      for c in np.unique(lesions) if c},
        "lesions": n_lesions, "edit_region_voxels": int(region.sum()),
        "differing_voxels_outside_region": differ, **info,
        "spacing_mm": list(vol.spacing), "model_pixel_spacing_mm": float(meta[SPACING_KEY]),
        "patch_size": int(meta["sample_size"]), "config": asdict(cfg),
        "network_calls_per_window": network_calls(cfg.steps, cfg.jump_length, cfg.jump_n_sample),
        "device": device, "seconds": round(total, 2), "seconds_per_lesion": round(total / max(n_lesions, 1), 3),
        "seconds_by_stage": {k: round(v, 2) for k, v in sec.items()},
    }


def configure_parser(p):
    import argparse

    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = "\n".join(__doc__.splitlines()[2:4])
    d = InsertConfig()
    p.add_argument("ct", type=Path, help="CT volume (.nii.gz/.nii/.nrrd/.mha/.mhd) or DICOM series folder")
    p.add_argument("--model", type=Path, required=True, help="patch model folder (difflung.insertion.patches)")
    p.add_argument("--out", type=Path, required=True, help="edited CT to write; OUT_lesions is written beside it")
    p.add_argument("--lesion-mask", type=Path, default=None, help="lesion label file (project class ids)")
    p.add_argument("--lesion-class", default=None, help="class for every non-zero voxel of --lesion-mask")
    p.add_argument("--synthesize", default=None, metavar="CLASS", help="place lesions of this class in healthy lung")
    p.add_argument("--target-ml", type=float, default=None, help="total lesion volume for --synthesize (ml)")
    for name, help_ in (("steps", "RePaint reverse steps"), ("jump_length", "RePaint jump length j"),
                        ("jump_n_sample", "RePaint resamplings r (1: none)"), ("eta", "0 DDIM, 1 DDPM steps"),
                        ("margin_mm", "in-plane dilation of lesions into the edit region"),
                        ("batch_size", "windows per UNet batch"),
                        ("spacing_mm", "patch spacing the model must have"), ("seed", "sampler/synthesis seed")):
        v = getattr(d, name)
        p.add_argument("--" + name.replace("_", "-"), type=type(v), default=v, help=f"{help_} (default {v})")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")


def run_cli(args) -> int:
    cfg = InsertConfig(**{k: getattr(args, k) for k in ("steps", "jump_length", "jump_n_sample", "eta", "margin_mm",
                                                        "batch_size", "spacing_mm", "seed")})
    try:
        summary = insert_lesions(args.ct, args.out, args.model, lesion_mask=args.lesion_mask,
                                 lesion_class=args.lesion_class, synthesize=args.synthesize,
                                 target_ml=args.target_ml, config=cfg, device=args.device, progress=True)
    except (DatasetError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0
