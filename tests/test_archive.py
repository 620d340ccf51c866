"""The reference-run archive: what it copies, what it refuses, and that it loads back with provenance."""
import json

import pytest

from difflung.run import archive
from difflung.core.metrics_csv import write_metrics

CHAPTERS = ["01_a", "02_b"]


def _run(tmp_path, status="ok"):
    run = tmp_path / "runs" / "laptop"
    for i, stem in enumerate(CHAPTERS):
        d = run / stem
        write_metrics(d, [{"model": "m", "metric": "psnr", "class": "all", "seed": 0, "value": 20.0 + i}])
        (d / "cost.json").write_text(json.dumps({"wall_s": 12.5}))
        (d / "figure.png").write_bytes(b"\x89PNG")  # figures stay behind
        (d / "model").mkdir()
        (d / "model" / "config.json").write_text("{}")  # so do models, even their JSON
    prov = {"profile": "laptop", "chapters": CHAPTERS, "total_wall_s": 99.0,
            "notebooks": {s: {"status": status, "git_revision": "unknown", "started": f"2026-12-0{i + 1}T00:00:00Z",
                              "wall_s": 60.0 * (i + 1)}
                          for i, s in enumerate(CHAPTERS)}}
    (run / "provenance.json").write_text(json.dumps(prov))
    return tmp_path / "runs"


def test_archive_copies_numbers_only_and_loads_with_provenance(tmp_path):
    runs = _run(tmp_path)
    dest = archive.archive_run("laptop", runs_dir=runs, out_dir=tmp_path / "reference")
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert files == ["01_a/cost.json", "01_a/metrics.csv", "02_b/cost.json", "02_b/metrics.csv", "archive.json",
                     "provenance.json"]
    ref = archive.load_reference(tmp_path / "reference")
    assert ref.meta["profile"] == "laptop" and ref.meta["finished"] == "2026-12-02T00:00:00Z"
    assert ref.meta["total_wall_s"] == 180.0  # the chapters' wall times, not the last invocation's (99 s)
    assert ref.provenance["notebooks"]["02_b"]["status"] == "ok"
    assert ref.metrics["02_b"]["value"].tolist() == [21.0]
    assert ref.json("01_a", "cost.json") == {"wall_s": 12.5}
    assert ref.code_changed is None  # revision "unknown": cannot tell
    assert "laptop run of 2026-12-02" in ref.label
    assert "note" not in ref.meta
    archive.archive_run("laptop", runs_dir=runs, out_dir=tmp_path / "reference", note="resumed")
    assert archive.load_reference(tmp_path / "reference").meta["note"] == "resumed"


def test_parts_are_archived_one_by_one_into_one_archive(tmp_path):
    runs = _run(tmp_path)
    prov_path = runs / "laptop" / "provenance.json"
    prov = json.loads(prov_path.read_text())
    with pytest.raises(archive.ArchiveError, match="no part 'gen' was run"):
        archive.archive_run("laptop", runs_dir=runs, out_dir=tmp_path / "reference", part="gen")
    prov["parts"] = {"gen": {"chapters": ["01_a"], "wall_s": 60.0, "started": "x", "git_revision": ["unknown"]}}
    prov["notebooks"]["02_b"]["status"] = "failed"  # the second part has not run yet
    prov_path.write_text(json.dumps(prov))
    dest = archive.archive_run("laptop", runs_dir=runs, out_dir=tmp_path / "reference", part="gen", note="part 1")
    meta = json.loads((dest / "archive.json").read_text())
    assert meta["chapters"] == ["01_a"] and meta["files"] == ["01_a/cost.json", "01_a/metrics.csv", "provenance.json"]
    assert meta["parts"]["gen"]["wall_s"] == 60.0 and meta["notes"] == {"gen": "part 1"}
    # the second part, run later: its chapter joins the archive, the first part's files and provenance stay
    (runs / "laptop" / "01_a" / "metrics.csv").unlink()
    prov["notebooks"]["02_b"]["status"] = "ok"
    prov["notebooks"]["01_a"]["wall_s"] = 1.0  # a later invocation's record of 01_a is not the archived one
    prov["parts"] = {"seg": {"chapters": ["02_b"], "wall_s": 120.0, "started": "y", "git_revision": ["unknown"]}}
    prov_path.write_text(json.dumps(prov))
    dest = archive.archive_run("laptop", runs_dir=runs, out_dir=tmp_path / "reference", part="seg")
    meta = json.loads((dest / "archive.json").read_text())
    assert meta["chapters"] == CHAPTERS and set(meta["parts"]) == {"gen", "seg"}
    assert (dest / "01_a" / "metrics.csv").is_file() and (dest / "02_b" / "metrics.csv").is_file()
    assert meta["total_wall_s"] == 180.0 and meta["notes"] == {"gen": "part 1"}
    ref = archive.load_reference(tmp_path / "reference")
    assert ref.provenance["notebooks"]["01_a"]["wall_s"] == 60.0 and set(ref.provenance["parts"]) == {"gen", "seg"}
    # a first pass (a part that ran a chapter with fewer seeds) records its time, not its chapter's files
    prov["parts"] = {"pre": {"chapters": ["02_b"], "wall_s": 30.0, "started": "w", "git_revision": ["unknown"],
                             "first_pass": {"n_seeds": 1}}}
    prov_path.write_text(json.dumps(prov))
    before = sorted(p.name for p in (dest / "02_b").iterdir())
    dest = archive.archive_run("laptop", runs_dir=runs, out_dir=tmp_path / "reference", part="pre")
    meta = json.loads((dest / "archive.json").read_text())
    assert meta["chapters"] == CHAPTERS and set(meta["parts"]) == {"gen", "seg", "pre"}
    assert sorted(p.name for p in (dest / "02_b").iterdir()) == before and meta["total_wall_s"] == 180.0
    prov["parts"] = {"seg": {"chapters": ["02_b"], "wall_s": 120.0, "started": "y", "git_revision": ["unknown"]}}
    # a part run at another revision does not join the archive: the parts of a run share one revision
    prov["notebooks"]["02_b"]["git_revision"] = "abc123"
    prov_path.write_text(json.dumps(prov))
    with pytest.raises(archive.ArchiveError, match="holds 01_a of revision unknown, and part 'seg' was run at abc123"):
        archive.archive_run("laptop", runs_dir=runs, out_dir=tmp_path / "reference", part="seg")
    assert json.loads((dest / "archive.json").read_text()) == meta  # unchanged


def test_unfinished_or_oversized_runs_are_refused_and_nothing_written(tmp_path, monkeypatch):
    runs = _run(tmp_path, status="failed")
    with pytest.raises(archive.ArchiveError, match="not finished"):
        archive.archive_run("laptop", runs_dir=runs, out_dir=tmp_path / "reference")
    assert not (tmp_path / "reference" / "laptop").exists()
    runs = _run(tmp_path / "b")
    monkeypatch.setattr(archive, "MAX_BYTES", 100)
    with pytest.raises(archive.ArchiveError, match="limit"):
        archive.archive_run("laptop", runs_dir=runs, out_dir=tmp_path / "reference")
    with pytest.raises(archive.ArchiveError, match="provenance.json: missing"):
        archive.archive_run("nothere", runs_dir=runs, out_dir=tmp_path / "reference")


def test_archive_without_provenance_is_refused_on_load(tmp_path):
    (tmp_path / "reference" / "laptop").mkdir(parents=True)
    (tmp_path / "reference" / "laptop" / "archive.json").write_text("{}")
    with pytest.raises(archive.ArchiveError, match="provenance.json: missing"):
        archive.load_reference(tmp_path / "reference")
    assert archive.load_reference(tmp_path / "empty") is None


def test_code_changed_since_reads_git_history():
    assert archive.code_changed_since("unknown") is None
    assert archive.code_changed_since("HEAD") is False  # nothing after HEAD itself
    assert archive.code_changed_since("HEAD~40") is True  # difflung/ changed in the last 40 commits
    assert archive.code_changed_since(["HEAD", "HEAD"]) is False  # a resumed run: one revision per chapter
    assert archive.code_changed_since(["HEAD", "HEAD~40"]) is True  # changed after the older of its revisions
    assert archive.code_changed_since(["HEAD", "unknown"]) is None
    files = archive.changed_files_since("HEAD~40")
    assert files and all(f.startswith("difflung/") for f in files) and files == sorted(set(files))
    assert archive.changed_files_since("HEAD") == [] and archive.changed_files_since("unknown") is None
    ref = archive.Reference(None, {"profile": "laptop", "finished": "2026-12-02T10:00:00Z",
                                   "git_revision": ["f7a03061dfa5777ec", "a0a1486abcdef0123"]}, {})
    assert ref.label == "laptop run of 2026-12-02, git f7a03061dfa5 and a0a1486abcde"
    ref.meta["git_revision"] = ["f7a03061dfa5777ec", "f7a03061dfa5777ec+dirty"]  # uncommitted edits show
    assert ref.label == "laptop run of 2026-12-02, git f7a03061dfa5 and f7a03061dfa5+dirty"


def test_results_page_names_the_reference_run_and_its_note(tmp_path):
    from difflung.chapters.results import reference_markdown

    archive.archive_run("laptop", runs_dir=_run(tmp_path), out_dir=tmp_path / "reference",
                        note="resumed from an earlier invocation; its trained models were reused")
    text = reference_markdown(archive.load_reference(tmp_path / "reference"))
    assert "laptop run of 2026-12-02" in text and "2 chapters, 3 min of wall time" in text  # 60 + 120 s
    assert text.endswith("its trained models were reused.")
    assert "unknown" in text  # revision "unknown": whether the code changed since cannot be told
    assert "No reference run" in reference_markdown(None)
    ref = archive.load_reference(tmp_path / "reference")
    ref.code_changed, ref.changed_files = True, ["difflung/a.py", "difflung/b.py"]
    assert "has changed since" in reference_markdown(ref) and "Changed since: `difflung/a.py`, `difflung/b.py`." \
        in reference_markdown(ref)


def test_results_page_lists_the_parts_of_a_run_in_the_order_they_ran():
    from difflung.chapters.results import _parts_text

    assert _parts_text({}) == ""
    meta = {"parts": {"baselines": {"chapters": ["04_b"], "wall_s": 6000.0, "started": "2026-12-07T23:00:00Z"},
                      "generators": {"chapters": ["01_a", "02_b", "03_c"], "wall_s": 2580.0,
                                     "started": "2026-12-07T22:13:00Z"}},
            "notes": {"baselines": "beside a benchmark."}}
    assert _parts_text(meta) == (" It ran in 2 parts, each in one sitting: generators (chapters 1, 2, 3, 43 min); "
                                 "baselines (chapter 4, 100 min; beside a benchmark).")
    meta["parts"]["tuning"] = {"chapters": ["04_b"], "wall_s": 3000.0, "started": "2026-12-07T22:50:00Z",
                               "first_pass": {"n_seeds": 1}}
    assert "; tuning (chapter 4, a first pass at fewer settings whose models the chapter's own part reuses, 50 min); " \
           "baselines" in _parts_text(meta)
