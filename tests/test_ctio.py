"""Readers: round trips through every format, written by the tests themselves."""
import numpy as np
import pytest
from scipy import ndimage as ndi

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


# ---------------------------------------------------------------------------------------------------------------
# written back in the input's own voxel order (issue 26, point 6): arrays compared directly, never resampled

# ITK row-major direction matrices: identity (z towards superior), z flipped (LPI), x and y flipped, and an axis
# permutation (a coronal stack: array axes (y, z, x) in patient terms)
DIRECTIONS = {
    "identity": (1, 0, 0, 0, 1, 0, 0, 0, 1),
    "z_flipped": (1, 0, 0, 0, 1, 0, 0, 0, -1),
    "xy_flipped": (-1, 0, 0, 0, -1, 0, 0, 0, 1),
    "coronal": (1, 0, 0, 0, 0, 1, 0, -1, 0),
    # tilted 0.3 rad about y and permuted: reoriented by permutation and flips only, never resampled
    "oblique": tuple((np.array([[np.cos(0.3), 0, np.sin(0.3)], [0, 1, 0], [-np.sin(0.3), 0, np.cos(0.3)]])
                      @ np.array([[0, 0, 1], [1, 0, 0], [0, -1, 0]])).ravel()),
}


def _edit(vol):
    """vol.hu with one voxel changed (LPI index (1, 2, 3)); returns (array, the changed LPI index)."""
    out = vol.hu.copy()
    out[1, 2, 3] = 3000.0
    return out, (1, 2, 3)


def _stored_index(path_or_img, lpi_index):
    """Where LPI voxel `lpi_index` lies in the stored array: the point it maps to, back to the stored index."""
    import SimpleITK as sitk

    img = path_or_img if isinstance(path_or_img, sitk.Image) else sitk.ReadImage(str(path_or_img))
    lpi = sitk.DICOMOrient(img, "LPI")
    pt = lpi.TransformIndexToPhysicalPoint(tuple(int(i) for i in lpi_index[::-1]))
    return img.TransformPhysicalPointToIndex(pt)[::-1]


def _assert_same_but_edit(a, b, where):
    """Stored arrays of input a and output b (SimpleITK images) equal except the one voxel `where` (z, y, x)."""
    import SimpleITK as sitk

    x, y = sitk.GetArrayFromImage(a).astype(np.float32), sitk.GetArrayFromImage(b).astype(np.float32)
    assert x.shape == y.shape
    diff = np.argwhere(x != y)
    assert [tuple(d) for d in diff] == [tuple(where)]
    assert y[tuple(where)] == 3000.0
    # NIfTI keeps spacing and origin as float32: equal to within that rounding
    assert b.GetSpacing() == pytest.approx(a.GetSpacing(), rel=1e-6)
    assert b.GetOrigin() == pytest.approx(a.GetOrigin(), abs=1e-4)
    assert b.GetDirection() == pytest.approx(a.GetDirection(), abs=1e-6)


@pytest.mark.parametrize("direction", sorted(DIRECTIONS))
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_written_volume_keeps_the_input_voxel_order(tmp_path, suffix, direction):
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(_ramp((5, 6, 7)).astype(np.int16))
    img.SetSpacing((0.6, 0.7, 2.5))
    img.SetOrigin((-120.5, 33.25, -401.0))
    img.SetDirection(DIRECTIONS[direction])
    sitk.WriteImage(img, str(tmp_path / f"in{suffix}"))
    a = sitk.ReadImage(str(tmp_path / f"in{suffix}"))  # as the file stores it (NIfTI rounds through float32)
    vol = ctio.read_volume(tmp_path / f"in{suffix}")
    edited, lpi_at = _edit(vol)
    out = ctio.write_volume(tmp_path / f"out{suffix}", edited.astype(np.int16), like=vol)
    b = sitk.ReadImage(str(out))
    _assert_same_but_edit(a, b, _stored_index(a, lpi_at))
    if direction != "z_flipped":  # the LPI array really is another voxel order than the stored one
        assert not np.array_equal(sitk.GetArrayFromImage(a), vol.hu.astype(np.int16))
    # and LPI as before when read back through ctio
    np.testing.assert_array_equal(ctio.read_volume(out).hu, edited)


def _dicom(folder, flip_rows: bool, z_up: bool):
    """A 6-slice series; with flip_rows the rows run towards the patient's right (IOP -1,0,0, 0,1,0)."""
    import pydicom

    hu = _ramp((6, 8, 9)) * 0.25 - 600.0
    hu = np.round(hu)
    write_dicom_series(folder, hu, spacing=(2.5, 0.8, 0.7), origin=(-60.0, -40.0, 30.0), z_up=z_up)
    if flip_rows:
        for f in sorted(folder.iterdir()):
            ds = pydicom.dcmread(f)
            ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
            ds.save_as(f)
    return hu


def _series_image(folder):
    """The series as SimpleITK's own DICOM reader (GDCM) stores it in memory."""
    import SimpleITK as sitk

    r = sitk.ImageSeriesReader()
    r.SetFileNames(r.GetGDCMSeriesFileNames(str(folder)))
    return r.Execute()


@pytest.mark.parametrize("flip_rows", [False, True])
@pytest.mark.parametrize("z_up", [True, False])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd", ".mha"])
def test_dicom_series_written_in_its_own_voxel_order(tmp_path, suffix, z_up, flip_rows):
    import SimpleITK as sitk

    _dicom(tmp_path / "s", flip_rows, z_up)
    a = _series_image(tmp_path / "s")
    want = (-1, 0, 0, 0, 1, 0, 0, 0, -1) if flip_rows else (1, 0, 0, 0, 1, 0, 0, 0, 1)
    assert a.GetDirection() == pytest.approx(want)  # the series' own axes (rows, columns, slice normal)
    vol = ctio.read_volume(tmp_path / "s")
    assert vol.native.direction == pytest.approx(a.GetDirection())
    edited, lpi_at = _edit(vol)
    b = sitk.ReadImage(str(ctio.write_volume(tmp_path / f"out{suffix}", edited, like=vol)))
    _assert_same_but_edit(a, b, _stored_index(a, lpi_at))


def test_in_memory_volume_is_written_lpi_and_like_excludes_geometry(tmp_path):
    import SimpleITK as sitk

    vol = ctio.CTVolume(hu=_ramp(), spacing=(2.5, 0.7, 0.6), patient="p", source="mem")
    b = sitk.ReadImage(str(ctio.write_volume(tmp_path / "m.nrrd", vol.hu, like=vol)))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(b), vol.hu)
    assert b.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, -1))
    with pytest.raises(ValueError, match="either like= or spacing"):
        ctio.write_volume(tmp_path / "x.nrrd", vol.hu, vol.spacing, like=vol)
    with pytest.raises(ValueError, match=r"array shape \(5, 6, 6\) differs"):
        ctio.write_volume(tmp_path / "x.nrrd", vol.hu[:, :, :-1], like=vol)
    assert not (tmp_path / "x.nrrd").exists()


def test_insert_on_a_dicom_series_keeps_its_voxel_order(tmp_path):
    """`insert` on an identity-direction series (as TCIA's): OUT's stored array is the series' array outside the
    edit region, with the series' direction and origin (it was written z-flipped with a moved origin)."""
    import SimpleITK as sitk

    from _ct_fixtures import toy_chest
    from difflung import labels as L
    from difflung.insertion.insert import InsertConfig, insert_lesions
    from difflung.diffusion.patch_model import save_untrained_model

    sp = (5.0, 4.0, 4.0)
    hu, _, _ = toy_chest(shape=(8, 80, 80), spacing=sp, lesion=False)
    hu = np.round(hu + np.random.default_rng(0).normal(0, 25, hu.shape))
    write_dicom_series(tmp_path / "dcm", hu, spacing=sp, origin=(-160.0, -150.0, 30.0))
    vol = ctio.read_volume(tmp_path / "dcm")
    les = np.zeros(hu.shape, np.uint8)
    yy, xx = np.mgrid[:80, :80]
    les[3:6] = ((yy - 40) ** 2 + (xx - 22) ** 2 <= 16) * L.GGO
    mask = ctio.write_volume(tmp_path / "mask.nii.gz", les, vol.spacing, origin=vol.origin, direction=vol.direction)
    model = save_untrained_model(tmp_path / "model", [L.BACKGROUND, L.BODY, L.LUNG, L.AIRWAY, L.EMPHYSEMA, L.GGO,
                                                      L.FIBROSIS], 16, spacing_mm=3.0)
    cfg = InsertConfig(steps=2, jump_length=1, jump_n_sample=1, batch_size=8, spacing_mm=3.0)
    out = tmp_path / "out.nii.gz"
    insert_lesions(tmp_path / "dcm", out, model, lesion_mask=mask, config=cfg, device="cpu")
    a, b = _series_image(tmp_path / "dcm"), sitk.ReadImage(str(out))
    assert a.GetDirection() == pytest.approx((1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert b.GetDirection() == pytest.approx(a.GetDirection()) and b.GetOrigin() == pytest.approx(a.GetOrigin())
    x, y = sitk.GetArrayFromImage(a).astype(np.float32), sitk.GetArrayFromImage(b).astype(np.float32)
    near = ndi.binary_dilation(les[::-1] > 0, iterations=2)  # the series stores z towards superior: LPI flipped
    changed = x != y
    assert changed.any() and not (changed & ~near).any()
    lab = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out_lesions.nii.gz")))
    np.testing.assert_array_equal(lab, les[::-1])
