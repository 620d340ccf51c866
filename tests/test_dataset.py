"""Preprocessing and the dataset artifact."""
import json

import numpy as np
import pytest

from difflung import labels as L
from difflung.data.dataset import (Dataset, DatasetError, Volume, resize_slice, split_patients, unwindow, volumes_to_slices,
                              window, write_dataset)
from difflung.core.metrics_csv import read_metrics, write_metrics


def _volume(pid, rng, z=4, s=48):
    hu = rng.normal(-860, 20, (z, s, s)).astype(np.float32)
    lab = np.zeros((z, s, s), np.uint8)
    lab[:, 4:-4, 4:-4] = L.BODY
    lab[:, 12:36, 8:22] = L.LUNG
    lab[:, 12:36, 26:40] = L.LUNG
    lab[1:, 14:18, 10:14] = L.EMPHYSEMA
    lab[0] = L.BODY  # a slice without lung is dropped
    hu[lab == L.BODY] = 40
    return Volume(pid, hu, lab, (5.0, 0.7, 0.7), source=f"test:{pid}")


def test_window_round_trip_and_clipping():
    hu = np.array([-2000, -1000, -860, 0, 400, 3000], np.float32)
    x = window(hu)
    assert x.dtype == np.float32 and x.min() == -1 and x.max() == 1
    np.testing.assert_allclose(unwindow(x), np.clip(hu, -1000, 400), atol=1e-3)
    assert window(np.float32(-300)) == pytest.approx(0.0)


def test_resize_bilinear_image_nearest_labels_and_square_padding():
    hu = np.full((40, 64), -860, np.float32)
    lab = np.full((40, 64), L.LUNG, np.uint8)
    lab[:, :8] = L.EMPHYSEMA
    img, out = resize_slice(hu, lab, 32)
    assert img.shape == out.shape == (32, 32)
    assert set(np.unique(out)) <= {L.BACKGROUND, L.LUNG, L.EMPHYSEMA}  # nearest: no new label values
    assert out[0, 16] == L.BACKGROUND and img[0, 16] == pytest.approx(-1000)  # padded rows are air/background
    assert img[16, 16] == pytest.approx(-860, abs=1e-3)


def test_split_is_patient_level_deterministic_and_complete():
    ids = [f"P{i:03d}" for i in range(10)]
    a, b = split_patients(ids, seed=1), split_patients(ids, seed=1)
    assert a == b and a != split_patients(ids, seed=2)
    assert sorted(sum(a.values(), [])) == ids
    assert all(len(v) >= 1 for v in a.values()) and len(a["train"]) == 6


def test_artifact_round_trip_frequencies_and_hash_check(tmp_path):
    rng = np.random.default_rng(0)
    vols = [_volume(f"P{i}", rng) for i in range(5)]
    slices, summary = volumes_to_slices(vols, 32)
    assert len(slices) == 15 and summary[0]["slices_kept"] == 3  # the lung-free slice of each patient is dropped
    ds = write_dataset(tmp_path / "ds", slices, source="test", params={"a": 1}, seed=0)
    again = write_dataset(tmp_path / "ds2", slices, source="test", params={"a": 1}, seed=0)
    for s in ("train", "val", "test"):  # rebuilding the same data gives the same bytes (downstream reuse keys on it)
        assert again.manifest["splits"][s]["sha256"] == ds.manifest["splits"][s]["sha256"]
    tr = ds.split("train")
    assert tr.images.dtype == np.float32 and tr.labels.dtype == np.uint8 and tr.images.shape[1:] == (32, 32)
    assert ds.classes == [L.BACKGROUND, L.BODY, L.LUNG, L.EMPHYSEMA]
    for s in ("train", "val", "test"):
        f = ds.frequencies(s)
        assert set(f) == {"lung", "emphysema"} and sum(f.values()) == pytest.approx(1.0)
    pats = [set(ds.split(s).patient.tolist()) for s in ("train", "val", "test")]
    assert not (pats[0] & pats[1] or pats[0] & pats[2] or pats[1] & pats[2])
    man = json.loads((tmp_path / "ds/manifest.json").read_text())
    assert man["provenance"]["seed"] == 0 and man["provenance"]["git_revision"]
    # a changed file is caught by its sha256
    with open(tmp_path / "ds/test.npz", "ab") as f:
        f.write(b"x")
    with pytest.raises(DatasetError, match="test.npz: sha256 differs"):
        Dataset(tmp_path / "ds").split("test")


def test_rewrite_is_atomic_and_bad_inputs_are_named(tmp_path):
    rng = np.random.default_rng(0)
    vol = _volume("P0", rng)
    vol.hu[1, 3, 3] = np.nan
    with pytest.raises(DatasetError, match="test:P0: image contains NaN"):
        volumes_to_slices([vol], 32)
    with pytest.raises(FileNotFoundError, match="no dataset manifest.*01_data_preparation"):
        Dataset(tmp_path / "nothing")
    with pytest.raises(DatasetError, match="expected a 3D volume"):
        Volume("P", np.zeros((4, 4), np.float32), np.zeros((4, 4), np.uint8), (1, 1, 1))
    assert list(tmp_path.iterdir()) == []


def test_metrics_csv_is_byte_identical_and_sorted(tmp_path):
    rows = [{"model": "b", "metric": "dice", "class": "lung", "seed": 1, "value": 0.123456789},
            {"model": "a", "metric": "psnr", "class": None, "seed": 0, "value": 20.0, "sampler": "ddim"}]
    p1 = write_metrics(tmp_path / "one", rows)
    p2 = write_metrics(tmp_path / "two", list(reversed(rows)))
    assert p1.read_bytes() == p2.read_bytes()
    text = p1.read_text().splitlines()
    assert text[0] == "model,metric,class,seed,sampler,value" and text[1].startswith("a,psnr,all,0,ddim,20")
    df = read_metrics(tmp_path / "one")
    assert df.loc[df.model == "b", "value"].item() == pytest.approx(0.123457)
    with pytest.raises(ValueError, match="lack columns"):
        write_metrics(tmp_path / "x", [{"model": "a", "value": 1}])


def test_stratified_split_puts_each_rare_class_in_every_split():
    ids = [f"P{i:02d}" for i in range(10)]
    strata = {p: set() for p in ids}
    for p in ("P01", "P05", "P07"):  # a rare class held by three patients
        strata[p].add(L.EMPHYSEMA)
    for p in ids[:6]:
        strata[p].add(L.FIBROSIS)
    strata["P09"].add(L.GGO)  # held by one patient: cannot be in every split, left to chance
    for seed in range(5):
        sp = split_patients(ids, seed=seed, strata=strata)
        assert sorted(sum(sp.values(), [])) == ids and [len(sp[s]) for s in ("train", "val", "test")] == [6, 2, 2]
        for cls in (L.EMPHYSEMA, L.FIBROSIS):
            assert all(any(cls in strata[p] for p in sp[s]) for s in sp), (seed, cls, sp)
    assert split_patients(ids, seed=3, strata=strata) == split_patients(ids, seed=3, strata=strata)
