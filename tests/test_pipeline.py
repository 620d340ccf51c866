"""The papermill pipeline: parameters from profiles, skip-if-unchanged, failure path, provenance."""
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from difflung.run import pipeline
from difflung.run.profiles import ProfileError, apply_overrides, load_profile

REPO = Path(__file__).resolve().parent.parent


def _notebook(path: Path, params: str, body: str) -> None:
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(params)
    p.metadata["tags"] = ["parameters"]
    nb.cells = [p, nbformat.v4.new_code_cell(body)]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


@pytest.fixture()
def mini_book(tmp_path):
    """A two-notebook book in a temporary root: 01 writes a file, 02 reads it and raises if `fail`."""
    (tmp_path / "notebooks").mkdir()
    (tmp_path / "profiles").mkdir()
    (tmp_path / "_toc.yml").write_text(yaml.safe_dump(
        {"format": "jb-book", "root": "intro", "chapters": [{"file": "chapters/01_a"}, {"file": "chapters/02_b"}]}))
    _notebook(tmp_path / "notebooks" / "01_a.ipynb", 'run_dir = "x"\nseed = 0\nn = 1',
              "from pathlib import Path\nPath(run_dir).mkdir(parents=True, exist_ok=True)\n"
              "Path(run_dir, 'out.txt').write_text(str(n * 10 + seed))")
    _notebook(tmp_path / "notebooks" / "02_b.ipynb", 'runs_root = "x"\nseed = 0\nfail = False',
              "from pathlib import Path\nv = Path(runs_root, '01_a', 'out.txt').read_text()\n"
              "if fail:\n    raise ValueError('asked to fail')")
    (tmp_path / "profiles" / "tiny.yml").write_text(yaml.safe_dump(
        {"common": {"seed": 3}, "notebooks": {"01_a": {"n": 2}, "02_b": {"fail": False}}}))
    return tmp_path


def _run(root, **kw):
    logs = []
    prov = pipeline.run("tiny", root=root, log=logs.append, **kw)
    return prov, logs


def test_runs_in_order_with_profile_parameters_and_provenance(mini_book):
    prov, logs = _run(mini_book)
    assert (mini_book / "runs/tiny/01_a/out.txt").read_text() == "23"  # n=2, seed=3 from the profile
    assert (mini_book / "book/chapters/01_a.ipynb").is_file() and (mini_book / "book/chapters/02_b.ipynb").is_file()
    saved = json.loads((mini_book / "runs/tiny/provenance.json").read_text())
    rec = saved["notebooks"]["01_a"]
    assert rec["parameters"] == {"n": 2, "seed": 3, "run_dir": "runs/tiny/01_a"}
    assert rec["status"] == "ok" and rec["wall_s"] > 0 and "torch" in rec["versions"] and rec["device"]
    assert (mini_book / "book/_generated/reproduction.md").read_text().count("| ok |") == 2
    # the source notebooks are never executed in place
    src = nbformat.read(mini_book / "notebooks/01_a.ipynb", as_version=4)
    assert all(not c.get("outputs") for c in src.cells) and len(src.cells) == 2


def test_rerun_skips_unchanged_and_reruns_downstream_of_a_change(mini_book):
    _run(mini_book)
    _, logs = _run(mini_book)
    assert all(line.startswith("[ same ]") for line in logs[:2]), logs
    _, logs = _run(mini_book, overrides=["01_a.n=5"])
    assert logs[0].startswith("[ run  ] 01_a") and any(line.startswith("[ run  ] 02_b") for line in logs), logs
    assert (mini_book / "runs/tiny/01_a/out.txt").read_text() == "53"
    _, logs = _run(mini_book, overrides=["01_a.n=5"], force=True)
    assert sum(line.startswith("[ run  ]") for line in logs) == 2


def test_failing_notebook_names_cell_keeps_partial_and_book_page_untouched(mini_book):
    with pytest.raises(pipeline.PipelineError) as e:
        _run(mini_book, overrides=["fail=true"])
    msg = str(e.value)
    assert "02_b" in msg and "code cell 2 of 2" in msg and "asked to fail" in msg
    assert (mini_book / "runs/tiny/02_b/02_b.failed.ipynb").is_file()
    assert not (mini_book / "book/chapters/02_b.ipynb").exists()  # nothing half-written where the book renders
    assert not list((mini_book / "book/chapters").glob(".*partial*"))
    assert json.loads((mini_book / "runs/tiny/provenance.json").read_text())["notebooks"]["02_b"]["status"] == "failed"


def test_missing_upstream_artifact_fails_clearly(mini_book):
    (mini_book / "_toc.yml").write_text(yaml.safe_dump({"format": "jb-book", "root": "intro",
                                                        "chapters": [{"file": "chapters/02_b"}]}))
    (mini_book / "profiles/tiny.yml").write_text(yaml.safe_dump({"common": {"seed": 3}, "notebooks": {}}))
    with pytest.raises(pipeline.PipelineError, match="(?s)02_b.*FileNotFoundError.*01_a.out.txt"):
        _run(mini_book)


def test_profile_errors(mini_book):
    with pytest.raises(ProfileError, match="unknown profile 'nope'.*available: tiny"):
        load_profile("nope", mini_book / "profiles")
    prof = load_profile("tiny", mini_book / "profiles")
    with pytest.raises(ProfileError, match="unknown parameter"):
        apply_overrides(prof, ["epochs=3"])
    with pytest.raises(ProfileError, match="expected int"):
        apply_overrides(prof, ["seed=abc"])
    with pytest.raises(ProfileError, match="expected bool"):
        apply_overrides(prof, ["fail=3"])
    with pytest.raises(ProfileError, match="key=value"):
        apply_overrides(prof, ["seed"])
    assert apply_overrides(prof, ["seed=7", "01_a.n=4"])["common"]["seed"] == 7
    assert prof["common"]["seed"] == 3  # the loaded profile is not mutated


def test_profile_section_key_not_declared_by_notebook(mini_book):
    (mini_book / "profiles/tiny.yml").write_text(yaml.safe_dump({"common": {}, "notebooks": {"01_a": {"lr": 0.1}}}))
    with pytest.raises(ProfileError, match="does not declare"):
        _run(mini_book)


def test_repository_profiles_match_notebook_parameters():
    """Every profile's keys are declared by the notebooks they go to (so --set on them takes effect)."""
    for name in ("smoke", "laptop", "standard", "paper"):
        prof = load_profile(name)
        for stem in pipeline.toc_chapters(REPO):
            declared = pipeline.declared_parameters(REPO / "notebooks" / f"{stem}.ipynb")
            assert {"profile", "seed", "run_dir"} <= declared, stem
            assert not set(prof["notebooks"].get(stem, {})) - declared, (name, stem)


def test_cli_exit_status_and_message():
    r = subprocess.run([sys.executable, "-m", "difflung", "run", "--profile", "no-such-profile"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 1 and "unknown profile 'no-such-profile'" in r.stderr
    r = subprocess.run([sys.executable, "-m", "difflung", "run", "--set", "no_such_key=1"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 1 and "unknown parameter" in r.stderr


def test_smoke_banner_names_classes_that_lost_their_signature(tmp_path):
    import json

    assert pipeline.banner_text("laptop") is None
    assert "checks that the pipeline runs" in pipeline.banner_text("smoke")
    d = tmp_path / "01_data_preparation"
    d.mkdir()
    (d / "hu_signature.json").write_text(json.dumps({"classes": {
        "emphysema": {"measurable": False, "reason": "at 32 px: lost"}, "ggo": {"measurable": True, "reason": ""}}}))
    text = pipeline.banner_text("smoke", tmp_path)
    assert "emphysema loses its HU signature" in text and "ggo" not in text
