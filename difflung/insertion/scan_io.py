"""Reading and writing the scan for lesion insertion: the CT and lesion mask in, the edited CT and its lesion
labels out, the classes asked for on the command line, and the errors that name the file.

The output array is a copy of the input's own values (its file dtype, not HU floats) with the edit region's
voxels replaced; it is written in the input's geometry (spacing, origin, direction and pixel type kept; a DICOM
input is written in the project's LPI orientation) through temporary files, read back, and renamed into place only
when no voxel outside the region differs from the input.
"""
from __future__ import annotations

import os
import secrets
from pathlib import Path

import numpy as np

from difflung import labels as L
from difflung.data.ctio import CTVolume, read_label, read_volume, stem, volume_suffix
from difflung.data.dataset import DatasetError


class InsertError(DatasetError):
    """Bad input to lesion insertion; the message names the file (or option) and the problem."""


# ---------------------------------------------------------------------------------------------------------------
# the classes asked for

def class_list(ids) -> str:
    """"4=emphysema, 5=ggo" for messages; "none" for no id."""
    return ", ".join(f"{i}={L.BY_ID[i].name}" for i in ids) or "none"


def lesion_class_id(name, allowed, option: str) -> int:
    """The project id of class `name` (a name or an id) given to `option`; InsertError unless it is in `allowed`."""
    try:
        c = L.class_id(int(name) if str(name).isdigit() else str(name))
    except ValueError as e:
        raise InsertError(f"{option} {name}: {e}") from e
    if c not in allowed:
        raise InsertError(f"{option} {name}: class {L.BY_ID[c].name!r} cannot be inserted with this model "
                          f"(it paints {class_list(allowed)})")
    return c


# ---------------------------------------------------------------------------------------------------------------
# inputs

def check_paths(ct, out, lesion_mask, synthesize, target_ml) -> Path:
    """OUT as a Path; InsertError for an output that is not a volume file or would overwrite the input, and for
    options that do not name one lesion source (a mask, or a class with a positive volume)."""
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


def read_ct(path):
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


def read_lesion_mask(path, vol: CTVolume, lesion_class, allowed) -> np.ndarray:
    """The lesion mask as project ids (z, y, x) uint8, checked for geometry, emptiness and classes.

    Args:
        path: label file aligned with `vol`; lesion_class: class name or id for every non-zero voxel (None: the
            file holds project ids); allowed: the ids the model can paint.
    """
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
        return np.where(raw > 0, lesion_class_id(lesion_class, allowed, "--lesion-class"), 0).astype(np.uint8)
    values = [int(v) for v in np.unique(raw) if v]
    bad = [v for v in values if v not in allowed]
    if bad:
        raise InsertError(f"{path}: lesion mask values {bad} are not lesion classes this model can paint "
                          f"(allowed project ids: {class_list(allowed)}); relabel the mask or pass --lesion-class NAME")
    return raw.astype(np.uint8)


def check_in_lung(lesions: np.ndarray, lung: np.ndarray, name: str) -> None:
    """InsertError naming `name` when any lesion voxel lies outside the lung field."""
    out = (lesions > 0) & ~lung
    if out.any():
        n, tot = int(out.sum()), int((lesions > 0).sum())
        z = np.flatnonzero(out.any(axis=(1, 2)))
        raise InsertError(f"{name}: {n} of {tot} lesion voxels ({n / tot:.1%}, slices {z[0]}..{z[-1]}) lie outside "
                          "the lung field segmented from the CT; lesions are inserted into lung only")


# ---------------------------------------------------------------------------------------------------------------
# outputs

def lesions_path(out) -> Path:
    """OUT.nii.gz -> OUT_lesions.nii.gz (same folder and format)."""
    out = Path(out)
    return out.with_name(stem(out) + "_lesions" + volume_suffix(out))


def partial_path(path: Path) -> Path:
    """A hidden temporary name beside `path`, same format: written first, renamed into place when complete."""
    return path.with_name(f".{stem(path)}.{secrets.token_hex(6)}.partial{volume_suffix(path)}")


def cast_like(values: np.ndarray, dtype) -> np.ndarray:
    """HU floats -> the input's pixel type (rounded and clipped for integers)."""
    dtype = np.dtype(dtype)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def image_like(arr: np.ndarray, vol: CTVolume, ref):
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


def write_checked(edited: np.ndarray, lesions: np.ndarray, raw: np.ndarray, region: np.ndarray, vol: CTVolume,
                  ref, out: Path) -> int:
    """Write OUT and OUT_lesions through temporary files, read OUT back, count differing voxels outside the
    region (must be 0, else nothing is renamed into place), then rename both. Returns that count."""
    import SimpleITK as sitk

    from difflung.data.ctio import _orient

    targets = [out, lesions_path(out)]
    temps = [partial_path(p) for p in targets]
    try:
        for arr, tmp in zip((edited, lesions), temps):
            tmp.parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(image_like(arr, vol, ref), str(tmp), useCompression=volume_suffix(tmp) != ".nii")
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
