"""Reading CT volumes and label maps: NIfTI, NRRD, MHA/MHD (SimpleITK) and DICOM series folders (pydicom).

Every volume comes back in one orientation: SimpleITK `DICOMOrient(..., "LPI")`, i.e. the array is (z, y, x) with
    x increasing towards the patient's Left     (radiological display: patient's right on the viewer's left)
    y increasing towards Posterior              (anterior at the top of the displayed slice)
    z increasing towards Inferior               (slice 0 is the most superior: apex first, base last)
which is the convention of the dataset artifact (`z` from apex to base). Spacing is (z, y, x) in mm.
Oblique acquisitions are permuted/flipped to the closest axial orientation, not resampled.

Each volume also keeps the geometry it was stored in (`CTVolume.native`: voxel order, origin, direction), so an
edited array goes back to disk in the input's own voxel order (`to_native`, `write_volume(..., like=vol)`): a user
who diffs the arrays of input and output with numpy sees only the edit.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from difflung.data.dataset import DatasetError

ORIENTATION = "LPI"
VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


@dataclass(frozen=True)
class NativeGeometry:
    """How a volume was stored before reorientation, as SimpleITK reports it: size, spacing and origin (x, y, z),
    direction row-major 3x3. For a DICOM series: slices in ascending position along the slice normal."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @classmethod
    def of(cls, img) -> "NativeGeometry":
        return cls(tuple(int(v) for v in img.GetSize()), tuple(float(v) for v in img.GetSpacing()),
                   tuple(float(v) for v in img.GetOrigin()), tuple(float(v) for v in img.GetDirection()))


class CTReadError(DatasetError):
    """A file could not be read as a CT volume or label map; the message names the file and the problem."""


@dataclass
class CTVolume:
    """A CT volume in HU, axial (z, y, x) as described in the module docstring."""

    hu: np.ndarray  # (Z, Y, X) float32 HU
    spacing: tuple[float, float, float]  # (z, y, x) mm
    patient: str
    source: str
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)  # LPS mm of voxel [0, 0, 0], (x, y, z) as ITK
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)  # ITK row-major 3x3
    meta: dict = field(default_factory=dict)
    native: NativeGeometry | None = None  # the geometry as stored (None: built in memory, LPI is native)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.hu.shape)

    @property
    def voxel_ml(self) -> float:
        return float(np.prod(self.spacing)) / 1000.0


def volume_suffix(path) -> str | None:
    name = Path(path).name.lower()
    return next((s for s in VOLUME_SUFFIXES if name.endswith(s)), None)


def stem(path) -> str:
    """File name without its volume suffix (`case01.nii.gz` -> `case01`); folder name for a folder."""
    path = Path(path)
    s = volume_suffix(path)
    return path.name[: -len(s)] if s else path.name


# ---------------------------------------------------------------------------------------------------------------
# SimpleITK images

def _read_sitk(path: Path):
    import SimpleITK as sitk

    if not path.exists():
        raise CTReadError(f"{path}: no such file or folder")
    if path.is_dir():
        raise CTReadError(f"{path}: is a folder; expected a volume file ({', '.join(VOLUME_SUFFIXES)})")
    if volume_suffix(path) is None:
        raise CTReadError(f"{path}: unsupported file type {''.join(path.suffixes) or '(no extension)'}; "
                          f"expected one of {', '.join(VOLUME_SUFFIXES)} or a DICOM series folder")
    if volume_suffix(path) in (".nii", ".nii.gz"):
        _check_nifti_size(path)  # ITK reads a truncated .nii or .nii.gz without complaint
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise CTReadError(f"{path}: cannot be read as an image ({_itk_reason(e)}); "
                          "the file is corrupt, truncated or not a volume") from e
    if img.GetNumberOfComponentsPerPixel() != 1:
        raise CTReadError(f"{path}: has {img.GetNumberOfComponentsPerPixel()} components per voxel; "
                          "expected a scalar (grey-level) volume")
    return img


def _itk_reason(e: Exception) -> str:
    """The informative part of an ITK exception: its ERROR line without the source location, and the last line."""
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    if not lines:
        return "unknown reason"
    i = next((i for i, ln in enumerate(lines) if "ERROR" in ln), len(lines) - 1)
    msg = lines[i].split("): ", 1)[-1].split("ERROR: ", 1)[-1]
    if i < len(lines) - 1:
        msg += " " + lines[-1]
    return msg[:240]


def _gunzipped_size(path: Path) -> int | None:
    """Bytes in a complete gzip stream, or None when the stream ends early (one streaming pass, no copy kept)."""
    import zlib

    d, n = zlib.decompressobj(16 + zlib.MAX_WBITS), 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            n += len(d.decompress(chunk))
            if d.eof:
                return n
    return None


def _check_nifti_size(path: Path):
    import nibabel as nib

    try:
        hdr = nib.load(str(path)).header  # reads the 348-byte header only
    except Exception:  # noqa: BLE001 -- not a NIfTI header: ITK reports it below
        return
    need = int(hdr.get_data_offset()) + int(np.prod(hdr.get_data_shape())) * hdr.get_data_dtype().itemsize
    if path.name.lower().endswith(".gz"):
        try:
            have = _gunzipped_size(path)
        except Exception as e:  # noqa: BLE001 -- zlib.error, OSError
            raise CTReadError(f"{path}: corrupt gzip stream ({e})") from e
        if have is None:
            raise CTReadError(f"{path}: truncated NIfTI: the gzip stream ends before its end marker")
    else:
        have = path.stat().st_size
    if have < need:
        raise CTReadError(f"{path}: truncated NIfTI: the header announces {need} bytes, the file has {have}")


def _check_3d(img, path: Path):
    size = img.GetSize()  # (x, y, z)
    if img.GetDimension() != 3:
        raise CTReadError(f"{path}: is a {img.GetDimension()}D image of size {size}; expected a 3D volume")
    if min(size) < 2:
        raise CTReadError(f"{path}: has size {size} (x, y, z): a single slice, expected a 3D volume")


def _orient(img):
    import SimpleITK as sitk

    return sitk.DICOMOrient(img, ORIENTATION)


def _to_volume(img, path: Path, patient: str, meta: dict) -> CTVolume:
    import SimpleITK as sitk

    native = NativeGeometry.of(img)
    img = _orient(img)
    hu = sitk.GetArrayFromImage(img).astype(np.float32)  # (z, y, x)
    n_bad = int(hu.size - np.isfinite(hu).sum())
    if n_bad:
        raise CTReadError(f"{path}: {n_bad} voxels are NaN or infinite")
    return CTVolume(hu=hu, spacing=tuple(float(s) for s in img.GetSpacing()[::-1]), patient=patient,
                    source=str(path), origin=tuple(img.GetOrigin()), direction=tuple(img.GetDirection()), meta=meta,
                    native=native)


# ---------------------------------------------------------------------------------------------------------------
# DICOM series

def _dicom_headers(folder: Path):
    import pydicom
    from pydicom.errors import InvalidDicomError

    heads = []
    for f in sorted(p for p in folder.rglob("*") if p.is_file() and p.name.upper() != "DICOMDIR"):
        try:
            ds = pydicom.dcmread(f, stop_before_pixels=True)
        except (InvalidDicomError, EOFError, OSError, ValueError):
            continue  # not DICOM (a readme, a thumbnail): ignored
        if "Rows" in ds:  # an image (not a structured report or presentation state)
            heads.append((f, ds))
    return heads


def read_dicom_series(folder) -> CTVolume:
    """Read the one DICOM series in `folder` (searched recursively) into HU.

    Slices are sorted by ImagePositionPatient projected on the slice normal (row x column direction), each slice's
    RescaleSlope/RescaleIntercept is applied. More than one series is an error listing their SeriesInstanceUIDs.
    """
    import pydicom
    import SimpleITK as sitk

    folder = Path(folder)
    heads = _dicom_headers(folder)
    if not heads:
        raise CTReadError(f"{folder}: no DICOM image files in this folder")
    series: dict[str, list] = {}
    for f, ds in heads:
        series.setdefault(str(ds.get("SeriesInstanceUID", "(none)")), []).append((f, ds))
    if len(series) > 1:
        listing = "; ".join(f"{uid} ({len(v)} files)" for uid, v in sorted(series.items()))
        raise CTReadError(f"{folder}: holds {len(series)} DICOM series, expected one; move each series to its own "
                          f"folder. Series: {listing}")
    (uid, items), = series.items()
    f0, ds0 = items[0]
    for key in ("ImageOrientationPatient", "ImagePositionPatient", "PixelSpacing"):
        missing = [f.name for f, ds in items if key not in ds]
        if missing:
            raise CTReadError(f"{folder / missing[0]}: DICOM attribute {key} is missing; cannot place the slice")
    iop = np.asarray(ds0.ImageOrientationPatient, dtype=np.float64)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    pos = np.array([np.dot(np.asarray(ds.ImagePositionPatient, dtype=np.float64), normal) for _, ds in items])
    order = np.argsort(pos, kind="stable")
    items, pos = [items[i] for i in order], pos[order]
    if len(items) < 2:
        raise CTReadError(f"{folder}: holds a single DICOM slice ({f0.name}); expected a 3D series")
    gaps = np.diff(pos)
    if np.any(gaps < 1e-3):
        k = int(np.argmin(gaps))
        raise CTReadError(f"{folder}: files {items[k][0].name} and {items[k + 1][0].name} have the same slice "
                          f"position ({pos[k]:.2f} mm); the folder mixes acquisitions")
    dz = float(np.median(gaps))
    if np.max(np.abs(gaps - dz)) > 0.1 * dz:
        raise CTReadError(f"{folder}: slice spacing is irregular ({gaps.min():.2f} .. {gaps.max():.2f} mm); "
                          "slices are missing or the series is not a single volume")
    slices = []
    for f, _ in items:
        try:
            ds = pydicom.dcmread(f)
            px = ds.pixel_array.astype(np.float32)
        except Exception as e:  # pydicom raises many types for unsupported compression or truncated pixel data
            raise CTReadError(f"{f}: cannot decode pixel data ({type(e).__name__}: {e})") from e
        if px.ndim != 2 or (slices and px.shape != slices[0].shape):
            raise CTReadError(f"{f}: pixel array of shape {px.shape}; expected one 2D slice like the series' first")
        slope, intercept = float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0))
        slices.append(px * slope + intercept)
    arr = np.stack(slices)  # (k along normal, rows along col, columns along row)
    img = sitk.GetImageFromArray(arr)
    ps = [float(v) for v in ds0.PixelSpacing]  # (between rows, between columns) = (y, x)
    img.SetSpacing((ps[1], ps[0], dz))
    img.SetOrigin(tuple(float(v) for v in items[0][1].ImagePositionPatient))
    img.SetDirection(tuple(np.column_stack([row, col, normal]).ravel()))
    patient = str(ds0.get("PatientID", "") or "").strip() or folder.name
    meta = {"format": "dicom", "series_uid": uid, "n_files": len(items),
            "modality": str(ds0.get("Modality", ""))}
    return _to_volume(img, folder, patient, meta)


# ---------------------------------------------------------------------------------------------------------------
# public API

def read_volume(path, patient: str | None = None) -> CTVolume:
    """Read a CT volume in HU from a NIfTI/NRRD/MHA/MHD file or a DICOM series folder.

    Args:
        path: a volume file or a folder holding exactly one DICOM series.
        patient: patient id to record (default: DICOM PatientID, else the file stem / folder name).
    Returns a CTVolume, (z, y, x) float32 HU in the orientation of the module docstring.
    Raises CTReadError naming the file: missing, unsupported, corrupt, not 3D, NaN voxels, several DICOM series.
    """
    path = Path(path)
    if not path.exists():
        raise CTReadError(f"{path}: no such file or folder")
    if path.is_dir():
        vol = read_dicom_series(path)
        if patient:
            vol.patient = patient
        return vol
    img = _read_sitk(path)
    _check_3d(img, path)
    return _to_volume(img, path, patient or stem(path), {"format": volume_suffix(path).lstrip(".")})


def read_label(path, like: CTVolume, *, rtol: float = 1e-3, origin_tol_voxels: float = 0.5) -> np.ndarray:
    """Read a label map aligned with `like`: integer values (z, y, x) in the same orientation (file's int dtype).

    Args:
        path: label volume file (or DICOM folder; unusual) in any format `read_volume` reads.
        like: the image it belongs to; shape, spacing (relative tolerance `rtol`) and origin (within
            `origin_tol_voxels` voxels) must match, otherwise CTReadError names both files.
    """
    import SimpleITK as sitk

    path = Path(path)
    if path.is_dir():
        lab = read_dicom_series(path)
        arr, spacing, origin = lab.hu, lab.spacing, np.asarray(lab.origin)
    else:
        img = _read_sitk(path)
        _check_3d(img, path)
        img = _orient(img)
        arr = sitk.GetArrayFromImage(img)
        spacing, origin = tuple(float(s) for s in img.GetSpacing()[::-1]), np.asarray(img.GetOrigin())
    if arr.shape != like.hu.shape:
        raise CTReadError(f"{path}: label shape {arr.shape} (z, y, x) does not match image {like.source} "
                          f"shape {like.hu.shape}")
    if not np.allclose(spacing, like.spacing, rtol=rtol, atol=1e-4):
        raise CTReadError(f"{path}: label spacing {_fmt(spacing)} mm does not match image {like.source} "
                          f"spacing {_fmt(like.spacing)} mm (z, y, x)")
    shift = np.abs(origin - np.asarray(like.origin)) / np.asarray(like.spacing[::-1])
    if np.any(shift > origin_tol_voxels):
        raise CTReadError(f"{path}: label origin {_fmt(origin)} mm is {shift.max():.1f} voxels away from image "
                          f"{like.source} origin {_fmt(like.origin)}; the label map is not aligned with the image")
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            raise CTReadError(f"{path}: label map contains NaN or infinite values")
        if np.any(arr != np.round(arr)):
            raise CTReadError(f"{path}: label map holds non-integer values; expected integer class labels")
    if arr.min() < 0:
        raise CTReadError(f"{path}: label map holds negative values (min {arr.min()}); expected labels >= 0")
    return arr if np.issubdtype(arr.dtype, np.integer) else arr.astype(np.int64)


def _fmt(v) -> str:
    return "(" + ", ".join(f"{float(x):.4g}" for x in v) + ")"


def lpi_image(array: np.ndarray, vol: CTVolume):
    """A SimpleITK image of a (z, y, x) array in `vol`'s LPI geometry (spacing, origin, direction)."""
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    img.SetSpacing(tuple(float(s) for s in vol.spacing[::-1]))
    img.SetOrigin(tuple(float(v) for v in vol.origin))
    img.SetDirection(tuple(float(v) for v in vol.direction))
    return img


def to_native(array: np.ndarray, vol: CTVolume):
    """A (z, y, x) LPI array of `vol`'s shape as a SimpleITK image in the geometry `vol` was read from.

    Undoes `read_volume`'s reorientation (a permutation and flips, no resampling): the image's voxel order,
    spacing, origin and direction are those of the input file (or DICOM series) exactly, so
    `GetArrayFromImage` of input and output differ only where `array` differs from `vol.hu`.
    Args:
        array: values (z, y, x) on `vol`'s LPI grid, any dtype SimpleITK writes.
        vol: the volume from `read_volume`; without `vol.native` (built in memory) the image stays LPI.
    """
    import SimpleITK as sitk

    if tuple(array.shape) != tuple(vol.hu.shape):
        raise ValueError(f"array shape {array.shape} differs from {vol.source}'s {vol.hu.shape} (z, y, x)")
    img = lpi_image(array, vol)
    g = vol.native
    if g is None:
        return img
    img = sitk.DICOMOrient(img, sitk.DICOMOrientImageFilter.GetOrientationFromDirectionCosines(g.direction))
    if tuple(img.GetSize()) != g.size:  # cannot happen for a volume read here; guards a hand-made `native`
        raise ValueError(f"{vol.source}: reorienting back gives size {img.GetSize()}, stored size is {g.size}")
    # the permutation gives the stored geometry up to float rounding of the origin; keep it exactly
    img.SetSpacing(g.spacing)
    img.SetOrigin(g.origin)
    img.SetDirection(g.direction)
    return img


def write_volume(path, array: np.ndarray, spacing=None, *, origin=None, direction=None,
                 like: CTVolume | None = None) -> Path:
    """Write a (z, y, x) array as a volume (format from the suffix).

    Args:
        path: target file; .nii.gz, .nrrd and .mha are compressed.
        array: (z, y, x) values in this module's orientation (LPI); a 2D array is written as one slice.
        spacing: (z, y, x) mm; origin (x, y, z) LPS mm and direction (row-major 3x3) of voxel order (z, y, x).
            Without a direction a 3D volume is written as LPI with z towards inferior.
        like: the `read_volume` result the array belongs to: the file gets that input's own voxel order,
            spacing, origin and direction (`to_native`); spacing, origin and direction must then be left out.
    """
    import SimpleITK as sitk

    if like is not None:
        if spacing is not None or origin is not None or direction is not None:
            raise ValueError("write_volume: give either like= or spacing/origin/direction, not both")
        img = to_native(array, like)
    else:
        if spacing is None:
            raise ValueError("write_volume: spacing (z, y, x) is required without like=")
        img = sitk.GetImageFromArray(np.ascontiguousarray(array))
        img.SetSpacing(tuple(float(s) for s in spacing[::-1]))
        if array.ndim == 3 or direction is not None:
            img.SetDirection(direction or (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
        if origin is not None:
            img.SetOrigin(tuple(float(v) for v in origin))
    sitk.WriteImage(img, str(path), useCompression=str(path).endswith((".gz", ".nrrd", ".mha")))
    return Path(path)
