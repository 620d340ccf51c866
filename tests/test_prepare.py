"""`prepare`: inputs -> dataset artifact + summary; class maps; the real-CT fetch (offline, with a fake sdist)."""
import hashlib
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from _ct_fixtures import toy_chest, write_dicom_series, write_toy_case
from difflung import labels as L
from difflung.data import realdata
from difflung.data.classmap import ClassMap, load_classmap
from difflung.data.dataset import Dataset, DatasetError
from difflung.data.prepare import find_cases, prepare

REPO = Path(__file__).resolve().parent.parent


def test_single_volume_with_labels_and_classmap(tmp_path):
    img, lab, truth = write_toy_case(tmp_path / "in", "p1")
    cmap = tmp_path / "map.yml"
    cmap.write_text("name: toy\nlabels:\n  1: nodule\n")
    ds, summary = prepare(img, tmp_path / "out", labels=lab, classes=cmap, size=32, seed=0)
    assert ds.classes == [L.BACKGROUND, L.BODY, L.LUNG, L.AIRWAY, L.NODULE]
    (row,) = summary["patients"]
    assert row["patient"] == "p1" and row["slices_total"] == 12 and row["slices_kept"] == 10
    assert row["spacing_mm"] == [5.0, 5.0, 5.0]
    # lung field of the toy: two 0.56 l lungs (nodule inside); a 5 mm voxel is 0.125 ml
    assert row["lung_volume_ml"] == pytest.approx(np.isin(truth, L.LUNG_IDS).sum() * 0.125, rel=0.03)
    assert row["voxel_counts"]["nodule"] == (truth == L.NODULE).sum()
    s = ds.split("train")  # a single patient goes to the training split
    assert s.images.shape == (10, 32, 32) and s.labels.dtype == np.uint8
    assert -1.0 <= s.images.min() and s.images.max() <= 1.0
    assert np.all(np.diff(s.z) > 0)  # apex to base
    assert ds.manifest["params"]["classes"]["labels"] == {"0": "background", "1": "nodule"}  # JSON keys


def test_folder_of_cases_flat_and_per_case_with_dicom(tmp_path):
    root = tmp_path / "cases"
    write_toy_case(root, "a", suffix=".nii.gz")
    write_toy_case(root, "b", suffix=".mha", label_value=7)
    write_toy_case(root, "c", layout="folder", suffix=".nii")
    hu, _, _ = toy_chest(lesion=False)
    write_dicom_series(root / "d", hu, spacing=(5.0, 5.0, 5.0), patient_id="IGNORED-FOLDER-NAME-WINS",
                       shuffle_rng=np.random.default_rng(0))
    cases = find_cases(root)
    assert [c.patient for c in cases] == ["a", "b", "c", "d"]
    assert cases[3].label is None and cases[3].image == root / "d"
    ds, summary = prepare(root, tmp_path / "out", classes={"labels": {1: "nodule", 7: "ggo"}}, size=32, seed=1)
    assert sorted(p["patient"] for p in summary["patients"]) == ["a", "b", "c", "d"]
    assert sum(len(v) for v in summary["splits"].values()) == 4 and all(summary["splits"].values())
    assert set(ds.classes) == {0, 1, 2, 3, L.GGO, L.NODULE}
    vols = [p["lung_volume_ml"] for p in summary["patients"]]
    assert max(vols) - min(vols) < 0.03 * max(vols)  # the same toy chest through four formats


def test_single_class_shorthand_and_determinism(tmp_path):
    img, lab, _ = write_toy_case(tmp_path / "in", "p1", label_value=3)
    a, _ = prepare(img, tmp_path / "o1", labels=lab, classes="ggo", size=32, seed=0)
    b, _ = prepare(img, tmp_path / "o2", labels=lab, classes="ggo", size=32, seed=0)
    assert L.GGO in a.classes
    for split in ("train", "val", "test"):
        assert a.manifest["splits"][split]["sha256"] == b.manifest["splits"][split]["sha256"]


def test_classmap_apply_and_ignore():
    cm = load_classmap({"name": "x", "labels": {1: "nodule", 2: "ignore", 5: 5}})
    arr = np.array([[0, 1, 2, 5]])
    np.testing.assert_array_equal(cm.apply(arr), [[0, L.NODULE, 0, L.GGO]])
    assert isinstance(cm, ClassMap) and cm.as_dict()["labels"][2] == "background"
    assert ClassMap.single("fibrosis").apply(np.array([0, 3, 900])).tolist() == [0, L.FIBROSIS, L.FIBROSIS]


@pytest.mark.parametrize("path", sorted((REPO / "examples" / "classmaps").glob("*.yml")))
def test_example_classmaps_load(path):
    cm = load_classmap(path)
    assert len(cm.labels) >= 2 and all(v in L.BY_ID for v in cm.labels.values())


def test_cli_prints_json_summary(tmp_path):
    img, lab, _ = write_toy_case(tmp_path / "in", "p1")
    r = subprocess.run([sys.executable, "-m", "difflung", "prepare", str(img), "--labels", str(lab),
                        "--classes", "nodule", "--size", "32", "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["patients"][0]["voxel_counts"]["nodule"] > 0
    assert Dataset(tmp_path / "out").size == 32


# ---------------------------------------------------------------------------------------------------------------
# fetch-data, offline: a fake sdist with the same layout, its hashes patched in

def _fake_sdist(path: Path, members: dict[str, bytes]) -> str:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_fetch_extracts_verifies_and_is_idempotent(tmp_path, monkeypatch):
    contents = {m: f"content of {n}".encode() for m, (n, _) in realdata.MEMBERS.items()}
    contents["pyradiomics-3.0.1/setup.py"] = b"import numpy"  # other members stay in the archive
    digest = _fake_sdist(tmp_path / realdata.SDIST, contents)
    monkeypatch.setattr(realdata, "SDIST_SHA256", digest)
    monkeypatch.setattr(realdata, "MEMBERS", {m: (n, hashlib.sha256(contents[m]).hexdigest())
                                              for m, (n, _) in realdata.MEMBERS.items()})
    log = []
    paths = realdata.fetch_pyradiomics(tmp_path / "cache", archive=tmp_path / realdata.SDIST, log=log.append)
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == sorted(
        ["LICENSE.txt", "SOURCE.json", "lung1_image.nrrd", "lung1_label.nrrd", "lung2_image.nrrd", "lung2_label.nrrd"])
    assert paths["lung2_label"].read_bytes() == b"content of lung2_label.nrrd"
    log.clear()
    realdata.fetch_pyradiomics(tmp_path / "cache", archive=tmp_path / "does-not-matter", log=log.append)
    assert "nothing to do" in log[0]  # verified cache: the archive is not even opened
    paths["lung1_image"].write_bytes(b"tampered")
    realdata.fetch_pyradiomics(tmp_path / "cache", archive=tmp_path / realdata.SDIST, log=log.append)
    assert paths["lung1_image"].read_bytes() == b"content of lung1_image.nrrd"


@pytest.mark.slow
def test_prepare_real_pyradiomics_ct(tmp_path):
    """The real CT (needs `python -m difflung fetch-data` first): lung volumes of a few litres."""
    paths = realdata.cached_paths()
    if not all(p.is_file() for p in paths.values()):
        pytest.skip("run `python -m difflung fetch-data` first")
    ds, summary = prepare(paths["lung1_image"].parent, tmp_path / "real", classes="nodule", size=64)
    rows = {r["patient"]: r for r in summary["patients"]}
    assert 2000 < rows["lung1"]["lung_volume_ml"] < 4000 and 3000 < rows["lung2"]["lung_volume_ml"] < 5000
    assert rows["lung1"]["voxel_counts"]["nodule"] == 837 and rows["lung2"]["voxel_counts"]["nodule"] == 24644
    assert 10 < rows["lung1"]["airway_ml"] < 100 and 10 < rows["lung2"]["airway_ml"] < 100


def test_real_ct_functions_on_toy_cases(tmp_path):
    """Chapter 1's real-CT sections run on any cases: tables, metrics rows, a figure with provenance."""
    from difflung.data.ct_anatomy import AnatomyConfig
    from difflung.data.masksynth import report_table
    from difflung.data import realct as R
    from difflung.chapters import data_preparation as ch
    from difflung.core.metrics_csv import to_frame
    from difflung.data.prepare import Case, prepare_volume

    cases = []
    for name in ("r1", "r2"):
        img, lab, _ = write_toy_case(tmp_path / "in", name)
        cases.append(R.RealCase(*prepare_volume(Case(img, lab, name), load_classmap("nodule"), AnatomyConfig())))
    assert R.lung_levels(cases[0].volume.labels) == {"apex": 3, "middle": 6, "base": 10}  # lung on slices 2..11
    table = R.lung_volume_table(cases)
    assert table.loc["r1", "lung slices"] == "2-11" and bool(table.loc["r1", "apex in scan"])
    assert not table.loc["r1", "base in scan"]  # lung reaches the last slice: the base is cut
    samples = R.hu_lung_samples(cases, [c.volume for c in cases], seed=0, per_volume=500)
    stats = R.hu_lung_stats(samples)
    assert stats.loc["real CT", "mean HU"] == pytest.approx(-860.0, abs=1.0)  # the toy lung is -860 HU
    rows = R.metrics_rows(table, None, stats, seed=3)
    df = to_frame(rows)
    assert set(df["model"]) == {"real-ct", "phantom"} and (df["seed"] == 3).all()
    assert df.query("metric == 'lung_volume_ml' and `class` == 'lung' and patient == 'r1'")["value"].item() == \
        table.loc["r1", "lung field ml"]
    labels = np.concatenate([c.volume.labels for c in cases])
    fig, report, syn = ch.figure_mask_synthesis(labels, tmp_path / "run", boost={"nodule": 0.05}, seed=0, n_masks=3)
    assert (tmp_path / "run" / "mask_synthesis_examples.png").is_file()
    assert (tmp_path / "run" / "mask_synthesis_examples.json").is_file()
    assert report.loc[0, "fraction_synthetic"] > report.loc[0, "fraction_before"]
    shown = report_table(report)
    assert shown.loc["nodule", "target share"] == "5.00 %" and shown.loc["nodule", "slices built on"].endswith(" of 24")


def test_dicom_series_with_a_label_volume_in_patient_space(tmp_path):
    """A DICOM series and a NRRD label written in the same patient space line up (same origin after LPI)."""
    from difflung.data.ctio import write_volume

    hu, truth, lab = toy_chest()
    write_dicom_series(tmp_path / "dcm", hu, spacing=(5.0, 5.0, 5.0), origin=(-100.0, -100.0, 50.0),
                       patient_id="DCM-7", shuffle_rng=np.random.default_rng(1))
    write_volume(tmp_path / "lab.nrrd", lab.astype(np.uint8), (5.0, 5.0, 5.0), origin=(-100.0, -100.0, 50.0))
    ds, summary = prepare(tmp_path / "dcm", tmp_path / "out", labels=tmp_path / "lab.nrrd", classes="nodule", size=32)
    row = summary["patients"][0]
    assert row["patient"] == "DCM-7" and row["voxel_counts"]["nodule"] == (truth == L.NODULE).sum()
    with pytest.raises(DatasetError, match=r"lab2\.nrrd: label origin"):
        write_volume(tmp_path / "lab2.nrrd", lab.astype(np.uint8), (5.0, 5.0, 5.0), origin=(-100.0, -100.0, -5.0))
        prepare(tmp_path / "dcm", tmp_path / "out2", labels=tmp_path / "lab2.nrrd", classes="nodule", size=32)


def _toy_lungs(shape=(12, 64, 64), spacing=(5.0, 5.0, 5.0)):
    """The toy chest's right and left lungs and trachea as (z, y, x) masks (x small: the patient's right)."""
    _, truth, _ = toy_chest(shape=shape, spacing=spacing)
    lung = np.isin(truth, L.LUNG_IDS)
    right = lung.copy()
    right[:, :, shape[2] // 2:] = False
    return right, lung & ~right, truth == L.AIRWAY


def test_lung_mask_from_lungmask_replaces_the_classical_lungs(tmp_path):
    from difflung.data.ctio import write_volume

    img, lab, truth = write_toy_case(tmp_path / "in", "p1")
    right, left, _ = _toy_lungs()
    right[:, :32] = False  # only the front half of the right lung: the result must follow the mask, not the HU
    mask = np.where(right, 1, np.where(left, 2, 0)).astype(np.uint8)  # lungmask R231: 1 = right, 2 = left
    write_volume(tmp_path / "lungs.nii.gz", mask, (5.0, 5.0, 5.0))
    ds, summary = prepare(img, tmp_path / "out", labels=lab, classes="nodule", size=32,
                          lung_mask=tmp_path / "lungs.nii.gz",
                          lung_classes=REPO / "examples/classmaps/lungmask_r231.yml")
    (row,) = summary["patients"]
    assert row["lung_right_ml"] == pytest.approx(right.sum() * 0.125, abs=0.1)  # 5 mm voxels: 0.125 ml
    assert row["lung_left_ml"] == pytest.approx(left.sum() * 0.125, abs=0.1)
    assert row["airway_ml"] == 0 and any("labels no airway" in w for w in row["warnings"])
    assert row["lung_mask"] == str(tmp_path / "lungs.nii.gz")
    assert L.AIRWAY not in ds.classes and L.NODULE in ds.classes  # the nodule next to the mask's lung is kept
    assert ds.manifest["params"]["lung_classes"]["labels"] == {"0": "background", "1": "lung_right", "2": "lung_left"}


def test_lung_mask_from_totalsegmentator_keeps_lobes_sides_and_trachea(tmp_path):
    from difflung.data.ctio import write_volume

    img, _, _ = write_toy_case(tmp_path / "in", "p1", lesion=False)
    right, left, trachea = _toy_lungs()
    mask = np.zeros(right.shape, np.uint8)
    mask[:, :8] = 51  # heart and the other organs are not lung
    mask[right] = 12  # right upper lobe ...
    mask[right & (np.arange(12) >= 7)[:, None, None]] = 14  # ... and lower lobe
    mask[left] = 10
    mask[left & (np.arange(12) >= 7)[:, None, None]] = 11
    mask[trachea] = 16
    write_volume(tmp_path / "total.nii.gz", mask, (5.0, 5.0, 5.0))
    ds, summary = prepare(img, tmp_path / "out", size=32, lung_mask=tmp_path / "total.nii.gz",
                          lung_classes=REPO / "examples/classmaps/totalsegmentator_total_lungs.yml")
    (row,) = summary["patients"]
    assert row["lung_right_ml"] == pytest.approx(right.sum() * 0.125, abs=0.05)  # rounded to 0.1 ml
    assert row["lung_left_ml"] == pytest.approx(left.sum() * 0.125, abs=0.05)
    assert row["voxel_counts"]["airway"] == trachea.sum() and row["warnings"] == []
    assert ds.classes == [L.BACKGROUND, L.BODY, L.LUNG, L.AIRWAY]


def test_lung_mask_maps():
    from difflung.data.classmap import ClassMapError, load_lung_mask_map

    cm = load_lung_mask_map(REPO / "examples/classmaps/totalsegmentator_total_lungs.yml")
    assert cm.apply(np.array([0, 10, 13, 16, 51, 117])).tolist() == [0, L.LUNG, L.LUNG, L.AIRWAY, 0, 0]
    assert cm.sides == {10: "left", 11: "left", 12: "right", 13: "right", 14: "right"}
    assert load_lung_mask_map().apply(np.array([0, 1, 7])).tolist() == [0, L.LUNG, L.LUNG]
    r231 = load_lung_mask_map(REPO / "examples/classmaps/lungmask_r231.yml")
    assert r231.sides == {1: "right", 2: "left"}
    with pytest.raises(ClassMapError, match="not in class map"):
        r231.apply(np.array([0, 3]), "m.nii.gz")
    with pytest.raises(ClassMapError, match=r"others: 'tumour' is not a project class"):
        load_lung_mask_map({"labels": {1: "lung"}, "others": "tumour"})
