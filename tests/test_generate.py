"""`python -m difflung generate`: NIfTI pairs at the dataset's pixel spacing, generated.json, the nnU-Net export
reading the folder as it is, and every refusal leaving nothing behind."""
import json
import re

import nibabel as nib
import numpy as np
import pytest

from difflung import labels as L
from difflung.augment.synthetic_set import slice_spacing
from difflung.cli import main
from difflung.core.provenance import sha256_file
from difflung.data.dataset import Dataset, Volume, volumes_to_slices, write_dataset
from difflung.diffusion.toy import toy_volume

SPACING = (5.0, 0.7, 0.8)  # (z, y, x) mm: rows and columns differ, so a swapped axis shows


def _dataset(root, size=32, relabel=None, params=None):
    rng = np.random.default_rng(0)
    vols = []
    for i in range(5):
        v = toy_volume(f"toy{i:03d}", rng, 32, 4)
        lab = v.labels if relabel is None else np.where(v.labels == relabel[0], relabel[1], v.labels).astype(np.uint8)
        vols.append(Volume(v.patient, v.hu, lab, SPACING, source="toy"))
    slices, patients = volumes_to_slices(vols, size)
    return write_dataset(root, slices, source="toy", params=params or {"size": size}, seed=0, patients=patients)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    ds = _dataset(root / "ds")
    assert main(["train", "--dataset", str(ds.root), "--out", str(root / "model"), "--preset", "tiny",
                 "--steps", "3", "--batch-size", "2", "--warmup", "none", "--device", "cpu"]) == 0
    return ds, root / "model"


def _generate(ds, model, out, *extra):
    return main(["generate", "--model", str(model), "--dataset", str(ds.root), "--out", str(out),
                 "--sampler", "ddim", "--steps", "2", "--seed", "7", "--device", "cpu", *extra])


def _slice(path):
    img = nib.load(str(path))
    return np.asarray(img.dataobj)[:, :, 0].T, tuple(round(float(z), 5) for z in img.header.get_zooms()[:2])


def test_generate_writes_pairs_at_the_datasets_spacing(trained, tmp_path, capsys):
    ds, model = trained
    assert _generate(ds, model, tmp_path / "g") == 0
    capsys.readouterr()
    train = ds.split("train")
    meta = json.loads((tmp_path / "g" / "generated.json").read_text())
    n = len(train)
    assert meta["n"] == n and meta["masks"] == "dataset" and meta["boost"] is None
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == ["generated.json", "images", "labels"]
    assert len(list((tmp_path / "g" / "images").iterdir())) == len(list((tmp_path / "g" / "labels").iterdir())) == n
    assert (meta["sampler"], meta["steps"], meta["seeds"]) == ("ddim", 2, list(range(7, 7 + n)))
    assert meta["dataset"]["sha256"] == ds.manifest["splits"]["train"]["sha256"]
    assert meta["model"]["config_sha256"] == sha256_file(model / "difflung_config.json")
    assert meta["model"]["classes"] == ds.classes and meta["model"]["size"] == 32
    assert {"git_revision", "versions", "device"} <= set(meta["provenance"])
    counts = np.bincount(train.labels.ravel(), minlength=256)
    assert meta["pixel_counts"] == {L.BY_ID[k].name: int(counts[k]) for k in np.flatnonzero(counts)}
    for i in (0, n - 1):
        row = meta["images"][i]
        hu, sp = _slice(tmp_path / "g" / row["image"])
        lab, sp_lab = _slice(tmp_path / "g" / row["label"])
        assert sp == sp_lab == (0.8, 0.7)  # nibabel zooms are (x, y): columns 0.8 mm, rows 0.7 mm
        assert row["spacing_mm"] == pytest.approx([0.7, 0.8]) and row["patient"] == train.patient[i]
        assert np.array_equal(lab, train.labels[i]) and lab.dtype == np.uint8
        assert hu.dtype == np.float32 and hu.shape == (32, 32) and -1000 <= hu.min() < hu.max() <= 400
        assert hu.std() > 1  # an image, not a constant


def test_slice_spacing_follows_the_volume_size(tmp_path):
    ds = _dataset(tmp_path / "ds", size=16, params={"phantom_config": {"size": 32}})  # 32-px volumes at 16 px
    assert slice_spacing(ds)["toy000"] == pytest.approx((1.4, 1.6))
    ds.manifest["patients"][0]["shape_zyx"] = [4, 48, 64]  # as `prepare` records it: max(h, w) = 64
    assert slice_spacing(ds)["toy000"] == pytest.approx((0.7 * 4, 0.8 * 4))


def test_synthesized_masks_boost_rare_classes(trained, tmp_path, capsys):
    ds, model = trained
    assert _generate(ds, model, tmp_path / "s", "--synthesize", "3", "--boost", "0.15") == 0
    assert json.loads(capsys.readouterr().out)["n"] == 3
    meta = json.loads((tmp_path / "s" / "generated.json").read_text())
    train = ds.split("train")
    assert meta["masks"] == "synthesized" and meta["boost"] == {"emphysema": 0.15, "ggo": 0.15, "fibrosis": 0.15}
    gained = 0
    for row in meta["images"]:
        lab, _ = _slice(tmp_path / "s" / row["label"])
        src = train.labels[row["source_slice"]]
        assert row["patient"] == train.patient[row["source_slice"]]
        field = np.isin(lab, L.LUNG_IDS).sum()
        assert field == np.isin(src, L.LUNG_IDS).sum()  # only healthy lung changes
        for c in (L.EMPHYSEMA, L.GGO, L.FIBROSIS):
            assert (lab == c).sum() <= 0.15 * field + 1e-9 and (lab == c).sum() >= (src == c).sum()
        gained += int(np.isin(lab, (L.EMPHYSEMA, L.GGO, L.FIBROSIS)).sum() - np.isin(src, (4, 5, 6)).sum())
    assert gained > 0


def test_export_nnunet_reads_the_generated_folder(trained, tmp_path, capsys):
    ds, model = trained
    assert _generate(ds, model, tmp_path / "g") == 0
    capsys.readouterr()
    assert main(["export-nnunet", "--dataset", str(ds.root), "--synthetic", str(tmp_path / "g"),
                 "--out", str(tmp_path / "raw"), "--id", "9", "--name", "Gen"]) == 0
    out = json.loads(capsys.readouterr().out)
    n = len(ds.split("train"))
    assert (out["n_real"], out["n_synthetic"]) == (n, n)
    folder = tmp_path / "raw" / "Dataset009_Gen"
    meta = json.loads((folder / "dataset.json").read_text())
    lut = {meta["difflung"]["project_ids"][name]: k for name, k in meta["labels"].items()}
    gen = json.loads((tmp_path / "g" / "generated.json").read_text())["images"][3]
    lab, sp = _slice(folder / "labelsTr" / "syn_00003.nii.gz")
    src, _ = _slice(tmp_path / "g" / gen["label"])
    assert sp == (0.8, 0.7) and meta["difflung"]["cases"]["syn_00003"]["spacing_mm"] == pytest.approx([0.7, 0.8])
    assert np.array_equal(lab, np.vectorize(lut.get)(src))
    hu, _ = _slice(folder / "imagesTr" / "syn_00003_0000.nii.gz")
    assert np.allclose(hu, _slice(tmp_path / "g" / gen["image"])[0], atol=0.05)


def _other_labels(tmp):
    return ["--dataset", str(_dataset(tmp / "other", relabel=(L.FIBROSIS, L.GGO)).root)], r"trained on classes"


def _other_size(tmp):
    return ["--dataset", str(_dataset(tmp / "small", size=16).root)], r"trained at 32 px, dataset .*small is 16 px"


def _unknown_class(tmp):
    return ["--synthesize", "2", "--boost-classes", "ggo,tumour"], r"unknown class 'tumour'"


def _absent_class(tmp):
    return ["--synthesize", "2", "--boost-classes", "nodule"], r"boost classes \['nodule'\]: not in the dataset"


def _missing_model(tmp):
    return ["--model", str(tmp / "nomodel")], r"nomodel: not a finished generator folder"


def _missing_dataset(tmp):
    return ["--dataset", str(tmp / "nods")], r"nods/manifest.json: no dataset manifest"


def _bad_sampler(tmp):
    return ["--sampler", "euler"], r"sampler 'euler': expected one of"


REFUSALS = [_other_labels, _other_size, _unknown_class, _absent_class, _missing_model, _missing_dataset, _bad_sampler]


@pytest.mark.parametrize("case", REFUSALS, ids=[c.__name__.lstrip("_") for c in REFUSALS])
def test_refusals_write_nothing(trained, tmp_path, capsys, case):
    ds, model = trained
    extra, pattern = case(tmp_path)
    out = tmp_path / "out" / "g"
    args = ["generate", "--model", str(model), "--dataset", str(ds.root), "--out", str(out), "--steps", "2",
            "--device", "cpu"]
    for flag in ("--model", "--dataset"):  # a case's own folder replaces the trained one
        if flag in extra:
            i = args.index(flag)
            args[i + 1] = extra[extra.index(flag) + 1]
    args += [a for j, a in enumerate(extra) if a not in ("--model", "--dataset")
             and (j == 0 or extra[j - 1] not in ("--model", "--dataset"))]
    assert main(args) == 1
    cap = capsys.readouterr()
    err = [ln for ln in cap.err.splitlines() if ln.startswith("error: ")]
    assert len(err) == 1 and re.search(pattern, err[0]), cap.err
    assert cap.out == "" and not (tmp_path / "out").exists()


def test_existing_folder_is_kept_without_overwrite(trained, tmp_path, capsys):
    ds, model = trained
    (tmp_path / "g").mkdir()
    (tmp_path / "g" / "mine.txt").write_text("keep")
    assert _generate(ds, model, tmp_path / "g") == 1
    assert "g: exists; pass overwrite=True (CLI: --overwrite)" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["g"]
    assert [p.name for p in (tmp_path / "g").iterdir()] == ["mine.txt"]


def test_same_seed_same_images_and_each_image_its_own_seed(trained, tmp_path, capsys):
    ds, model = trained
    assert _generate(ds, model, tmp_path / "a", "--synthesize", "3") == 0
    assert _generate(ds, model, tmp_path / "b", "--synthesize", "3") == 0
    assert _generate(ds, model, tmp_path / "c", "--synthesize", "3", "--batch-size", "1") == 0
    capsys.readouterr()
    for i in range(3):
        a = _slice(tmp_path / "a" / "images" / f"syn_{i:05d}.nii.gz")[0]
        assert np.array_equal(a, _slice(tmp_path / "b" / "images" / f"syn_{i:05d}.nii.gz")[0])
        assert np.allclose(a, _slice(tmp_path / "c" / "images" / f"syn_{i:05d}.nii.gz")[0], atol=1.0)  # HU
    assert not np.allclose(a, _slice(tmp_path / "a" / "images" / "syn_00000.nii.gz")[0], atol=1.0)
