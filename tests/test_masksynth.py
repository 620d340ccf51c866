"""Mask synthesis invariants: only healthy lung changes, anatomy untouched, deterministic, targets reached."""
import numpy as np
import pytest

from difflung import labels as L
from difflung.data.masksynth import lesion_bank, shares, synthesize_masks


def toy_masks(n=6, s=32, seed=0):
    """Body, two lungs, an airway, and a few emphysema / fibrosis blobs and one GGO patch."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:s, :s]
    out = np.zeros((n, s, s), np.uint8)
    for i in range(n):
        out[i][((yy - s / 2) / (0.45 * s)) ** 2 + ((xx - s / 2) / (0.47 * s)) ** 2 <= 1] = L.BODY
        for cx in (0.3 * s, 0.7 * s):
            out[i][((yy - s / 2) / (0.3 * s)) ** 2 + ((xx - cx) / (0.15 * s)) ** 2 <= 1] = L.LUNG
        out[i][(yy - 0.3 * s) ** 2 + (xx - s / 2) ** 2 <= 3] = L.AIRWAY
        if i % 2 == 0:  # emphysema blobs on every other slice
            y, x = rng.integers(12, 20), rng.choice([9, 22])
            out[i, y:y + 2, x:x + 3] = L.EMPHYSEMA
    out[1, 18:21, 8:11] = L.FIBROSIS
    out[3, 10:13, 20:24] = L.GGO
    return out


def test_only_healthy_lung_changes_and_anatomy_is_untouched():
    masks = toy_masks()
    syn = synthesize_masks(masks, {"emphysema": 0.08, "fibrosis": 0.05}, np.random.default_rng(1), n_masks=10)
    assert syn.labels.shape == (10, 32, 32) and syn.labels.dtype == np.uint8
    base = masks[syn.source_index]
    changed = syn.labels != base
    assert changed.any()
    assert (base[changed] == L.LUNG).all()  # rare pixels only where the target had healthy lung
    assert set(np.unique(syn.labels[changed])) <= {L.EMPHYSEMA, L.FIBROSIS}
    for c in (L.BACKGROUND, L.BODY, L.AIRWAY, L.GGO):  # every other label identical
        np.testing.assert_array_equal(syn.labels == c, base == c)
    # the lung field (all in-lung classes) is the same region: lesions replace lung, never extend it
    np.testing.assert_array_equal(np.isin(syn.labels, L.LUNG_IDS), np.isin(base, L.LUNG_IDS))


def test_deterministic_under_explicit_generator():
    masks = toy_masks()
    a = synthesize_masks(masks, {"emphysema": 0.1}, np.random.default_rng(7), n_masks=8)
    b = synthesize_masks(masks, {"emphysema": 0.1}, np.random.default_rng(7), n_masks=8)
    c = synthesize_masks(masks, {"emphysema": 0.1}, np.random.default_rng(8), n_masks=8)
    np.testing.assert_array_equal(a.labels, b.labels)
    np.testing.assert_array_equal(a.source_index, b.source_index)
    assert a.pastes == b.pastes
    assert not np.array_equal(a.labels, c.labels)


@pytest.mark.parametrize("target", [0.05, 0.15])
def test_target_balance_is_approximately_reached(target):
    masks = toy_masks()
    syn = synthesize_masks(masks, {"emphysema": target, L.FIBROSIS: target}, np.random.default_rng(3), n_masks=20)
    rep = syn.report.set_index("class")
    for name in ("emphysema", "fibrosis"):
        assert rep.loc[name, "fraction_before"] < target / 2
        assert rep.loc[name, "fraction_synthetic"] == pytest.approx(target, rel=0.25)
        assert rep.loc[name, "fraction_before"] < rep.loc[name, "fraction_combined"]
        assert rep.loc[name, "fraction_combined"] < rep.loc[name, "fraction_synthetic"]
    pasted = sum(p["pixels"] for p in syn.pastes if p["class"] == "emphysema")
    assert rep.loc["emphysema", "pixels_synthetic"] == pasted + int((masks[syn.source_index] == L.EMPHYSEMA).sum())


def test_copies_are_exact_without_rotation_or_dilation():
    masks = toy_masks()
    syn = synthesize_masks(masks, {"fibrosis": 0.06}, np.random.default_rng(0), n_masks=4, max_rotation_deg=0.0,
                           max_dilation=0)
    assert syn.pastes and all(p["pixels"] == 9 for p in syn.pastes)  # the one 3x3 fibrosis lesion, whole
    assert all(p["donor"] == 1 for p in syn.pastes)


def test_lesions_from_other_patients_of_another_size():
    donors = np.zeros((1, 48, 48), np.uint8)
    donors[0, 5:9, 5:8] = L.GGO
    syn = synthesize_masks(toy_masks(), {"ggo": 0.05}, np.random.default_rng(0), n_masks=3, sources=donors)
    assert syn.pastes and all(p["donor"] == 0 for p in syn.pastes)
    assert (syn.labels == L.GGO).sum() > (toy_masks()[syn.source_index] == L.GGO).sum()


def test_bank_and_errors():
    bank = lesion_bank(toy_masks(), [L.EMPHYSEMA, L.FIBROSIS])
    assert len(bank[L.EMPHYSEMA]) == 3 and len(bank[L.FIBROSIS]) == 1
    with pytest.raises(ValueError, match="class 'effusion' cannot be synthesised inside the lung"):
        synthesize_masks(toy_masks(), {"effusion": 0.1}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="no lesion of class consolidation in the sources"):
        synthesize_masks(toy_masks(), {"consolidation": 0.1}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="unknown class 'tumour'"):
        synthesize_masks(toy_masks(), {"tumour": 0.1}, np.random.default_rng(0))


@pytest.mark.parametrize("tolerance", [0.0, 0.02])
def test_share_never_exceeds_target_plus_tolerance(tolerance):
    masks = toy_masks()
    targets = {"emphysema": 0.04, "fibrosis": 0.03}
    syn = synthesize_masks(masks, targets, np.random.default_rng(5), n_masks=30, max_dilation=3, tolerance=tolerance)
    got = shares(syn.labels, [L.EMPHYSEMA, L.FIBROSIS])  # (30, 2)
    assert got.shape == (30, 2)
    assert (got <= np.array([0.04, 0.03]) + tolerance + 1e-12).all()
    assert syn.pastes and (got > 0).any(axis=0).all()  # it did paste both classes
    rep = syn.report.set_index("class")
    assert (rep["max_fraction_synthetic"] <= rep["target_fraction"] + tolerance + 1e-12).all()
    # slices already above a target are not built on: toy slices 0, 2, 4 hold emphysema
    syn0 = synthesize_masks(masks, {"emphysema": 0.0}, np.random.default_rng(0), n_masks=5)
    assert (masks[syn0.source_index] == L.EMPHYSEMA).sum() == 0 and not syn0.pastes


def test_shares_and_no_slice_below_target():
    lab = np.full((1, 4, 4), L.LUNG, np.uint8)
    lab[0, 0, :2] = L.EMPHYSEMA
    lab[0, 3, :] = L.BODY  # 12 lung-field pixels, 2 of them emphysema
    np.testing.assert_allclose(shares(lab, [L.EMPHYSEMA, L.FIBROSIS]), [[2 / 12, 0.0]])
    masks = toy_masks()
    masks[:, 15, 15] = L.FIBROSIS  # every slice now holds fibrosis
    with pytest.raises(ValueError, match="fibrosis <= 0"):
        synthesize_masks(masks, {"fibrosis": 0.0}, np.random.default_rng(0))
    with pytest.raises(ValueError, match="tolerance must be in"):
        synthesize_masks(toy_masks(), {"fibrosis": 0.05}, np.random.default_rng(0), tolerance=-0.1)
