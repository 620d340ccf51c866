"""The study on a user's own prepared dataset: `run --set dataset=DIR` refuses bad folders before anything runs,
adopts a good one as chapter 1, and names it on every page; the own-data page's commands run end to end (slow)."""
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from _ct_fixtures import write_standin
from difflung.data import own_dataset
from difflung.data.dataset import DatasetError
from difflung.diffusion.toy import toy_dataset
from difflung.run import pipeline

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """The stand-in cases (phantom patients as NIfTI with a user's lesion codes) prepared at 32 px by the CLI."""
    root = tmp_path_factory.mktemp("standin")
    cases, classmap = write_standin(root, n_patients=10, slices=6)
    out = subprocess.run([sys.executable, "-m", "difflung", "prepare", str(cases), "--out", str(root / "dataset"),
                          "--classes", str(classmap), "--size", "32"], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr
    return root / "dataset"


def test_bad_folders_are_refused_naming_the_folder(tmp_path, toy_ds):
    with pytest.raises(DatasetError, match="no such folder"):
        own_dataset.check(tmp_path / "nothere", size=16)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty: not a dataset artifact"):
        own_dataset.check(tmp_path / "empty", size=16)
    with pytest.raises(DatasetError, match="prepared at 16 px, but the profile runs at 32 px"):
        own_dataset.check(toy_ds.root, size=32)
    few = toy_dataset(tmp_path / "few", n_patients=5, n_slices=2, size=16)  # split 3 / 1 / 1
    with pytest.raises(DatasetError, match=r"too few patients .*val 1.*needs at least val 2"):
        own_dataset.check(few.root, size=16)
    bad = toy_dataset(tmp_path / "bad", n_patients=8, n_slices=2, size=16)
    f = bad.root / bad.manifest["splits"]["test"]["file"]
    f.write_bytes(f.read_bytes()[:-7])  # truncated
    with pytest.raises(DatasetError, match="sha256 differs"):
        own_dataset.check(bad.root, size=16)


def test_a_bad_dataset_stops_the_run_before_any_chapter(tmp_path):
    r = subprocess.run([sys.executable, "-m", "difflung", "run", "--profile", "smoke", "--set",
                        f"dataset={tmp_path / 'nothere'}", "--runs-dir", str(tmp_path / "runs"),
                        "--notebooks-out", str(tmp_path / "nb")], capture_output=True, text=True)
    assert r.returncode == 1 and "nothere: no such folder" in r.stderr, r.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "nb").exists()


def test_chapter_one_adopts_the_dataset_and_every_page_names_it(standin, tmp_path):
    logs = []
    prov = pipeline.run("smoke", [f"dataset={standin}"], only=["01_data_preparation"], runs_dir=str(tmp_path / "r"),
                        out_dir=tmp_path / "nb", log=logs.append)
    rec = prov["notebooks"]["01_data_preparation"]
    assert rec["status"] == "ok" and rec["parameters"]["dataset"] == str(standin)
    assert "n_patients" not in rec["parameters"]  # the phantom's settings are not the own-data page's
    ch1 = tmp_path / "r" / "smoke" / "01_data_preparation"
    src = own_dataset.describe(tmp_path / "r" / "smoke")
    assert src["sha256"] == own_dataset.dataset_sha256(standin) and src["name"].endswith("standin0/dataset")
    copied = json.loads((ch1 / "dataset" / "manifest.json").read_text())
    assert copied == json.loads((standin / "manifest.json").read_text())  # the same artifact, byte for byte
    assert (ch1 / "hu_signature.json").is_file() and (ch1 / "metrics.csv").is_file()
    page = (tmp_path / "nb" / "01_data_preparation.ipynb").read_text()
    assert "your dataset" in page and "phantom cohort" not in page
    banner = pipeline.banner_text("smoke", tmp_path / "r" / "smoke")
    assert src["name"] in banner and src["sha256"][:16] in banner
    assert pipeline.banner_text("laptop", tmp_path / "r" / "smoke").startswith("This book ran on the dataset")
    logs.clear()
    pipeline.run("smoke", [f"dataset={standin}"], only=["01_data_preparation"], runs_dir=str(tmp_path / "r"),
                 out_dir=tmp_path / "nb", log=logs.append)
    assert logs[0].startswith("[ same ] 01_data_preparation"), logs


def test_the_phantom_chapter_forgets_an_earlier_dataset(tmp_path, monkeypatch):
    from difflung.chapters import data_preparation as ch

    (tmp_path / own_dataset.SOURCE_FILE).write_text("{}")
    ch.build_phantom(tmp_path, n_patients=3, slices_per_patient=2, phantom_size=64, size=16, seed=0)
    assert not (tmp_path / own_dataset.SOURCE_FILE).exists()


PAGE = REPO / "book" / "own_data.md"
# the page shows the laptop study on CASES/ with a class map; the test runs the same commands at smoke scale on the
# stand-in: these substitutions, and the run's folders under the test's own directory, are all it changes
SCALE = {"--size 64": "--size 32", "--profile laptop": "--profile smoke", "runs/laptop/": "runs/smoke/",
         "--synthesize 200": "--synthesize 4"}


def page_commands() -> list[str]:
    """The `python -m difflung` commands of the own-data page's bash blocks, in page order."""
    blocks = re.findall(r"```bash\n(.*?)```", PAGE.read_text(), flags=re.S)
    return [line.strip() for b in blocks for line in b.splitlines() if line.strip().startswith("python -m difflung")]


def test_the_own_data_page_is_commands_only():
    text = PAGE.read_text()
    assert "```python" not in text
    verbs = [shlex.split(c)[3] for c in page_commands()]
    assert verbs == ["prepare", "run", "generate", "export-nnunet"]


@pytest.mark.slow
def test_the_own_data_page_runs_end_to_end_on_the_standin(tmp_path):
    """Every command of the page, at smoke scale, on the stand-in: prepare, the whole book on it, generate,
    export-nnunet (about 10 minutes on 2 cores)."""
    import nibabel as nib

    cases, classmap = write_standin(tmp_path, n_patients=10, slices=8)
    for cmd in page_commands():
        for a, b in SCALE.items():
            cmd = cmd.replace(a, b)
        cmd = cmd.replace("CASES/", str(cases)).replace("examples/classmaps/medseg_covid19.yml", str(classmap))
        args = shlex.split(cmd)
        if args[3] == "run":
            args += ["--runs-dir", str(tmp_path / "runs"), "--notebooks-out", str(tmp_path / "book")]
        r = subprocess.run([sys.executable, *args[1:]], capture_output=True, text=True, cwd=tmp_path)
        assert r.returncode == 0, (cmd, r.stdout[-3000:], r.stderr[-3000:])
    prov = json.loads((tmp_path / "runs" / "smoke" / "provenance.json").read_text())
    assert all(prov["notebooks"][s]["status"] == "ok" for s in prov["chapters"])
    claims = tmp_path / "runs" / "smoke" / "07_results" / "claims.csv"
    assert claims.is_file() and len(claims.read_text().splitlines()) > 5
    src = own_dataset.describe(tmp_path / "runs" / "smoke")  # the banner every page of its book carries names it
    assert src["name"] in pipeline.banner_text("smoke", tmp_path / "runs" / "smoke")
    gen = json.loads((tmp_path / "runs" / "mydata" / "generated" / "generated.json").read_text())
    assert gen["dataset"]["sha256"]
    img = sorted((tmp_path / "runs" / "mydata" / "generated" / "images").glob("*.nii.gz"))[0]
    spacing = nib.load(img).header.get_zooms()
    assert np.all(np.array(spacing[:2]) > 0)
    assert (tmp_path / "runs" / "mydata" / "nnUNet_raw").is_dir()
