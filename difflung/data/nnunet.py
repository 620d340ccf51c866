"""Export real (+ synthetic) training slices in nnU-Net v2 raw layout, so users can train nnU-Net on them.

    <out_root>/Dataset{ID:03d}_{name}/
        dataset.json                    channel_names {"0": "CT"}, labels {"background": 0, ...}, numTraining,
                                        file_ending ".nii.gz", and a "difflung" block (case table, which cases
                                        are synthetic, project ids of the labels, provenance)
        imagesTr/{case}_0000.nii.gz     one channel, HU (float32), one axial slice
        labelsTr/{case}.nii.gz          uint8, contiguous values 0..K-1 (nnU-Net requires consecutive labels)

Each slice is a NIfTI volume with one slice: nibabel array (x, y, 1), which nnU-Net's readers (SimpleITKIO and
NibabelIO) both return as (1, y, x), the shape of a 2D case; train it with the `2d` configuration. The
out-of-plane spacing is 999 x the in-plane spacing, the convention nnU-Net's own SimpleITKIO applies to 2D
images, so nothing treats neighbouring cases as slices of one volume. Slices of one patient are correlated:
nnU-Net's default 5-fold split is per case, so for a patient-wise split write `splits_final.json` in
nnUNet_preprocessed from the case table in dataset.json.

The synthetic part is an .npz (images in [-1, 1], labels) or a folder written by `python -m difflung generate`
(`load_generated`: NIfTI image/label slices in the same one-slice layout, listed in its `generated.json`); each
synthetic case keeps its own pixel spacing.

CLI: `python -m difflung export-nnunet --dataset DIR [--synthetic FILE.npz|DIR] --out DIR --id N --name NAME`.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from difflung import labels as L
from difflung.data.dataset import unwindow, window
from difflung.core.provenance import atomic_dir, provenance, write_json_atomic

FILE_ENDING = ".nii.gz"
OUT_OF_PLANE = 999.0  # x in-plane spacing, as nnU-Net's SimpleITKIO does for 2D images
GENERATED_FILE = "generated.json"  # the table of contents of a `python -m difflung generate` folder
GENERATED_FORMAT = "difflung-generated/1"


class ExportError(ValueError):
    """Bad input to the nnU-Net export; the message names the file or argument and the problem."""


def _as_pair(data, what: str):
    """(images, labels[, patient]) tuple or an object with .images/.labels[/.patient] -> arrays."""
    if hasattr(data, "images") and hasattr(data, "labels"):
        images, labels, patient = data.images, data.labels, getattr(data, "patient", None)
    elif isinstance(data, (tuple, list)) and len(data) in (2, 3):
        images, labels = data[0], data[1]
        patient = data[2] if len(data) == 3 else None
    else:
        raise ExportError(f"{what}: expected (images, labels) or a Slices object, got {type(data).__name__}")
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 3 or labels.shape != images.shape:
        raise ExportError(f"{what}: images {images.shape} and labels {labels.shape} must both be (N, S, S)")
    if not np.isfinite(images).all():
        raise ExportError(f"{what}: images contain NaN or infinite values")
    if images.size and (images.min() < -1.0001 or images.max() > 1.0001):
        raise ExportError(f"{what}: images must be in [-1, 1] (the HU window [-1000, 400]); "
                          f"got [{images.min():.3g}, {images.max():.3g}]")
    if patient is not None and len(patient) != len(images):
        raise ExportError(f"{what}: {len(patient)} patient ids for {len(images)} images")
    return images.astype(np.float32), labels, patient


def write_slice_nifti(path, array2d: np.ndarray, spacing: tuple[float, float]) -> None:
    """Write one axial slice (y, x) as a one-slice NIfTI (x, y, 1) with in-plane `spacing` (row, column) mm."""
    import nibabel as nib

    sy, sx = spacing
    affine = np.diag([sx, sy, OUT_OF_PLANE * max(sx, sy), 1.0])
    img = nib.Nifti1Image(np.ascontiguousarray(array2d.T[:, :, None]), affine)  # (y, x) -> (x, y, 1)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    nib.save(img, str(path))


def read_slice_nifti(path) -> tuple[np.ndarray, tuple[float, float]]:
    """Read a slice written by `write_slice_nifti`: ((y, x) array, (row, column) spacing in mm)."""
    import nibabel as nib

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: file not found")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
    except Exception as e:  # nibabel raises several types for damaged files
        raise ExportError(f"{path}: not a readable NIfTI file ({e})") from e
    if data.ndim != 3 or data.shape[2] != 1:
        raise ExportError(f"{path}: expected one axial slice (x, y, 1), got shape {data.shape}")
    sx, sy = (float(z) for z in img.header.get_zooms()[:2])
    return data[:, :, 0].T, (sy, sx)


def _validated(dataset_id, name: str, real, synthetic, classes) -> tuple[list, list[int]]:
    """Check the export's id, name, parts and classes; return the parts (tag, images, labels, patients) and the
    sorted project ids to export. Raises ExportError naming the problem."""
    if not isinstance(dataset_id, (int, np.integer)) or not 1 <= int(dataset_id) <= 999:
        raise ExportError(f"dataset id {dataset_id!r}: nnU-Net ids are integers 1..999")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name or ""):
        raise ExportError(f"dataset name {name!r}: use letters, digits, '-' and '_' only")
    parts = [("real", *_as_pair(real, "real"))]
    if synthetic is not None:
        parts.append(("syn", *_as_pair(synthetic, "synthetic")))
    if sum(len(p[1]) for p in parts) == 0:
        raise ExportError("nothing to export: no real and no synthetic slices")
    present = sorted(set().union(*(np.unique(p[2]).tolist() for p in parts)))
    classes = sorted(int(c) for c in (classes if classes is not None else present))
    if L.BACKGROUND not in classes:
        raise ExportError(f"classes {classes}: nnU-Net needs background (project id {L.BACKGROUND}) as label 0")
    for c in classes:
        if c not in L.BY_ID:
            raise ExportError(f"classes: {c} is not a project class id")
    for tag, _, labs, _ in parts:
        bad = sorted(set(np.unique(labs).tolist()) - set(classes))
        if bad:
            raise ExportError(f"{'real' if tag == 'real' else 'synthetic'}: label values {bad} not in classes {classes}")
    return parts, classes


def export_nnunet(out_root, dataset_id: int, name: str, real, synthetic=None, classes=None, *,
                  spacing: tuple[float, float] = (1.0, 1.0), overwrite: bool = False,
                  source: str = "", synthetic_spacing=None) -> Path:
    """Write real (+ synthetic) slices as an nnU-Net v2 raw dataset; return its folder.

    Args:
        out_root: the nnUNet_raw folder (created if missing).
        dataset_id: 1..999; the folder is `Dataset{dataset_id:03d}_{name}`.
        name: letters, digits, '-' and '_' only.
        real: (images, labels[, patient]) or a `difflung.data.dataset.Slices`; images (N, S, S) in [-1, 1], labels
            (N, S, S) uint8 project ids.
        synthetic: the same for generated image-mask pairs, or None. Its cases are named `syn_*` and listed in
            dataset.json["difflung"]["synthetic_cases"].
        classes: project ids to export (must include background 0 and every label value present); default: the
            label values present. They are remapped to 0..K-1 in increasing project id.
        spacing: in-plane pixel spacing (row, column) in mm.
        overwrite: replace an existing folder of the same name (atomically) instead of refusing.
        source: free text recorded in dataset.json (e.g. the dataset artifact's path).
        synthetic_spacing: (N, 2) in-plane spacing of each synthetic case (`load_generated`); None: `spacing`.
    """
    parts, classes = _validated(dataset_id, name, real, synthetic, classes)
    n_syn = len(parts[1][1]) if synthetic is not None else 0
    syn_spacing = np.tile(np.asarray(spacing, float), (n_syn, 1)) if synthetic_spacing is None else \
        np.asarray(synthetic_spacing, float)
    if syn_spacing.shape != (n_syn, 2) or not (syn_spacing > 0).all():
        raise ExportError(f"synthetic: {syn_spacing.shape} spacings for {n_syn} images; give one positive "
                          f"(row, column) pair per image")
    sizes = {p[1].shape[1:] for p in parts if len(p[1])}
    out_root = Path(out_root)
    folder = out_root / f"Dataset{int(dataset_id):03d}_{name}"
    clash = [p.name for p in out_root.glob(f"Dataset{int(dataset_id):03d}_*") if p != folder] if out_root.is_dir() else []
    if clash:
        raise ExportError(f"{out_root}: id {dataset_id} is already used by {clash}; nnU-Net ids must be unique")
    if folder.exists() and not overwrite:
        raise ExportError(f"{folder}: exists; pass overwrite=True (CLI: --overwrite) to replace it")

    lut = np.zeros(256, dtype=np.uint8)
    lut[classes] = np.arange(len(classes), dtype=np.uint8)
    label_names = {L.BY_ID[c].name: k for k, c in enumerate(classes)}
    cases, synthetic_cases = {}, []
    out_root.mkdir(parents=True, exist_ok=True)
    with atomic_dir(folder) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        for tag, imgs, labs, pats in parts:
            for i in range(len(imgs)):
                case = f"{tag}_{i:05d}"
                sp = tuple(float(s) for s in syn_spacing[i]) if tag == "syn" else spacing
                write_slice_nifti(tmp / "imagesTr" / f"{case}_0000{FILE_ENDING}", unwindow(imgs[i]), sp)
                write_slice_nifti(tmp / "labelsTr" / f"{case}{FILE_ENDING}", lut[labs[i]], sp)
                cases[case] = {"source": "synthetic" if tag == "syn" else "real",
                               "patient": None if pats is None else str(pats[i])}
                if tag == "syn" and synthetic_spacing is not None:
                    cases[case]["spacing_mm"] = list(sp)
                if tag == "syn":
                    synthetic_cases.append(case)
        meta = {
            "channel_names": {"0": "CT"},
            "labels": label_names,
            "numTraining": len(cases),
            "file_ending": FILE_ENDING,
            "name": name,
            "description": "difflung export: axial lung CT slices in HU, one slice per case (2D)",
            "difflung": {
                "project_ids": {L.BY_ID[c].name: c for c in classes},
                "synthetic_cases": synthetic_cases,
                "n_real": int(len(parts[0][1])),
                "n_synthetic": len(synthetic_cases),
                "cases": cases,
                "spacing_mm": [float(s) for s in spacing],
                "size": list(next(iter(sizes))) if len(sizes) == 1 else sorted(map(list, sizes)),
                "source": source,
                "provenance": provenance(config={"dataset_id": int(dataset_id), "name": name,
                                                 "classes": classes, "spacing": list(spacing)}),
            },
        }
        write_json_atomic(tmp / "dataset.json", meta)
    return folder


def load_synthetic_npz(path):
    """Read a synthetic set: an .npz with `images` (N, S, S) in [-1, 1] and `labels` (N, S, S) project ids."""
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: synthetic file not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("images", "labels") if k not in z.files]
            if missing:
                raise ExportError(f"{path}: lacks arrays {missing} (has {z.files}); expected images and labels")
            return z["images"], z["labels"]
    except (OSError, ValueError) as e:
        if isinstance(e, ExportError):
            raise
        raise ExportError(f"{path}: not a readable .npz without pickled objects ({e})") from e


def load_generated(folder) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Read a folder written by `python -m difflung generate`, as it is.

    Returns (images (N, S, S) float32 in [-1, 1], labels (N, S, S) uint8 project ids, spacing (N, 2) mm), in
    the order of its generated.json. Raises ExportError naming the file for a missing or inconsistent part.
    """
    folder = Path(folder)
    meta_path = folder / GENERATED_FILE
    if not meta_path.is_file():
        raise ExportError(f"{meta_path}: missing; --synthetic takes an .npz or a folder written by "
                          f"`python -m difflung generate`")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise ExportError(f"{meta_path}: not valid JSON ({e})") from e
    if meta.get("format") != GENERATED_FORMAT:
        raise ExportError(f"{meta_path}: format {meta.get('format')!r}, expected {GENERATED_FORMAT!r}")
    images, labels, spacing = [], [], []
    for row in meta["images"]:
        hu, sp = read_slice_nifti(folder / row["image"])
        lab, sp_lab = read_slice_nifti(folder / row["label"])
        if lab.shape != hu.shape or not np.allclose(sp, sp_lab):
            raise ExportError(f"{folder / row['label']}: shape {lab.shape} / spacing {sp_lab} differ from its "
                              f"image's {hu.shape} / {sp}")
        if not np.array_equal(lab, np.round(lab)) or lab.min() < 0 or lab.max() > 255:
            raise ExportError(f"{folder / row['label']}: label values must be integers 0..255")
        images.append(window(hu.astype(np.float32)))
        labels.append(lab.astype(np.uint8))
        spacing.append(sp)
    if not images:
        raise ExportError(f"{meta_path}: lists no images")
    if len({a.shape for a in images}) != 1:
        raise ExportError(f"{folder}: images of several sizes {sorted({a.shape for a in images})}")
    return np.stack(images), np.stack(labels), np.asarray(spacing, float)
