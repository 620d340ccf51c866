"""Small CT fixtures written by the tests themselves: a synthetic chest volume and a DICOM series writer."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from difflung import labels as L


def toy_chest(shape=(12, 64, 64), spacing=(5.0, 5.0, 5.0), lesion: bool = True):
    """A small thorax in LPI (z, y, x): body ellipse, right/left lungs, trachea on the top slices, one lesion.

    Returns (hu float32 (Z,Y,X), truth uint8 project ids, user label map int64 with value 1 on the lesion).
    5 mm voxels keep it tiny while organs keep their real size (lungs ~0.6 l each, trachea 18 mm wide).
    """
    z, h, w = shape
    yy, xx = np.mgrid[:h, :w] * spacing[1]  # mm
    cy, cx = h * spacing[1] / 2, w * spacing[2] / 2
    body2d = ((yy - cy) / 115.0) ** 2 + ((xx - cx) / 145.0) ** 2 <= 1
    right2d = ((yy - cy) / 80.0) ** 2 + ((xx - cx + 70.0) / 45.0) ** 2 <= 1  # x small: patient's right
    left2d = ((yy - cy) / 80.0) ** 2 + ((xx - cx - 70.0) / 45.0) ** 2 <= 1
    trachea2d = (yy - cy + 40.0) ** 2 + (xx - cx) ** 2 <= 9.0 ** 2
    hu = np.full(shape, -1000.0, np.float32)
    truth = np.zeros(shape, np.uint8)
    hu[:, body2d] = 40.0
    truth[:, body2d] = L.BODY
    for k in range(z):
        if k >= 2:
            hu[k, right2d | left2d] = -860.0
            truth[k, right2d | left2d] = L.LUNG
        if k <= 4:
            hu[k, trachea2d] = -1000.0
            truth[k, trachea2d] = L.AIRWAY
    lab = np.zeros(shape, np.int64)
    if lesion:
        les = (yy - cy) ** 2 + (xx - cx + 70.0) ** 2 <= 12.0 ** 2
        for k in range(z // 2, z // 2 + 2):
            hu[k, les] = 20.0
            lab[k, les] = 1
            truth[k, les] = L.NODULE
    return hu, truth, lab


def write_dicom_series(folder, hu, spacing=(2.5, 0.8, 0.8), *, series_uid="1.2.826.0.1.3680043.8.498.1",
                       patient_id="TOY01", slopes=None, intercept=-1024.0, origin=(-100.0, -100.0, 50.0),
                       shuffle_rng=None, z_up: bool = True):
    """Write `hu` (z, y, x; z from superior to inferior) as an axial CT DICOM series, one file per slice.

    Stored values are (hu - intercept) / slope (int16). With z_up, ImagePositionPatient z decreases along the
    array (slice 0 is the most superior), as scanners record feet-first or head-first alike in patient space.
    `shuffle_rng` writes files under names in a shuffled order so that readers must sort by position.
    """
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    n = hu.shape[0]
    slopes = np.ones(n) if slopes is None else np.asarray(slopes, dtype=float)
    names = np.arange(n) if shuffle_rng is None else shuffle_rng.permutation(n)
    paths = []
    for k in range(n):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        path = folder / f"IM{names[k]:04d}.dcm"
        ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.Modality = "CT"
        ds.PatientID = patient_id
        ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.100"
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = int(names[k]) + 1
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        zpos = origin[2] - k * spacing[0] if z_up else origin[2] + k * spacing[0]
        ds.ImagePositionPatient = [origin[0], origin[1], zpos]
        ds.PixelSpacing = [spacing[1], spacing[2]]
        ds.SliceThickness = spacing[0]
        ds.Rows, ds.Columns = hu.shape[1:]
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope = float(slopes[k])
        ds.RescaleIntercept = float(intercept)
        stored = np.round((hu[k] - intercept) / slopes[k]).astype(np.int16)
        ds.PixelData = stored.tobytes()
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_toy_case(folder, name="toy", *, suffix=".nrrd", layout="flat", lesion=True, shape=(12, 64, 64),
                   spacing=(5.0, 5.0, 5.0), label_value=1):
    """Write a toy chest as an image/label pair: layout "flat" (<name>_image/<name>_label) or "folder"
    (<name>/image, <name>/label). Returns (image path, label path, truth)."""
    from difflung.data.ctio import write_volume

    hu, truth, lab = toy_chest(shape=shape, spacing=spacing, lesion=lesion)
    folder = Path(folder)
    if layout == "flat":
        folder.mkdir(parents=True, exist_ok=True)
        img, labp = folder / f"{name}_image{suffix}", folder / f"{name}_label{suffix}"
    else:
        (folder / name).mkdir(parents=True, exist_ok=True)
        img, labp = folder / name / f"image{suffix}", folder / name / f"label{suffix}"
    write_volume(img, hu.astype(np.int16), spacing)
    write_volume(labp, (lab * label_value).astype(np.uint16), spacing)
    return img, labp, truth


STANDIN_CODES = {"emphysema": 1, "ggo": 2, "fibrosis": 3}  # a user's own lesion label values


def write_standin(folder, *, n_patients=10, slices=8, phantom_size=128, seed=0):
    """A "your data" stand-in: phantom patients written as NIfTI `<case>_image.nii.gz` / `<case>_label.nii.gz`
    with only the user's lesion labels (1 emphysema, 2 GGO, 3 fibrosis; anatomy is left to `prepare`), and the
    class map `standin.yml` beside the cases folder. Returns (cases folder, class map path)."""
    from difflung import labels as L
    from difflung.data.ctio import write_volume
    from difflung.phantom import PhantomConfig, phantom_cohort

    folder = Path(folder)
    cases = folder / "cases"
    cases.mkdir(parents=True, exist_ok=True)
    cfg = PhantomConfig(size=phantom_size, slices_per_patient=slices)
    for v in phantom_cohort(n_patients, np.random.default_rng(seed), cfg):
        lab = np.zeros(v.labels.shape, np.uint8)
        for name, code in STANDIN_CODES.items():
            lab[v.labels == L.BY_NAME[name].id] = code
        write_volume(cases / f"{v.patient}_image.nii.gz", np.round(v.hu).astype(np.int16), v.spacing)
        write_volume(cases / f"{v.patient}_label.nii.gz", lab, v.spacing)
    classmap = folder / "standin.yml"
    classmap.write_text("name: standin\nlabels:\n" + "".join(f"  {c}: {n}\n" for n, c in STANDIN_CODES.items()))
    return cases, classmap
