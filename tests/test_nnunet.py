"""nnU-Net v2 raw layout export, checked against the documented format (nnunetv2 itself is not installed).

Format facts (MIC-DKFZ/nnUNet documentation/dataset_format.md): `Dataset{ID:03d}_{name}/` holds imagesTr,
labelsTr and dataset.json; images are `{case}_{XXXX}{file_ending}` with XXXX the channel; labels are
`{case}{file_ending}`; dataset.json needs channel_names, labels (name -> int, background 0, consecutive),
numTraining and file_ending. SimpleITKIO reads a 3D file as (1, z, y, x)."""
import json
import re

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from difflung import cli
from difflung.data import nnunet
from difflung import labels as L
from difflung.data.dataset import Slices, unwindow, write_dataset


def _slices(n=6, s=16, seed=0, classes=(0, 1, 2, 4, 6)):
    rng = np.random.default_rng(seed)
    labels = rng.choice(np.array(classes, np.uint8), size=(n, s, s))
    labels[:, :2] = 0
    images = rng.uniform(-1, 1, (n, s, s)).astype(np.float32)
    return images, labels


def _check_layout(folder, n_expected):
    meta = json.loads((folder / "dataset.json").read_text())
    for key in ("channel_names", "labels", "numTraining", "file_ending"):
        assert key in meta
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["file_ending"] == ".nii.gz"
    values = sorted(meta["labels"].values())
    assert meta["labels"]["background"] == 0 and values == list(range(len(values)))  # consecutive from 0
    images = sorted(p.name for p in (folder / "imagesTr").iterdir())
    labels = sorted(p.name for p in (folder / "labelsTr").iterdir())
    assert len(images) == len(labels) == meta["numTraining"] == n_expected
    assert all(re.fullmatch(r".+_0000\.nii\.gz", f) for f in images)
    assert [f.replace("_0000.nii.gz", ".nii.gz") for f in images] == labels
    found = set()
    for f in labels:
        found |= set(np.unique(np.asarray(nib.load(folder / "labelsTr" / f).dataobj)).tolist())
    assert found <= set(values)
    return meta


def test_export_layout_and_round_trip(tmp_path):
    real = _slices(5, seed=1)
    syn = _slices(3, seed=2, classes=(0, 2, 6))
    classes = [0, 1, 2, 4, 6]
    folder = nnunet.export_nnunet(tmp_path, 7, "Lung", real, syn, classes, spacing=(0.7, 0.8))
    assert folder.name == "Dataset007_Lung"
    meta = _check_layout(folder, 8)
    assert meta["labels"] == {"background": 0, "body": 1, "lung": 2, "emphysema": 3, "fibrosis": 4}
    assert meta["difflung"]["project_ids"]["fibrosis"] == L.FIBROSIS
    assert meta["difflung"]["synthetic_cases"] == ["syn_00000", "syn_00001", "syn_00002"]
    assert meta["difflung"]["n_real"] == 5 and meta["difflung"]["n_synthetic"] == 3
    # nnU-Net's default reader (SimpleITKIO) sees one slice: array (1, y, x) in HU, spacing reversed to (z, y, x)
    img = sitk.ReadImage(str(folder / "imagesTr" / "real_00002_0000.nii.gz"))
    arr = sitk.GetArrayFromImage(img)
    assert arr.shape == (1, 16, 16)
    np.testing.assert_allclose(arr[0], unwindow(real[0][2]), atol=1e-3)
    assert arr.min() >= -1000.01 and arr.max() <= 400.01
    np.testing.assert_allclose(img.GetSpacing(), (0.8, 0.7, 999 * 0.8))
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "labelsTr" / "syn_00001.nii.gz")))[0]
    back = np.asarray(classes)[lab]  # contiguous -> project ids
    np.testing.assert_array_equal(back, syn[1][1])
    # NibabelIO transposes (x, y, z) -> (z, y, x): the same array
    nib_arr = np.asarray(nib.load(folder / "imagesTr" / "real_00002_0000.nii.gz").dataobj).transpose(2, 1, 0)
    np.testing.assert_array_equal(nib_arr, arr)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary leftovers


def test_export_refuses_bad_input(tmp_path):
    real = _slices(2)
    with pytest.raises(nnunet.ExportError, match="1..999"):
        nnunet.export_nnunet(tmp_path, 0, "x", real, None, [0, 1, 2, 4, 6])
    with pytest.raises(nnunet.ExportError, match="letters"):
        nnunet.export_nnunet(tmp_path, 5, "bad name", real, None, [0, 1, 2, 4, 6])
    with pytest.raises(nnunet.ExportError, match=r"label values \[6\] not in classes"):
        nnunet.export_nnunet(tmp_path, 5, "x", real, None, [0, 1, 2, 4])
    with pytest.raises(nnunet.ExportError, match="background"):
        nnunet.export_nnunet(tmp_path, 5, "x", real, None, [1, 2, 4, 6])
    with pytest.raises(nnunet.ExportError, match=r"\[-1, 1\]"):
        nnunet.export_nnunet(tmp_path, 5, "x", (real[0] * 500, real[1]), None, [0, 1, 2, 4, 6])
    assert not any(tmp_path.iterdir())
    nnunet.export_nnunet(tmp_path, 5, "x", real, None)
    with pytest.raises(nnunet.ExportError, match="exists"):
        nnunet.export_nnunet(tmp_path, 5, "x", real, None)
    with pytest.raises(nnunet.ExportError, match="already used"):
        nnunet.export_nnunet(tmp_path, 5, "y", real, None)
    nnunet.export_nnunet(tmp_path, 5, "x", _slices(3), None, overwrite=True)
    _check_layout(tmp_path / "Dataset005_x", 3)


def test_export_is_atomic(tmp_path, monkeypatch):
    calls = {"n": 0}
    real_write = nnunet.write_slice_nifti

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real_write(*a, **k)

    monkeypatch.setattr(nnunet, "write_slice_nifti", failing)
    with pytest.raises(OSError, match="disk full"):
        nnunet.export_nnunet(tmp_path, 9, "x", _slices(3), None)
    assert list(tmp_path.iterdir()) == []


def test_cli_exports_dataset_and_synthetic(tmp_path, capsys):
    images, labels = _slices(9, seed=3)
    patient = np.array([f"p{i % 3}" for i in range(9)])
    ds = write_dataset(tmp_path / "ds", Slices(images, labels, patient, np.zeros(9, np.float32)),
                       source="test", params={}, seed=0)
    n_train = len(ds.split("train"))
    syn = _slices(2, seed=4, classes=(0, 2, 4))
    np.savez(tmp_path / "syn.npz", images=syn[0], labels=syn[1])
    rc = cli.main(["export-nnunet", "--dataset", str(tmp_path / "ds"), "--synthetic", str(tmp_path / "syn.npz"),
                   "--out", str(tmp_path / "raw"), "--id", "501", "--name", "DiffLung"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["numTraining"] == n_train + 2 and out["n_synthetic"] == 2
    meta = _check_layout(tmp_path / "raw" / "Dataset501_DiffLung", n_train + 2)
    assert {c["patient"] for c in meta["difflung"]["cases"].values() if c["source"] == "real"} \
        == set(ds.manifest["splits"]["train"]["patients"])
    # a synthetic file without labels: a clear error naming the file, nothing written
    np.savez(tmp_path / "bad.npz", images=syn[0])
    rc = cli.main(["export-nnunet", "--dataset", str(tmp_path / "ds"), "--synthetic", str(tmp_path / "bad.npz"),
                   "--out", str(tmp_path / "raw2"), "--id", "502", "--name", "x"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "bad.npz" in err and "labels" in err
    assert not (tmp_path / "raw2").exists() or not any((tmp_path / "raw2").iterdir())
