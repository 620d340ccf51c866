"""Library helpers the chapters use to turn scored rows into tables: patient-level intervals of seed-averaged
slices, paired scores, interval cells, and the criteria's page texts."""
import math

import numpy as np
import pandas as pd
import pytest

from difflung.chapters import criteria_tables
from difflung.judging import criteria, scoring, stats
from difflung.plots import interval


def _rows():
    """Two models, 2 sampling seeds, 6 slices of 3 patients; model b = a - 1 on every pair."""
    rng = np.random.default_rng(0)
    out = []
    for seed in (0, 1):
        for sl in range(6):
            a = 20 + sl + rng.normal()
            for model, v in (("a", a), ("b", a - 1)):
                out.append({"model": model, "train_seed": 0, "condition": "full", "seed": seed, "slice": sl,
                            "patient": f"p{sl // 2}", "metric": "psnr", "class": "all", "value": v})
    return pd.DataFrame(out)[list(scoring.SCHEMA)]


def test_slice_intervals_average_seeds_then_take_patients_as_the_unit():
    from scipy import stats as sps

    rows = _rows()
    s = stats.slice_intervals(rows, ["model"]).set_index("model")
    assert s.loc["a", "patients"] == 3 and s.loc["a", "slices"] == 6
    a = rows[rows.model == "a"]
    per_slice = a.groupby("slice")["value"].mean()
    pm = per_slice.groupby(per_slice.index // 2).mean()  # 2 slices per patient: the t-interval of patient means
    assert s.loc["a", "mean"] == pytest.approx(per_slice.mean())
    assert (s.loc["a", "lo"], s.loc["a", "hi"]) == pytest.approx(sps.t.interval(0.95, 2, pm.mean(), sps.sem(pm)))
    assert s.loc["a", "lo"] < s.loc["a", "mean"] < s.loc["a", "hi"]


def test_paired_aligns_seed_and_slice_for_compare_slices():
    rows = _rows()
    p = scoring.paired(rows, "a", "b", "psnr")
    assert len(p) == 12 and np.allclose(p["a"] - p["b"], 1.0)
    c = stats.compare_slices(p["a"], p["b"], p["slice"], p["patient"], claim="a > b",
                             generator=np.random.default_rng(0))
    assert c.estimate == pytest.approx(1.0) and c.n == 3 and c.unit == "test patients"
    assert scoring.paired(rows, "a", "missing", "psnr").empty


def test_interval_cell():
    assert interval(3.14159, 2.5, 3.9) == "3.14 [2.50, 3.90]"
    assert interval(0.5, math.nan, math.nan) == "0.500"


def _result(met):
    t = pd.DataFrame({"criterion": ["judge Dice ratio, lung", "slices with air within 30 HU"],
                      "value": [0.9, 0.5], "threshold": [">= 0.8", ">= 0.95"], "met": met})
    return {"table": t, "converged": all(met), "memorisation": {"ratio": 1.1, "share_flagged": 0.0}}


def test_criteria_page_texts():
    good, bad = _result([True, True]), _result([True, False])
    assert criteria_tables.sentence("M", good) == "M met all 2 convergence criteria."
    assert "1 of 2 missed: slices with air within 30 HU" in criteria_tables.sentence("M", bad)
    lines = criteria_tables.cannot_show({"lung": (True, ""), "emphysema": (False, "judge Dice 0.1 < floor 0.3")},
                                       {"good": good, "bad": bad}, {"bad": "Bad model"})
    assert lines == ["Faithfulness of emphysema: not measurable: judge Dice 0.1 < floor 0.3.",
                     "Bad model at its best: it missed 1 of 2 convergence criteria (its comparisons are judged "
                     "anyway, with this note)."]
    w = criteria_tables.wide_table({"good": good, "bad": bad})
    assert w.loc["slices with air within 30 HU", "bad"] == "0.500 (missed)"
    assert w.loc["converged"].tolist() == ["all met", "yes", "no"]
    assert criteria.validity(["lung"], {"lung": (True, "")}, {"good": True, "bad": False}, ["good", "bad"]) == {
        "converged": False, "reason": "bad did not meet the convergence criteria"}


def test_results_at_a_glance_marks_verdicts_and_says_why():
    import math

    import pandas as pd

    from difflung.chapters import results as r

    claims = pd.DataFrame({
        "family": ["poster", "poster", "poster", "controls"],
        "claim": ["a > b", "c > d", "e > f", "x > y"], "reported": [1.0, 0.5, math.nan, math.nan],
        "estimate": [2.0, 0.1, 0.3, 0.2], "lo": [1.5, -0.2, 0.1, 0.1], "hi": [2.5, 0.4, 0.5, 0.3],
        "verdict": ["reproduced", "inconclusive", "not measurable: judge below its floor", "reproduced"],
        "magnitude": ["larger than reported", "as reported", "", ""]})
    t = r.table_at_a_glance(claims)
    assert list(t.index) == ["a > b", "c > d", "e > f"]  # the poster's family only
    assert t.loc["a > b", "verdict"] == "✔ reproduced" and t.loc["a > b", "why"] == "larger than reported"
    assert t.loc["e > f", "verdict"] == "– not measurable" and t.loc["e > f", "why"] == "judge below its floor"
    assert t.loc["e > f", "ours [95 % interval]"] == "n/a" and t.loc["e > f", "reported"] == "not reported"
    assert t.loc["a > b", "ours [95 % interval]"] == "2.00 [1.50, 2.50]"
    text, shown = r.glance_source(None, claims, None, "smoke")
    assert shown is claims and "no reference run" in text

    # the full table: reasons and training notes numbered once under it, not repeated down its rows
    claims["unit"], claims["n"], claims["p (Holm)"] = "training seeds", 9, [0.01, 0.4, np.nan, 0.02]
    claims["convergence"] = ["SPADE missed its convergence criteria", "", "SPADE missed its convergence criteria; "
                             "Pix2Pix still improving at 3x its budget", np.nan]
    full, notes = r.table_claims(claims)
    assert list(full.columns) == ["reported", "ours [interval]", "n", "p (Holm)", "verdict", "magnitude", "notes"]
    assert full["notes"].tolist() == ["1", "", "2, 1, 3", ""] and full.loc["e > f", "verdict"] == "not measurable"
    assert full["ours [interval]"].tolist() == ["2.00 [1.50, 2.50]", "0.100 [-0.200, 0.400]", "n/a", "0.200 [0.100, 0.300]"]
    assert notes.endswith("1. SPADE missed its convergence criteria\n2. judge below its floor\n"
                          "3. Pix2Pix still improving at 3x its budget")
    assert r.table_claims(claims.assign(convergence="", verdict="inconclusive"))[1] == ""
