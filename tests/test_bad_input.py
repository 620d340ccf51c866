"""Bad input corpus: every case is refused with a message naming the file and the problem; nothing is written."""
import gzip
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _ct_fixtures import toy_chest, write_dicom_series, write_toy_case
from difflung.data import realdata
from difflung.data.ctio import write_volume
from difflung.data.dataset import DatasetError
from difflung.data.prepare import prepare

REPO = Path(__file__).resolve().parent.parent
SP = (5.0, 5.0, 5.0)


def _toy(d: Path, name="p"):
    return write_toy_case(d, name)[:2]


# Each builder writes its bad input under `d` and returns (prepare kwargs, regex the message must match).
def missing_file(d):
    return {"inputs": d / "nope.nii.gz"}, r"nope\.nii\.gz: no such file"


def corrupt_nifti(d):
    (d / "bad.nii").write_bytes(b"not a nifti " * 100)
    return {"inputs": d / "bad.nii"}, r"bad\.nii: cannot be read as an image"


def truncated_nifti(d):
    hu, _, _ = toy_chest()
    write_volume(d / "t.nii", hu.astype(np.int16), SP)
    data = (d / "t.nii").read_bytes()
    (d / "t.nii").write_bytes(data[: len(data) // 2])
    return {"inputs": d / "t.nii"}, r"t\.nii: truncated NIfTI"


def truncated_nifti_gz(d):
    hu, _, _ = toy_chest()
    write_volume(d / "t.nii.gz", hu.astype(np.int16), SP)
    data = (d / "t.nii.gz").read_bytes()
    (d / "t.nii.gz").write_bytes(data[: len(data) // 2])
    return {"inputs": d / "t.nii.gz"}, r"t\.nii\.gz: truncated NIfTI"


def gzip_of_garbage(d):
    (d / "g.nii.gz").write_bytes(gzip.compress(b"\0" * 1000))
    return {"inputs": d / "g.nii.gz"}, r"g\.nii\.gz: cannot be read"


def two_dicom_series(d):
    hu, _, _ = toy_chest(lesion=False)
    write_dicom_series(d / "dcm", hu[:6], SP, series_uid="1.2.3.4.1")
    write_dicom_series(d / "dcm" / "more", hu[6:], SP, series_uid="1.2.3.4.2")
    return {"inputs": d / "dcm"}, r"dcm: holds 2 DICOM series.*1\.2\.3\.4\.1 \(6 files\); 1\.2\.3\.4\.2 \(6 files\)"


def dicom_missing_slice(d):
    hu, _, _ = toy_chest(lesion=False)
    paths = write_dicom_series(d / "dcm", hu, SP)
    paths[5].unlink()
    return {"inputs": d / "dcm"}, r"dcm: slice spacing is irregular"


def shape_mismatch(d):
    img, _ = _toy(d)
    write_volume(d / "lab.nrrd", np.zeros((12, 64, 60), np.uint8), SP)
    return {"inputs": img, "labels": d / "lab.nrrd", "classes": "nodule"}, r"lab\.nrrd: label shape \(12, 64, 60\)"


def spacing_mismatch(d):
    img, _ = _toy(d)
    write_volume(d / "lab.nrrd", np.zeros((12, 64, 64), np.uint8), (2.5, 5.0, 5.0))
    return {"inputs": img, "labels": d / "lab.nrrd", "classes": "nodule"}, r"lab\.nrrd: label spacing \(2\.5, 5, 5\)"


def origin_mismatch(d):
    img, _ = _toy(d)
    write_volume(d / "lab.nrrd", np.zeros((12, 64, 64), np.uint8), SP, origin=(0.0, 0.0, 50.0))
    return {"inputs": img, "labels": d / "lab.nrrd", "classes": "nodule"}, r"lab\.nrrd: label origin .* not aligned"


def values_not_in_classmap(d):
    img, lab, _ = write_toy_case(d, "p", label_value=4)
    (d / "map.yml").write_text("labels:\n  1: nodule\n  2: ggo\n")
    return ({"inputs": img, "labels": lab, "classes": d / "map.yml"},
            r"p_label\.nrrd: label values 4 are not in class map .*map\.yml")


def labels_without_classmap(d):
    img, lab = _toy(d)
    return {"inputs": img, "labels": lab}, r"p_label\.nrrd: label values \[1\] need a class map"


def non_integer_labels(d):
    img, _ = _toy(d)
    write_volume(d / "lab.nrrd", np.full((12, 64, 64), 0.5, np.float32), SP)
    return {"inputs": img, "labels": d / "lab.nrrd", "classes": "nodule"}, r"lab\.nrrd: label map holds non-integer"


def nan_voxels(d):
    hu, _, _ = toy_chest()
    hu[5, 30, 30] = np.nan
    write_volume(d / "n.nrrd", hu, SP)
    return {"inputs": d / "n.nrrd"}, r"n\.nrrd: 1 voxels are NaN or infinite"


def all_air(d):
    write_volume(d / "air.nii.gz", np.full((12, 64, 64), -1000, np.int16), SP)
    return {"inputs": d / "air.nii.gz"}, r"air\.nii\.gz: no body and so no lungs found"


def no_lungs(d):
    hu, _, _ = toy_chest(lesion=False)
    hu[(hu < -500) & (np.arange(64)[None, :, None] > 8)] = 30.0  # a body of soft tissue only
    write_volume(d / "abdomen.nrrd", hu.astype(np.int16), SP)
    return {"inputs": d / "abdomen.nrrd"}, r"abdomen\.nrrd: no lungs found"


def image_2d(d):
    write_volume(d / "slice.nii", np.zeros((64, 64), np.int16), SP[1:])
    return {"inputs": d / "slice.nii"}, r"slice\.nii: is a 2D image"


def single_slice(d):
    write_volume(d / "one.nrrd", np.zeros((1, 64, 64), np.int16), SP)
    return {"inputs": d / "one.nrrd"}, r"one\.nrrd: has size \(64, 64, 1\).*single slice"


def empty_folder(d):
    (d / "empty").mkdir()
    return {"inputs": d / "empty"}, r"empty: no CT found here"


def unknown_class_in_map(d):
    img, lab = _toy(d)
    (d / "map.yml").write_text("name: x\nlabels:\n  1: tumour\n")
    return {"inputs": img, "labels": lab, "classes": d / "map.yml"}, r"map\.yml: unknown project class in 1: 'tumour'"


def malformed_yaml(d):
    img, lab = _toy(d)
    (d / "map.yml").write_text("labels:\n  1: nodule\n 2: [ggo\n")
    return {"inputs": img, "labels": lab, "classes": d / "map.yml"}, r"map\.yml: malformed YAML at line"


def classmap_missing(d):
    img, lab = _toy(d)
    return {"inputs": img, "labels": lab, "classes": d / "nomap.yml"}, r"nomap\.yml: class map not found"


def unsupported_extension(d):
    (d / "scan.png").write_bytes(b"\x89PNG")
    return {"inputs": d / "scan.png"}, r"scan\.png: unsupported file type \.png"


def label_missing_in_case_folder(d):
    write_toy_case(d / "cases", "a")
    hu, _, _ = toy_chest()
    write_volume(d / "cases" / "b_image.nrrd", hu.astype(np.int16), SP)
    return {"inputs": d / "cases"}, r"b_image\.nrrd: no label file for this image"


def label_without_image(d):
    write_toy_case(d / "cases", "a")
    write_volume(d / "cases" / "z_label.nrrd", np.zeros((12, 64, 64), np.uint8), SP)
    return {"inputs": d / "cases"}, r"z_label\.nrrd: label file without an image"


def duplicate_patient(d):
    hu, _, _ = toy_chest()
    (d / "cases").mkdir()
    write_volume(d / "cases" / "x.nrrd", hu.astype(np.int16), SP)
    write_volume(d / "cases" / "x.mha", hu.astype(np.int16), SP)
    return {"inputs": d / "cases"}, r"x\.nrrd: patient id 'x' is used twice"


def _lung_mask(d, shape=None, spacing=SP, direction=None):
    img, _ = _toy(d)
    _, truth, _ = toy_chest()
    mask = (truth == 2).astype(np.uint8)
    if shape is not None:
        mask = mask[: shape[0]]
    write_volume(d / "lungs.nii.gz", mask, spacing, direction=direction)
    return {"inputs": img, "lung_mask": d / "lungs.nii.gz"}


def lung_mask_shape_mismatch(d):
    return _lung_mask(d, shape=(10,)), r"lungs\.nii\.gz: label shape \(10, 64, 64\) \(z, y, x\) does not match image"


def lung_mask_spacing_mismatch(d):
    return _lung_mask(d, spacing=(5.0, 2.5, 2.5)), r"lungs\.nii\.gz: label spacing .* does not match image"


def lung_mask_direction_mismatch(d):  # x flipped: after reorienting, it lies on the other side of the image
    return (_lung_mask(d, direction=(-1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0)),
            r"lungs\.nii\.gz: label origin .* voxels away from image .* not aligned")


def lung_mask_missing(d):
    img, _ = _toy(d)
    return {"inputs": img, "lung_mask": d / "none.nii.gz"}, r"none\.nii\.gz: lung mask file not found"


def lung_mask_without_lung(d):
    kw = _lung_mask(d)
    write_volume(kw["lung_mask"], np.zeros((12, 64, 64), np.uint8), SP)
    return kw, r"lungs\.nii\.gz: no lung voxels"


def lung_mask_map_with_a_lesion_class(d):
    (d / "m.yml").write_text("name: x\nlabels:\n  1: nodule\n")
    return {**_lung_mask(d), "lung_classes": d / "m.yml"}, \
        r"m\.yml: a lung-mask map takes lung_right, lung_left, lung, airway or ignore only; it maps to \['nodule'\]"


def lung_mask_for_several_cases(d):
    kw = _lung_mask(d)
    _toy(d / "more", "q")
    return {**kw, "inputs": [kw["inputs"], d / "more"]}, r"lungs\.nii\.gz applies to a single input volume; got 2"


CASES = [missing_file, corrupt_nifti, truncated_nifti, truncated_nifti_gz, gzip_of_garbage, two_dicom_series,
         dicom_missing_slice, shape_mismatch, spacing_mismatch, origin_mismatch, values_not_in_classmap,
         labels_without_classmap, non_integer_labels, nan_voxels, all_air, no_lungs, image_2d, single_slice,
         empty_folder, unknown_class_in_map, malformed_yaml, classmap_missing, unsupported_extension,
         label_missing_in_case_folder, label_without_image, duplicate_patient, lung_mask_shape_mismatch,
         lung_mask_spacing_mismatch, lung_mask_direction_mismatch, lung_mask_missing, lung_mask_without_lung,
         lung_mask_map_with_a_lesion_class, lung_mask_for_several_cases]


def _nothing_written(out: Path):
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]  # no temp folder left


@pytest.mark.parametrize("build", CASES, ids=[c.__name__ for c in CASES])
def test_refused_by_library(tmp_path, build):
    kwargs, pattern = build(tmp_path)
    out = tmp_path / "outputs" / "ds"
    out.parent.mkdir()
    with pytest.raises(DatasetError, match=pattern) as exc:
        prepare(out_dir=out, size=32, **kwargs)
    assert "\n" not in str(exc.value)  # one line
    _nothing_written(out)


@pytest.mark.parametrize("build", [truncated_nifti, values_not_in_classmap, lung_mask_map_with_a_lesion_class],
                         ids=["truncated", "classmap", "lung-mask-map"])
def test_refused_by_cli(tmp_path, build):
    kwargs, pattern = build(tmp_path)
    out = tmp_path / "outputs" / "ds"
    out.parent.mkdir()
    cmd = [sys.executable, "-m", "difflung", "prepare", str(kwargs["inputs"]), "--out", str(out), "--size", "32"]
    flags = {"labels": "--labels", "classes": "--classes", "lung_mask": "--lung-mask",
             "lung_classes": "--lung-mask-classes"}
    cmd += [a for k, flag in flags.items() if k in kwargs for a in (flag, str(kwargs[k]))]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 1 and r.stdout == ""
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error: ")]
    assert len(err) == 1 and re.search(pattern, err[0]), r.stderr
    _nothing_written(out)


def test_fetch_refuses_archive_with_wrong_hash(tmp_path):
    fake = tmp_path / realdata.SDIST
    fake.write_bytes(b"not the pyradiomics archive")
    with pytest.raises(realdata.RealDataError, match=r"pyradiomics-3\.0\.1\.tar\.gz: sha256 [0-9a-f]{64} differs"):
        realdata.fetch_pyradiomics(tmp_path / "cache", archive=fake, log=lambda s: None)
    assert not any((tmp_path / "cache").glob("*.nrrd"))
