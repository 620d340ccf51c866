"""Readers: round trips through every format, written by the tests themselves."""
import numpy as np
import pytest

from difflung.data import ctio
from _ct_fixtures import write_dicom_series


def _ramp(shape=(5, 6, 7)):
    # distinct value per voxel so any flip or transpose is caught
    return (np.arange(np.prod(shape), dtype=np.float32).reshape(shape) - 1000.0)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz", ".nrrd", ".mha", ".mhd"])
def test_round_trip_sitk_formats(tmp_path, suffix):
    a = _ramp()
    path = ctio.write_volume(tmp_path / f"case7{suffix}", a.astype(np.int16), (2.5, 0.7, 0.6))
    vol = ctio.read_volume(path)
    np.testing.assert_array_equal(vol.hu, a)
    assert vol.hu.dtype == np.float32
    np.testing.assert_allclose(vol.spacing, (2.5, 0.7, 0.6), rtol=1e-6)
    assert vol.patient == "case7"
    assert vol.direction == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, -1))


def test_lps_volume_is_flipped_to_apex_first(tmp_path):
    import SimpleITK as sitk

    a = _ramp()
    img = sitk.GetImageFromArray(a)  # identity direction: z index increases towards superior
    img.SetSpacing((0.6, 0.7, 2.5))
    sitk.WriteImage(img, str(tmp_path / "lps.nrrd"))
    vol = ctio.read_volume(tmp_path / "lps.nrrd")
    np.testing.assert_array_equal(vol.hu, a[::-1])


def test_nibabel_ras_nifti_is_reoriented(tmp_path):
    import nibabel as nib

    a = _ramp()  # (z, y, x) as we want it back
    data = a.transpose(2, 1, 0)[::-1, ::-1, ::-1]  # nibabel (i, j, k) with i->R, j->A, k->S (RAS+ identity)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(data), np.diag([0.6, 0.7, 2.5, 1.0])), tmp_path / "ras.nii.gz")
    vol = ctio.read_volume(tmp_path / "ras.nii.gz")
    np.testing.assert_array_equal(vol.hu, a)
    np.testing.assert_allclose(vol.spacing, (2.5, 0.7, 0.6), rtol=1e-6)


@pytest.mark.parametrize("z_up", [True, False])
def test_dicom_series_sorted_and_rescaled(tmp_path, z_up):
    hu = np.stack([np.full((8, 9), v, np.float32) for v in (-1000, -800, -600, -400, 0, 200)])
    hu[:, 0, 0] = 500.0  # marks the (anterior, patient-right) corner
    slopes = [1.0, 2.0, 1.0, 0.5, 1.0, 2.0]  # per-slice slope, applied per file
    write_dicom_series(tmp_path / "s", hu, spacing=(2.5, 0.8, 0.7), slopes=slopes, patient_id="PAT-9",
                       shuffle_rng=np.random.default_rng(3), z_up=z_up)
    vol = ctio.read_volume(tmp_path / "s")
    np.testing.assert_allclose(vol.hu, hu if z_up else hu[::-1], atol=1.0)
    np.testing.assert_allclose(vol.spacing, (2.5, 0.8, 0.7), rtol=1e-6)
    assert vol.patient == "PAT-9" and vol.meta["n_files"] == 6


def test_read_label_checks_alignment(tmp_path):
    a = _ramp()
    img = ctio.write_volume(tmp_path / "im.nii.gz", a, (2.5, 0.7, 0.6))
    lab = np.zeros(a.shape, np.uint8)
    lab[2, 3, 4] = 3
    ctio.write_volume(tmp_path / "ok.nii.gz", lab, (2.5, 0.7, 0.6))
    ctio.write_volume(tmp_path / "sp.nii.gz", lab, (3.0, 0.7, 0.6))
    ctio.write_volume(tmp_path / "sh.nii.gz", lab[:, :, :-1], (2.5, 0.7, 0.6))
    vol = ctio.read_volume(img)
    got = ctio.read_label(tmp_path / "ok.nii.gz", vol)
    assert got.dtype == np.uint8 and got[2, 3, 4] == 3 and got.sum() == 3
    with pytest.raises(ctio.CTReadError, match=r"sp\.nii\.gz: label spacing"):
        ctio.read_label(tmp_path / "sp.nii.gz", vol)
    with pytest.raises(ctio.CTReadError, match=r"sh\.nii\.gz: label shape"):
        ctio.read_label(tmp_path / "sh.nii.gz", vol)
