"""Tables and sentences about the convergence criteria and measurable classes, for the chapters' pages.

The numbers come from `difflung.judging.criteria` (what is measurable, whether a generator converged) and
`difflung.judging.instruments` (floors); this module only words and lays them out, so judging never imports
`difflung.plots`. Chapters may import it (like `common` and `scope`); it imports no chapter.
"""
from __future__ import annotations

import pandas as pd

from inspect import signature

from difflung import labels as L
from difflung.judging import instruments as I
from difflung.judging.criteria import REAL_FLOOR
from difflung.judging.realism import memorisation
from difflung.plots import sig, summary_cell


def judge_frame(summary: pd.DataFrame, measurable: dict[str, tuple[bool, str]]) -> pd.DataFrame:
    """Per class: the judge's Dice on the real test slices (rows of model "real" in a `stats.slice_intervals`
    summary) as "mean [lo, hi]", its floor, and whether the class is judged ("yes" or "not measurable: reason")."""
    return pd.DataFrame([{"class": c, "judge Dice, real test slices": summary_cell(summary, "real", "dice", c),
                          "floor": I.judge_floor(c), "judged": "yes" if ok else f"not measurable: {why}"}
                         for c, (ok, why) in measurable.items()]).set_index("class")


def dice_frame(summary: pd.DataFrame, measurable: dict[str, tuple[bool, str]], keys, name=str) -> pd.DataFrame:
    """Mask faithfulness: the judge's Dice per class (rows, in label order) and model (columns `name(key)`) as
    "mean [lo, hi]" from a `stats.slice_intervals` summary. A class the judge cannot judge reads "not measurable"
    in every model's cell, its reason in the first column "judged"."""
    rows = []
    for c in [n for n in L.names(range(L.NUM_IDS)) if n in measurable]:
        ok, why = measurable[c]
        rows.append({"class": c, "judged": "yes" if ok else f"not measurable: {why}",
                     **{name(k): summary_cell(summary, k, "dice", c) if ok else "not measurable" for k in keys}})
    return pd.DataFrame(rows, columns=["class", "judged", *map(name, keys)]).set_index("class")


def measurable_table(scored, measurable: dict[str, tuple[bool, str]]) -> pd.DataFrame:
    """Per class scored: the judge's mean Dice on the real test slices, its floor, and measurable or why not."""
    real = scored.rows[(scored.rows.model == "real") & (scored.rows.metric == "dice")]
    dice = real.groupby("class", sort=False)["value"].mean()
    return pd.DataFrame({"judge Dice (real test slices)": dice,
                         "floor": [I.judge_floor(c) for c in dice.index],
                         "measurable": [("yes" if measurable[c][0] else f"not measurable: {measurable[c][1]}")
                                        if c in measurable else "not measurable: absent from the test truth"
                                        for c in dice.index]}).rename_axis("class")


CONTROL_PREFIX = "classifier detects positive control: "
# judge-feature distances (`judging.features`), reported beside the criteria: key -> words
FEATURE_WORDS = {"frechet": "Fréchet distance", "precision": "precision", "recall": "recall", "density": "density",
                 "coverage": "coverage"}


def _value(v) -> str:
    return "no contrast" if v == float("inf") else sig(v)  # W1 over a zero contrast (`instruments.relative_w1`)


def wide_table(results: dict[str, dict], names: dict[str, str] | None = None) -> pd.DataFrame:
    """Criteria of several generators side by side: one row per criterion, its threshold, and per generator
    "value (met)" or "value (missed)" at 3 significant figures; a row says whether each converged. Where `results`
    carry judge-feature distances (`criteria.measure`'s "features"), the Fréchet distance, density and coverage of
    the generated slices follow as reported rows (not criteria)."""
    names = names or {}
    cols = {}
    feats = [k for k in ("frechet", "density", "coverage") if any("features" in r for r in results.values())]
    for m, r in results.items():
        t = r["table"].set_index("criterion")
        cols[names.get(m, m)] = [f"{_value(v)} ({'met' if ok else 'missed'})" for v, ok in zip(t["value"], t["met"])]
        cols[names.get(m, m)].append("yes" if r["converged"] else "no")
        cols[names.get(m, m)] += [sig(r.get("features", {}).get("generated", {}).get(k)) for k in feats]
    first = next(iter(results.values()))["table"]
    index = [*first["criterion"], "converged", *(f"{FEATURE_WORDS[k]}, judge features" for k in feats)]
    return pd.DataFrame({"threshold": [*first["threshold"], "all met", *(["reported"] * len(feats))], **cols},
                        index=pd.Index(index, name="criterion"))


def power_table(result: dict) -> pd.DataFrame:
    """Whether the instruments can see known flaws, for one generator's `criteria.measure` result: per image set
    (the generator's slices, as many real training slices as the floor of the distances, then each positive
    control: the real test slices with a known perturbation), the real-vs-that classifier's held-out accuracy with
    its reading, and the judge-feature distances to the real test slices (Fréchet distance, precision, recall,
    density, coverage; "n/a" without a judge)."""
    t = result["table"].set_index("criterion")
    a = t.loc["real-vs-generated classifier accuracy", "value"]
    sets = [("generated slices", "generated", a,
             "cannot tell (criterion met)" if a <= I.CLASSIFIER_ACCURACY_MAX else "tells apart (criterion missed)")]
    sets += [(f"control: {c}", c, a, "detected" if a > I.CONTROL_ACCURACY_MIN else "missed: the classifier lacks power")
             for c, a in result.get("controls", {}).items()]
    sets.insert(1, (f"{REAL_FLOOR} (floor)", REAL_FLOOR, float("nan"), "not tested (reference for the distances)"))
    rows = []
    for name, key, acc, reading in sets:
        f = result.get("features", {}).get(key, {})
        rows.append({"image set": name, "classifier accuracy": acc, "classifier reading": reading,
                     **{w: f.get(k, float("nan")) for k, w in FEATURE_WORDS.items()}})
    return pd.DataFrame(rows).set_index("image set")


# the share the memorisation check flags, worded with `realism.memorisation`'s own percentile (what `measure` uses)
MEMORISATION_PERCENTILE = signature(memorisation).parameters["percentile"].default
MEMORISATION_FLAGGED = f"generated slices closer than {MEMORISATION_PERCENTILE:g} % of test slices"


def memorisation_table(results: dict[str, dict], names: dict[str, str] | None = None) -> pd.DataFrame:
    """The memorisation check per generator (reported, not a criterion)."""
    names = names or {}
    return pd.DataFrame({names.get(m, m): {
        "median NN distance to training, generated / test": r["memorisation"]["ratio"],
        MEMORISATION_FLAGGED: r["memorisation"]["share_flagged"],
    } for m, r in results.items()}).T.rename_axis("model")


def _missed(result: dict) -> tuple[list[str], list[str]]:
    """(missed generator criteria, positive controls the classifier missed) of a `measure` result."""
    missed = result["table"].loc[~result["table"]["met"], "criterion"].tolist()
    return ([c for c in missed if not c.startswith(CONTROL_PREFIX)],
            [c.removeprefix(CONTROL_PREFIX) for c in missed if c.startswith(CONTROL_PREFIX)])


def sentence(name: str, result: dict) -> str:
    """Whether a generator met its convergence criteria, in one sentence for the page (a positive control the
    classifier missed is named as the instrument's failure, not the generator's)."""
    t = result["table"]
    if result["converged"]:
        return f"{name} met all {len(t)} convergence criteria."
    missed, controls = _missed(result)
    parts = []
    if missed:
        parts.append(f"{len(missed)} of {len(t)} missed: {'; '.join(missed)}")
    if controls:
        parts.append(f"the real-vs-generated classifier missed its positive control ({', '.join(controls)}), so "
                     f"its reading cannot certify convergence")
    return (f"{name} did **not** meet its convergence criteria ({'; '.join(parts)}); its comparisons are still "
            f"judged, with this noted beside each verdict.")


def cannot_show(measurable: dict[str, tuple[bool, str]], results: dict[str, dict],
                names: dict[str, str] | None = None) -> list[str]:
    """"Cannot show" lines for a `scope.Scope`: classes not measurable and generators that did not converge (a
    note: convergence never gates a verdict)."""
    names = names or {}
    out = [f"Faithfulness of {c}: not measurable: {why}." for c, (ok, why) in measurable.items() if not ok]
    for m, r in results.items():
        if not r["converged"]:
            missed, controls = _missed(r)
            why = [f"it missed {len(missed)} of {len(r['table'])} convergence criteria"] if missed else []
            why += [f"the classifier missed its positive control ({', '.join(controls)})"] if controls else []
            out.append(f"{names.get(m, m)} at its best: {'; '.join(why)} (its comparisons are judged anyway, with "
                       f"this note).")
    return out
