"""Issue 26 (1-3): 3D lesions for `--synthesize`, painting continuous in z, and ground truth from the phantom.
Tiny untrained patch models and toy volumes: what is tested does not depend on the weights."""
import numpy as np
import pytest
import torch
from scipy import ndimage as ndi

from _ct_fixtures import toy_chest
from difflung import labels as L
from difflung.diffusion.patch_model import save_untrained_model
from difflung.diffusion.train import load_model
from difflung.insertion import checks as C
from difflung.insertion import InsertConfig, ShapeLimits, lesion_mask_3d, paint, phantom_lesion_extents
from difflung.insertion import synthesize_lesions, edit_region
from difflung.insertion.truth import crop_z, densest_slab, insert_into_case, phantom_truth_case, truth_table
from difflung.insertion.zpaint import window_noise, z_noise
from difflung.phantom import PhantomConfig, phantom_patient

CLASSES = [L.BACKGROUND, L.BODY, L.LUNG, L.AIRWAY, L.EMPHYSEMA, L.GGO, L.FIBROSIS]
SPACING = (2.5, 4.0, 4.0)


def _chest():
    _, truth, _ = toy_chest(shape=(20, 80, 80), spacing=SPACING, lesion=False)
    return truth  # lung on slices 2-19 (45 mm), as `ct_anatomy` labels it


def _spans(lesions):
    comp, n = ndi.label(lesions > 0, structure=np.ones((3, 3, 3), bool))
    return [len(np.unique(np.nonzero(comp == i)[0])) for i in range(1, n + 1)]


def test_a_lesion_spans_the_slices_its_size_implies_at_any_spacing_and_rotation():
    ext = {"kind": "ggo", "R": 20.0, "Rz": 15.0}
    flat = ShapeLimits(border_noise=0.0)  # the bare ellipsoid: f >= 0.1, (dz / Rz)^2 <= 0.9 on the axis
    rng = np.random.default_rng(0)
    for dz, n_slices in ((2.5, 11), (5.0, 5)):  # |k dz| <= 15 sqrt(0.9) = 14.2 mm
        m = lesion_mask_3d(ext, (dz, 1.0, 1.0), rng, limits=flat)
        assert m.any(axis=(1, 2)).sum() == n_slices
        mid = m[len(m) // 2]
        assert mid[mid.shape[0] // 2].sum() == 2 * 18 + 1  # in-plane radius 20 sqrt(0.9) = 18.97 mm
    tilted = lesion_mask_3d(ext, (2.5, 1.0, 1.0), rng, tilt_deg=90.0, limits=flat)
    assert tilted.any(axis=(1, 2)).sum() == 15  # on its side: z extent from R, |2.5 k| <= 18.97
    half = lesion_mask_3d(ext, (2.5, 1.0, 1.0), rng, scale=0.5, limits=flat)
    assert half.any(axis=(1, 2)).sum() == 5  # |2.5 k| <= 7.1


@pytest.mark.parametrize("cls,target", [(L.GGO, 20.0), (L.FIBROSIS, 8.0), (L.EMPHYSEMA, 8.0)])
def test_synthesized_lesions_are_3d_on_healthy_lung_within_target_and_seeded(cls, target):
    labels = _chest()
    voxel_ml = np.prod(SPACING) / 1000

    def place(seed):
        a, b = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
        return synthesize_lesions(labels, cls, target, SPACING, phantom_lesion_extents(cls, a), b)

    les = place(0)
    assert set(np.unique(les)) == {0, cls}
    y = C.coronal_row(les, cls)
    assert (les[:, y, :] == cls).sum() == (les == cls).sum(axis=(0, 2)).max()
    assert (labels[les > 0] == L.LUNG).all()  # every lesion voxel on healthy lung
    assert 0.9 * target <= (les > 0).sum() * voxel_ml <= target
    assert max(_spans(les)) >= 3  # 3D: lesions cross slices (2.5 mm apart)
    assert np.array_equal(place(0), les) and not np.array_equal(place(1), les)
    if cls == L.FIBROSIS:  # subpleural: within its depth (at most 16 mm x 1.3, x 1.3 scale) of the pleura
        field = np.isin(labels, L.LUNG_IDS)
        depth = np.stack([ndi.distance_transform_edt(np.pad(f, 1), sampling=SPACING[1:])[1:-1, 1:-1]
                          for f in field])
        assert depth[les > 0].max() <= 16.0 * 1.3 * 1.3 + 4.0


def test_z_continuity_reads_the_correlation_of_adjacent_slices():
    rng = np.random.default_rng(0)
    shape, sp = (24, 64, 64), (1.0, 1.0, 1.0)
    white = rng.standard_normal(shape)
    ar = white.copy()
    for k in range(1, shape[0]):
        ar[k] = 0.8 * ar[k - 1] + 0.6 * white[k]  # AR(1) in z, rho 0.8
    mask = np.ones(shape, bool)
    assert C.z_continuity(100 * ar - 800, mask, sp) == pytest.approx(0.8, abs=0.03)
    assert C.z_continuity(100 * white - 800, mask, sp) == pytest.approx(0.0, abs=0.03)
    same = np.repeat(white[:1], shape[0], axis=0)
    assert C.z_continuity(same, mask, sp) == pytest.approx(1.0)
    ramp = white + np.arange(shape[0])[:, None, None] * 50.0  # a shift per slice is not texture
    assert C.z_continuity(ramp, mask, sp) == pytest.approx(0.0, abs=0.03)
    from difflung.data.dataset import Volume

    lab = np.full(shape, L.GGO, np.uint8)
    vols = [Volume("a", 100 * ar - 800, lab, sp), Volume("b", 100 * white - 800, lab, sp)]
    pooled = C.z_continuity_of(vols, L.GGO)  # the pairs of both volumes in one correlation
    assert pooled == pytest.approx(0.4, abs=0.05) and np.isnan(C.z_continuity_of(vols, L.FIBROSIS))
    one = np.zeros(shape, bool)
    one[5] = True
    assert np.isnan(C.z_continuity(ar, one, sp))  # no pair of adjacent slices in the mask
    assert C.texture_spread(100 * white, mask, sp) == pytest.approx(100 * white.std(), rel=0.25)


def test_initial_noise_is_one_field_per_slice_correlated_in_z():
    plans = {k: [((40.0, 40.0), None, None), ((44.0, 52.0), None, None)] for k in (3, 4, 5, 9)}
    fields, origin = z_noise(plans, (1.0, 1.0), 16, 1.0, 0.6, torch.Generator().manual_seed(0))
    assert list(fields) == [3, 4, 5, 9]
    r = np.corrcoef(fields[3].ravel(), fields[4].ravel())[0, 1]
    far = np.corrcoef(fields[5].ravel(), fields[9].ravel())[0, 1]  # 4 slices apart: 0.6^4
    assert r == pytest.approx(0.6, abs=0.15) and abs(far) < 0.3
    a = window_noise(fields, origin, 4, (40.0, 40.0), (1.0, 1.0), 16, 1.0)[0]
    b = window_noise(fields, origin, 4, (44.0, 52.0), (1.0, 1.0), 16, 1.0)[0]
    assert torch.equal(a[4:, 12:], b[:12, :4])  # overlapping windows read the same scan-frame noise


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    unet, meta = load_model(save_untrained_model(tmp_path_factory.mktemp("m") / "m", CLASSES, 16, spacing_mm=3.0),
                            device="cpu")
    return unet, meta


def _scan():
    rng = np.random.default_rng(0)
    shape, sp = (6, 48, 48), (3.0, 3.0, 3.0)
    hu = (-850 + 30 * rng.standard_normal(shape)).astype(np.float32)
    labels = np.full(shape, L.LUNG, np.uint8)
    yy, xx = np.mgrid[:48, :48]
    lesions = np.zeros(shape, np.uint8)
    lesions[1:5, (yy - 24) ** 2 + (xx - 24) ** 2 <= 16] = L.GGO
    return hu, labels, lesions, sp


def test_painting_guided_by_the_slice_below_continues_in_z_and_keeps_the_rest(model):
    unet, meta = model
    hu, labels, lesions, sp = _scan()
    region = edit_region(lesions, labels == L.LUNG, sp, 3.0)
    lab = np.where(lesions > 0, lesions, labels)
    out = {}
    d = InsertConfig()
    for name, zg, zr in (("independent", 0.0, 0.0), ("guided", 1.0, 0.0), ("default", d.z_guide, d.z_rho)):
        cfg = InsertConfig(steps=4, jump_length=2, jump_n_sample=1, spacing_mm=3.0, z_guide=zg, z_rho=zr)
        work, info = paint(hu, lab, region, sp, unet, meta, cfg, torch.Generator().manual_seed(0))
        assert np.array_equal(work[~region], hu[~region]) and info["slices_edited"] == 4
        out[name] = work
    inner = ndi.binary_erosion(lesions > 0, structure=np.ones((1, 3, 3), bool))
    zc = {k: C.z_continuity(v, inner, sp, min_pairs=5) for k, v in out.items()}
    assert zc["guided"] > 0.9 > zc["independent"] + 0.3  # guided all the way: slice k repeats slice k - 1
    assert zc["default"] > zc["independent"] + 0.3  # the default paints continuously in z
    again, _ = paint(hu, lab, region, sp, unet, meta, InsertConfig(steps=4, jump_length=2, jump_n_sample=1,
                                                                   spacing_mm=3.0), torch.Generator().manual_seed(0))
    assert np.array_equal(again, out["default"])  # seeded
    with pytest.raises(ValueError, match="z_rho"):
        InsertConfig(z_rho=1.0)


def test_phantom_truth_renders_the_same_patient_without_lesions_and_compares(model):
    cfg = PhantomConfig(size=48, slices_per_patient=50, slice_thickness_mm=5.0, emphysema=0.1, ggo=0.1, fibrosis=0.1)
    case = phantom_truth_case("T0", np.random.default_rng(0), cfg)
    ref = phantom_patient("T0", np.random.default_rng(0), cfg)
    assert np.array_equal(case.truth.hu, ref.hu) and np.array_equal(case.truth.labels, ref.labels)
    assert not np.isin(case.base.labels, L.PATHOLOGY_IDS).any() and case.lesions.any()
    off = case.lesions == 0
    assert np.array_equal(case.truth.labels[off], case.base.labels[off])  # the same anatomy
    body = ndi.binary_dilation(case.lung, structure=np.ones((1, 5, 5), bool))
    assert np.array_equal(case.truth.hu[~body], case.base.hu[~body])  # the same noise outside the lungs
    a, b = densest_slab(case.lesions > 0, 8)
    case = crop_z(case, a, b)
    assert len(case.truth.hu) == 8 and case.lesions.any()
    unet, meta = model
    ic = InsertConfig(steps=2, jump_length=1, jump_n_sample=1, spacing_mm=cfg.pixel_mm)
    meta = {**meta, "pixel_spacing_mm": cfg.pixel_mm}
    inserted, region = insert_into_case(case, unet, meta, ic, torch.Generator().manual_seed(0))
    null, _ = insert_into_case(case, unet, meta, ic, torch.Generator().manual_seed(0), null=True)
    assert np.array_equal(inserted[~region], case.base.hu[~region]) and not np.array_equal(inserted, null)
    t = truth_table(case, inserted, null, region, margin_mm=ic.margin_mm)
    names = [L.BY_ID[int(c)].name for c in np.unique(case.lesions) if c]
    assert list(t.index) == names
    cols = ["w1_to_truth", "mean_hu_inserted", "mean_hu_truth", "laa950_inserted", "laa950_truth",
            "spread_inserted", "spread_truth", "seam_inserted", "seam_null", "seam_truth"]
    assert np.isfinite(t[cols].to_numpy(float)).all()
    m = case.lesions == int(np.unique(case.lesions)[1])
    assert t.iloc[0]["mean_hu_truth"] == pytest.approx(float(case.truth.hu[m].mean()), rel=1e-6)
    same = truth_table(case, case.truth.hu, null, region, margin_mm=ic.margin_mm)  # truth against itself
    assert (same["w1_to_truth"] == 0).all() and (same["seam_inserted"] == same["seam_truth"]).all()
