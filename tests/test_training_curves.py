"""The plateau rule and training to a plateau: every generator kind scored on validation during training."""
import json

import numpy as np
import pandas as pd
import pytest

from difflung.generators import diffusion_config, gan_config
from difflung.judging import plateau
from difflung.judging.plateau import Score
from difflung.training_curves import CURVE_FILE, CurveJob, JudgeSpec, _stops, phase_folder, train_curve


def S(m, se=0.01):
    return Score(m, se, 5, ("lung",))


def test_plateau_rule_compares_the_last_evaluation_with_the_best_earlier_one():
    assert not plateau.plateaued([S(0.5)])  # one evaluation cannot plateau
    assert not plateau.plateaued([S(0.5), S(0.6)])  # better by more than its standard error
    assert plateau.plateaued([S(0.5), S(0.505)])  # better by less than its standard error
    assert plateau.plateaued([S(0.7), S(0.5), S(0.69)])  # a dip then back below the best: plateaued
    assert not plateau.plateaued([S(0.7), S(0.5), S(0.75)])
    assert not plateau.plateaued([S(0.5), S(0.6, se=float("nan"))])  # one patient: no error, any gain counts
    assert plateau.status(True, 1, 3) == "plateaued at the budget"
    assert plateau.status(True, 2, 3) == "plateaued at 2x budget"
    assert plateau.status(False, 3, 3) == "still improving at 3x budget"


def test_validation_score_is_the_patient_mean_of_per_class_ratios():
    rows = []
    for model, vals in (("real", {("a", "lung"): 0.8, ("b", "lung"): 0.8, ("a", "airway"): 0.5, ("b", "airway"): 0.5}),
                        ("m", {("a", "lung"): 0.4, ("b", "lung"): 0.8, ("a", "airway"): 0.5, ("b", "airway"): 0.25})):
        for (patient, cls), v in vals.items():
            rows.append({"model": model, "train_seed": 0 if model == "m" else -1, "condition": "full", "seed": 0,
                         "slice": 0, "patient": patient, "metric": "dice", "class": cls, "value": v})

    class Scored:
        pass
    sc = Scored()
    sc.rows = pd.DataFrame(rows)
    s = plateau.validation_score(sc, "m", {"lung": (True, ""), "airway": (True, ""), "ggo": (False, "floor")})
    # patient a: (0.4/0.8 + 0.5/0.5) / 2 = 0.75; patient b: (0.8/0.8 + 0.25/0.5) / 2 = 0.75
    assert s.patients == 2 and s.mean == pytest.approx(0.75) and s.se == pytest.approx(0.0)
    assert set(s.classes) == {"lung", "airway"}


def test_phase_stops_are_even_and_end_at_the_budget():
    assert _stops(8, 4) == [2, 4, 6, 8]
    assert _stops(10, 4) == [2, 4, 6, 10]
    assert _stops(3, 4) == [1, 2, 3] and _stops(1, 4) == [1]
    with pytest.raises(ValueError):
        _stops(3, 0)


def _job(key, cfg, folder, toy_ds, tmp_path, **kw):
    return CurveJob(key=key, config=cfg, folder=str(folder), dataset=str(toy_ds.root),
                    judge=JudgeSpec(str(tmp_path / "judge"), steps=4), n_val=4, evals=2, sampler="ddim",
                    sampler_steps=2, **kw)


@pytest.mark.parametrize("key", ["difflung", "pix2pix"])
def test_every_kind_trains_phase_by_phase_and_reads_its_curve_back(toy_ds, tmp_path, key):
    cfg = (diffusion_config(key, preset="tiny", steps=4, batch_size=2, seed=0, warmup=1) if key == "difflung"
           else gan_config(key, "T", steps=4, batch_size=2, seed=0))
    job = _job(key, cfg, tmp_path / "models" / key, toy_ds, tmp_path, max_phases=2)
    r = train_curve(job)
    assert [p["step"] for p in r.points][:2] == [2, 4] and r.phases in (1, 2)
    assert all(p["phase"] == 1 for p in r.points[:2]) and all(np.isfinite(p["score"]) for p in r.points)
    assert r.points[-1]["cpu_min"] >= r.points[0]["cpu_min"] > 0
    if r.phases == 2:  # the warm restart starts from phase 1's weights, in its own folder
        assert phase_folder(job, 2).name == f"{key}-phase2" and r.folder == phase_folder(job, 2)
        assert [p["step"] for p in r.points[2:]] == [6, 8]
    assert r.plateaued == plateau.plateaued([S(p["score"], p["se"]) for p in r.points])
    again = train_curve(_job(key, cfg, tmp_path / "models" / key, toy_ds, tmp_path, max_phases=2))
    assert [(p["step"], p["score"], p["cpu_s"]) for p in again.points] == \
        [(p["step"], p["score"], p["cpu_s"]) for p in r.points]  # read back, not retrained
    assert json.loads((tmp_path / "models" / key / CURVE_FILE).read_text())["rule"] == plateau.RULE


def test_a_curve_reads_the_validation_split_only(toy_ds, tmp_path, monkeypatch):
    from difflung.data.dataset import Dataset

    real_split = Dataset.split
    seen = []
    monkeypatch.setattr(Dataset, "split", lambda self, name: (seen.append(name), real_split(self, name))[1])
    cfg = diffusion_config("difflung", preset="tiny", steps=2, batch_size=2, seed=0, warmup=1)
    train_curve(_job("difflung", cfg, tmp_path / "m", toy_ds, tmp_path, max_phases=1))
    assert "test" not in seen and "val" in seen


@pytest.mark.parametrize("key", ["difflung", "spade"])
def test_a_generator_still_improving_trains_on_from_its_weights_up_to_the_cap(toy_ds, tmp_path, key, monkeypatch):
    monkeypatch.setattr(plateau, "plateaued", lambda scores: False)  # always still improving
    cfg = (diffusion_config(key, preset="tiny", steps=4, batch_size=2, seed=1, warmup=1) if key == "difflung"
           else gan_config(key, "T", steps=4, batch_size=2, seed=1))
    job = _job(key, cfg, tmp_path / "m" / key, toy_ds, tmp_path, max_phases=3, later=str(tmp_path / "later" / key))
    r = train_curve(job)
    assert r.phases == 3 and not r.plateaued and [p["step"] for p in r.points] == [2, 4, 6, 8, 10, 12]
    assert r.folder == tmp_path / "later" / f"{key}-phase3"
    meta = (r.folder / "difflung_config.json") if key == "difflung" else (r.folder / "generator" / "config.json")
    stored = json.loads(meta.read_text())
    train = stored["train_config"] if key == "difflung" else stored["train"]
    assert train["init_from"] == str(tmp_path / "later" / f"{key}-phase2")
    assert isinstance(stored["run_key"]["config"]["init_from"], dict)  # keyed by the parent's key, not its path
    assert plateau.status(r.plateaued, r.phases, 3) == "still improving at 3x budget"


def test_a_stale_model_is_never_scored_for_another_config(toy_ds, tmp_path):
    a = diffusion_config("difflung", preset="tiny", steps=2, batch_size=2, seed=0, warmup=1)
    b = diffusion_config("difflung", preset="tiny", steps=2, batch_size=2, seed=3, warmup=1)
    ra = train_curve(_job("difflung", a, tmp_path / "m", toy_ds, tmp_path, max_phases=1))
    rb = train_curve(_job("difflung", b, tmp_path / "m", toy_ds, tmp_path, max_phases=1))  # own folder: retrained
    assert json.loads((tmp_path / "m" / "difflung_config.json").read_text())["seed"] == 3
    assert [p["seed"] for p in rb.points] == [3, 3] and [p["seed"] for p in ra.points] == [0, 0]
    # another chapter's model of another config is left alone: the job trains its own copy in `later`
    other = train_curve(_job("difflung", a, tmp_path / "m", toy_ds, tmp_path, max_phases=1,
                             later=str(tmp_path / "own")))
    assert other.folder == tmp_path / "own" and (tmp_path / "m" / "difflung_config.json").is_file()
    assert json.loads((tmp_path / "m" / "difflung_config.json").read_text())["seed"] == 3


def test_plateau_rule_pairs_evaluations_by_patient():
    # every patient gains 0.02: far below the spread between patients, yet a real, steady gain
    before = Score(0.5, 0.1, 3, ("lung",), per_patient=(("a", 0.3), ("b", 0.5), ("c", 0.7)))
    after = Score(0.52, 0.1, 3, ("lung",), per_patient=(("a", 0.32), ("b", 0.52), ("c", 0.72 + 1e-3)))
    assert not plateau.plateaued([before, after])  # unpaired, 0.02 < 0.1 would have called it a plateau
    mixed = Score(0.5, 0.1, 3, ("lung",), per_patient=(("a", 0.35), ("b", 0.45), ("c", 0.7)))
    assert plateau.plateaued([before, mixed])  # gains and losses that cancel: no gain
