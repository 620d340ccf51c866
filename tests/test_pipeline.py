"""The papermill pipeline: parameters from profiles, skip-if-unchanged, failure path, provenance."""
import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from difflung.run import pipeline
from difflung.run.profiles import ProfileError, apply_overrides, load_profile, notebook_parameters

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


def test_a_part_runs_its_chapters_after_the_stale_ones_before_it_and_records_its_time(mini_book):
    prof = mini_book / "profiles" / "tiny.yml"
    prof.write_text(yaml.safe_dump({**yaml.safe_load(prof.read_text()),
                                    "parts": {"data": ["01_a"], "use": ["02_b"]}}))
    prov, logs = _run(mini_book, part="use")  # a fresh clone: 01_a is missing, so it runs first
    assert any(line.startswith("[ note ] 01_a") for line in logs) and set(prov["parts"]) == {"use"}
    assert prov["parts"]["use"]["chapters"] == ["02_b"]
    assert prov["parts"]["use"]["wall_s"] == prov["notebooks"]["02_b"]["wall_s"]
    _, logs = _run(mini_book, part="use", force=True)  # 01_a is current: kept, 02_b re-run
    assert logs[0].startswith("[ same ] 01_a") and logs[1].startswith("[ run  ] 02_b"), logs
    with pytest.raises(ProfileError, match="no part 'gen'"):
        _run(mini_book, part="gen")
    with pytest.raises(pipeline.PipelineError, match="choose one"):
        _run(mini_book, part="use", only=["02_b"])
    prof.write_text(yaml.safe_dump({**yaml.safe_load(prof.read_text()), "parts": {"a": ["01_a"], "b": ["01_a"]}}))
    with pytest.raises(ProfileError, match="twice"):
        _run(mini_book, part="a")


def test_a_first_pass_part_runs_its_chapter_with_its_settings_then_the_chapters_part_runs_it_whole(mini_book):
    prof = mini_book / "profiles" / "tiny.yml"
    prof.write_text(yaml.safe_dump({**yaml.safe_load(prof.read_text()), "parts": {
        "data": ["01_a"], "first": {"chapters": ["01_a"], "set": {"n": 7}}, "use": ["02_b"]}}))
    prov, logs = _run(mini_book, part="first")
    assert (mini_book / "runs/tiny/01_a/out.txt").read_text() == "73"  # n = 7, seed 3
    assert prov["parts"]["first"]["first_pass"] == {"n": 7} and prov["parts"]["first"]["chapters"] == ["01_a"]
    prov, logs = _run(mini_book, part="data")  # the chapter's own part: other parameters, so it runs again, whole
    assert logs[0].startswith("[ run  ] 01_a") and (mini_book / "runs/tiny/01_a/out.txt").read_text() == "23"
    assert "first_pass" not in prov["parts"]["data"] and set(prov["parts"]) == {"first", "data"}
    prof.write_text(yaml.safe_dump({**yaml.safe_load(prof.read_text()), "parts": {
        "first": {"chapters": ["01_a"], "set": {"m": 1}}}}))
    with pytest.raises(ProfileError, match="part 'first' sets \\['m'\\], which notebooks/01_a.ipynb does not declare"):
        _run(mini_book, part="first")
    for bad in ({"first": {"chapters": ["01_a"], "sets": {"n": 1}}}, {"first": {"chapters": [], "set": {}}}):
        prof.write_text(yaml.safe_dump({**yaml.safe_load(prof.read_text()), "parts": bad}))
        with pytest.raises(ProfileError, match="first pass"):
            _run(mini_book, part="first")
    prof.write_text(yaml.safe_dump({**yaml.safe_load(prof.read_text()), "parts": {
        "a": {"chapters": ["01_a"], "set": {"n": 1}}, "b": {"chapters": ["01_a"], "set": {"n": 2}}}}))
    with pytest.raises(ProfileError, match="twice"):  # one first pass per chapter
        _run(mini_book, part="a")


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


def _resolved(name: str, overrides: list[str] | None = None) -> dict:
    """Every chapter's parameters as `python -m difflung run --profile NAME` injects them."""
    prof = apply_overrides(load_profile(name), overrides or [])
    return {stem: notebook_parameters(prof, stem, pipeline.declared_parameters(REPO / "notebooks" / f"{stem}.ipynb"),
                                      f"runs/{name}") for stem in pipeline.toc_chapters(REPO)}


def test_flat_profiles_resolve_to_the_parameters_of_the_nested_ones():
    """Moving shared settings into `common.diffusion` / `common.sampling` changed no notebook's parameters.

    tests/data/resolved_profiles.json was written by the pre-move code (every notebook section spelling out
    preset, steps, lr, sampler, ...; chapters 4 and 6 saying `train_steps`, renamed `steps`); parameters added
    since (chapter 5's `dose_shares`) are added to it by hand."""
    snapshot = json.loads((REPO / "tests/data/resolved_profiles.json").read_text())
    assert sorted(snapshot) == ["laptop", "paper", "smoke", "standard"]
    for name, want in snapshot.items():
        got = _resolved(name)
        # JSON text, not dict equality: 5 and 5.0 differ (papermill injects the type)
        assert json.dumps(got, sort_keys=True, indent=1) == json.dumps(want, sort_keys=True, indent=1), name


def test_shared_settings_are_written_once():
    for name in ("smoke", "laptop", "standard", "paper"):
        prof = load_profile(name)
        for key in ("preset", "steps", "batch_size", "lr", "warmup", "sampler", "sampler_steps", "sample_seeds",
                    "n_test"):
            group = "diffusion" if key in ("preset", "steps", "batch_size", "lr", "warmup") else "sampling"
            assert key in prof["common"][group], (name, key)
            for stem, section in prof["notebooks"].items():  # a section writes a shared key only to differ
                assert section.get(key, object()) != prof["common"][group][key], (name, stem, key)
        assert not any("train_steps" in s for s in prof["notebooks"].values()), name


def test_overrides_of_shared_settings():
    base = _resolved("smoke")
    # a bare key is set everywhere the profile writes it: common, and chapter 6's and chapter 2's overrides
    got = _resolved("smoke", ["steps=7"])
    assert {s: p["steps"] for s, p in got.items() if "steps" in p} == {
        "02_mask_ablation_study": 7, "03_cbmat_training": 7, "04_baseline_comparison": 7, "06_lesion_insertion": 7}
    # the group's value only: sections that override keep their own
    got = _resolved("smoke", ["diffusion.steps=7"])
    assert {s: p["steps"] for s, p in got.items() if "steps" in p} == {
        "02_mask_ablation_study": 200, "03_cbmat_training": 7, "04_baseline_comparison": 7, "06_lesion_insertion": 60}
    # one notebook: a common key becomes its override; the others keep the common value
    got = _resolved("smoke", ["03_cbmat_training.sampler_steps=3"])
    assert [got[s]["sampler_steps"] for s in ("02_mask_ablation_study", "03_cbmat_training",
                                               "05_segmentation_augmentation")] == [10, 3, 10]
    assert got["03_cbmat_training"]["lr"] == base["03_cbmat_training"]["lr"] == 0.002
    got = _resolved("smoke", ["lr=1"])  # a float keeps its type
    assert got["02_mask_ablation_study"]["lr"] == 1.0 and isinstance(got["02_mask_ablation_study"]["lr"], float)
    prof = load_profile("smoke")
    for bad, match in (["diffusion.sampler=ddim", "common.diffusion has no parameter 'sampler'"],
                       ["sampling.nope=1", "common.sampling has no parameter 'nope'"],
                       ["03_cbmat_training.nope=1", "notebook '03_cbmat_training' has no parameter 'nope'"],
                       ["train_steps=5", "unknown parameter"],
                       ["steps=many", "expected int"]):
        with pytest.raises(ProfileError, match=match):
            apply_overrides(prof, [bad])
    with pytest.raises(ProfileError, match="does not declare"):  # chapter 4 has no lr
        _resolved("smoke", ["04_baseline_comparison.lr=0.1"])


@pytest.mark.parametrize("common, match", [
    ({"diffusion": {"steps": 5, "stesp": 6}}, r"common.diffusion has unknown keys \['stesp'\]"),
    ({"sampling": {"steps": 5}}, r"common.sampling has unknown keys \['steps'\]"),
    ({"diffusion": [1, 2]}, "common.diffusion must be a mapping"),
    ({"steps": 3, "diffusion": {"steps": 5}}, "common.steps belongs in common.diffusion"),
    ({"seed": 0, "n_test": 5}, "common.n_test belongs in common.sampling"),
    ([1], "`common` must be a mapping"),
])
def test_malformed_common_is_refused(tmp_path, common, match):
    (tmp_path / "bad.yml").write_text(yaml.safe_dump({"common": common, "notebooks": {}}))
    with pytest.raises(ProfileError, match=match) as e:
        load_profile("bad", tmp_path)
    assert "bad.yml" in str(e.value)


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
