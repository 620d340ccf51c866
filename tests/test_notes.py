"""reference/<profile>/NOTES.md is written from the archived run's files (scripts/write_notes.py), never typed."""
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("write_notes", REPO / "scripts" / "write_notes.py")
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)


def test_committed_notes_are_what_the_archive_gives():
    """Regenerating NOTES.md from reference/laptop/ gives the committed file, byte for byte."""
    path = REPO / "reference" / "laptop" / "NOTES.md"
    committed = path.read_text()
    assert W.notes_text(path.parent, committed) == committed, "python scripts/write_notes.py laptop"
    hand = committed.split(W.HAND_MARKER, 1)[1]
    assert "measured by benchmarks/bench_convergence.py, not part of the archived run" in hand
    r = subprocess.run([sys.executable, "scripts/write_notes.py", "laptop", "--check"], cwd=REPO,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_numbers_follow_the_files(tmp_path):
    folder = tmp_path / "laptop"
    shutil.copytree(REPO / "reference" / "laptop", folder)
    before = (folder / "NOTES.md").read_text()
    assert "| judge Dice ratio, ggo | 0.804 | >= 0.8 | yes |" in before
    assert "| 02_mask_ablation_study | ok | 23.4 min |" in before and "| all chapters | | 52.7 min | |" in before
    assert "| Dice emphysema: DiffLung-UNet > ref-UNet | 0.137 [0.11, 0.168] | 9 training seeds | 0.2 | 0.0117 | " \
           "reproduced |" in before
    crit = json.loads((folder / "03_cbmat_training/criteria.json").read_text())
    ggo = next(c for c in crit["generators"]["difflung"]["criteria"] if c["criterion"] == "judge Dice ratio, ggo")
    ggo.update(value=0.7, met=False)
    crit["generators"]["difflung"]["converged"] = False
    (folder / "03_cbmat_training/criteria.json").write_text(json.dumps(crit))
    prov = json.loads((folder / "provenance.json").read_text())
    prov["notebooks"]["02_mask_ablation_study"]["wall_s"] += 600.0
    (folder / "provenance.json").write_text(json.dumps(prov))
    after = W.notes_text(folder, before)
    assert "| judge Dice ratio, ggo | 0.7 | >= 0.8 | no |" in after
    assert "`difflung`: did NOT meet every criterion." in after
    assert "| 02_mask_ablation_study | ok | 33.4 min |" in after and "| all chapters | | 62.7 min | |" in after
    assert after.split(W.HAND_MARKER, 1)[1] == before.split(W.HAND_MARKER, 1)[1]  # the hand part is kept


def test_missing_file_is_named_and_nothing_written(tmp_path):
    folder = tmp_path / "laptop"
    shutil.copytree(REPO / "reference" / "laptop", folder)
    (folder / "07_results/claims.csv").unlink()
    with pytest.raises(W.NotesError, match="07_results/claims.csv: missing"):
        W.notes_text(folder)
    before = (folder / "NOTES.md").read_bytes()
    assert W.main(["laptop", "--root", str(tmp_path)]) == 1
    assert (folder / "NOTES.md").read_bytes() == before


def test_a_run_in_parts_lists_each_parts_wall_time_and_revision():
    meta = {"profile": "laptop", "chapters": ["01_a", "02_b"], "git_revision": "abc",
            "parts": {"gen": {"chapters": ["01_a"], "wall_s": 600.0, "git_revision": ["a" * 40]},
                      "seg": {"chapters": ["02_b"], "wall_s": 5400.0, "git_revision": ["a" * 40]}},
            "notes": {"seg": "resumed once"}}
    prov = {"notebooks": {"01_a": {"wall_s": 600.0, "status": "ok"}, "02_b": {"wall_s": 5400.0, "status": "ok"}}}
    lines = W._run_section(meta, prov)
    assert "| gen | 01_a | 10.0 min | aaaaaaaaaaaa |  |" in lines
    assert "| seg | 02_b | 90.0 min | aaaaaaaaaaaa | resumed once |" in lines
    meta["parts"]["pre"] = {"chapters": ["02_b"], "wall_s": 60.0, "git_revision": ["a" * 40],
                            "first_pass": {"n_seeds": 1, "min_seeds": 1}}
    assert "| pre | 02_b (first pass: n_seeds 1, min_seeds 1) | 60 s | aaaaaaaaaaaa |  |" in W._run_section(meta, prov)


def test_chapter_4_training_and_realism_per_seed_come_from_the_archive(tmp_path):
    folder = tmp_path / "laptop"
    shutil.copytree(REPO / "reference" / "laptop", folder)
    ch4 = folder / "04_baseline_comparison"
    (ch4 / "training_plateau.json").write_text(json.dumps({
        "rule": "the rule", "score": "the score", "budget": {"steps": 4000, "batch_size": 8, "max_budgets": 3},
        "curves": {"spade": {"0": {"plateaued": True, "budgets": 1}, "1": {"plateaued": False, "budgets": 3}}}}))
    (ch4 / "training_curves.csv").write_text("model,seed,phase,step,images,score,se,patients\n"
                                             "spade,0,1,4000,32000,0.61,0.02,9\nspade,1,1,4000,32000,0.4,0.03,9\n"
                                             "spade,1,3,12000,96000,0.5,0.01,9\n")
    (ch4 / "training_cpu.csv").write_text("model,seed,step,cpu_s,wall_s,cpu_min\nspade,0,4000,60,60,4\n"
                                          "spade,1,4000,60,60,4\nspade,1,12000,120,120,30\n")
    text = W.notes_text(folder, (folder / "NOTES.md").read_text())
    assert "| SPADE | 0 | 1 | 4000 | 0.61 (0.02) | 4 | plateaued at the budget |" in text
    assert "| SPADE | 1 | 3 | 12000 | 0.5 (0.01) | 30 | still improving at 3x budget |" in text
    assert "a budget is 4000 steps of batch 8, at most 3 budgets; rule: the rule; score: the score" in " ".join(text.split())
    realism = text.split("## Chapter 4: realism per generator and training seed", 1)[1].split("## Claims", 1)[0]
    assert "| model | training seed | judge Dice ratio, airway | judge Dice ratio, body |" in realism
    assert "| SPADE | all 3 |" in realism and realism.count("| Diff-Lung (CBMAT) |") == 4  # 3 seeds and pooled
