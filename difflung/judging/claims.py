"""The poster's claims judged on one run: one function, so every chapter that shows a claim shows the same verdict.

`judge_run(runs_root)` reads the chapters' files of a run and turns each claim of `reported.CLAIMS` into a
`stats.Comparison`, then `stats.judge_claims` applies Holm's correction across all of them and the one verdict
rule. Chapter 5 shows the segmentation rows and the Results chapter all of them; both call this function on the
same files, so they cannot disagree.

Sources, per claim kind:
- image quality (unit: test patient): chapter 4's `metrics.csv` rows of metric psnr/ssim, condition "full", one
  per (generator key, training seed, sampling seed, test slice, patient). Both generators saw the same masks and
  initial noise, so rows pair on (training seed, sampling seed, slice).
- segmentation (unit: training seed): chapter 5's per-seed Dice rows (model = arm, seed = training seed >= 0), on
  the phantom dataset.
Validity: a claim is "not measurable: <reason>" only when an instrument failed or the main model never learned its
masks -- the class is absent from the test truth or lost its HU signature at the run's size (chapter 1's
`hu_signature.json`), the chapter did not run, or Diff-Lung's judge Dice ratio on lung is below
`instruments.DICE_RATIO_MIN` (`main_learned`, chapter 3's record). Whether each generator met its convergence
criteria (`criteria.json` of chapters 3 and 4) is a note beside the verdict, never a gate: a weaker baseline must
stay comparable.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd

from difflung.core import runs
from difflung.judging.criteria import read_criteria
from difflung.judging.instruments import DICE_RATIO_MIN, read_signature
from difflung.core.metrics_csv import read_metrics
from difflung.judging.reported import CLAIMS, CONTROL_CLAIMS, COST_CLAIMS, EXTENSION_CLAIMS, POSTER_NAMES, Claim
from difflung.judging.stats import Comparison, compare_generators, compare_seeds, judge_claims

# synthetic arm -> the generator it paints with
ARM_GENERATOR = {"+difflung": "difflung", "+segguided": "segguided", "+insert": "difflung", "+uniform": "uniform"}


def _metrics(runs_root, stem: str) -> pd.DataFrame | None:
    p = runs.chapter_dir(runs_root, stem) / "metrics.csv"
    return read_metrics(p) if p.is_file() else None


MAIN = "difflung"  # the poster's model: when it never learned its masks, no claim about it can be measured
LUNG_RATIO = "judge Dice ratio, lung"  # its criterion row (`instruments.convergence`)


def _records(runs_root) -> dict:
    """Generator key -> {"converged": bool, "table": criteria table, "capacity": capacity-check row, "training":
    how its training ended}; chapter 3's criteria of the main model (every test slice) override chapter 4's;
    capacity and plateau come from chapter 4 (`capacity.json`, `training_plateau.json`)."""
    import json

    from difflung.judging.plateau import status

    out = {}
    for stem in (runs.BASELINE_COMPARISON, runs.CBMAT_TRAINING):
        try:
            crit = read_criteria(runs.chapter_dir(runs_root, stem))
        except FileNotFoundError:
            continue
        for k, v in crit["converged"].items():
            out.setdefault(k, {}).update({"converged": v, "table": crit["tables"].get(k)})
    ch4 = runs.chapter_dir(runs_root, runs.BASELINE_COMPARISON)
    if (ch4 / "capacity.json").is_file():
        for k, row in json.loads((ch4 / "capacity.json").read_text())["rows"].items():
            out.setdefault(k, {})["capacity"] = row
    if (ch4 / runs.PLATEAU_FILE).is_file():
        pl = json.loads((ch4 / runs.PLATEAU_FILE).read_text())
        cap = pl.get("budget", {}).get("max_budgets", 1)
        for k, by_seed in pl["curves"].items():
            ended = [status(r["plateaued"], r["budgets"], cap) for r in by_seed.values()]
            out.setdefault(k, {})["training"] = [e for e in dict.fromkeys(ended) if not e.startswith("plateaued")]
    return out


def main_learned(records: dict, model: str = MAIN) -> tuple[bool, str]:
    """(learned, reason): whether the main model learned its masks, i.e. its judge Dice ratio on lung is at least
    `instruments.DICE_RATIO_MIN`. Without a record, or with lung not judged (judge below its floor), it cannot be
    told: not measurable either.

    Args:
        records: `_records(runs_root)`.
        model: the main model's key.
    """
    name = POSTER_NAMES.get(model, model)
    table = records.get(model, {}).get("table")
    if table is None or not len(table):
        return False, f"no record of whether {name} learned its masks (chapters 3 and 4 wrote no criteria for it)"
    row = table[table["criterion"] == LUNG_RATIO]["value"].astype(float)
    if not len(row) or not np.isfinite(row.iloc[0]):
        return False, f"{name}'s masks could not be checked (no judge Dice ratio on lung)"
    if row.iloc[0] < DICE_RATIO_MIN:
        return False, (f"{name} never learned its masks (judge Dice ratio on lung {row.iloc[0]:.3g} "
                       f"< {DICE_RATIO_MIN:g})")
    return True, ""


def _validity(models, records: dict, measurable: tuple[bool, str] = (True, "")) -> dict:
    """`Comparison` validity kwargs: the gate (class measurable, main model learned its masks) and the convergence
    note of the generators `models` (never a gate)."""
    gate = measurable if not measurable[0] else main_learned(records) if MAIN in models else (True, "")
    if gate[0]:
        gate = capacity_gate(models, records)
    notes = [f"{POSTER_NAMES.get(m, m)} " + ("missed its convergence criteria" if "converged" in records.get(m, {})
                                             else "has no convergence record")
             for m in dict.fromkeys(models) if not records.get(m, {}).get("converged")]
    notes += [f"{POSTER_NAMES.get(m, m)} {e}" for m in dict.fromkeys(models) for e in records.get(m, {}).get("training", [])]
    return {"convergence": "; ".join(notes), **({} if gate[0] else {"measurable": False, "reason": gate[1]})}


def capacity_gate(models, records: dict) -> tuple[bool, str]:
    """(ok, reason): a generator that failed its capacity check (`difflung.capacity`: it could not redraw a handful
    of training masks) makes a comparison a defect to find, not a result; without a check nothing is gated."""
    for m in dict.fromkeys(models):
        row = records.get(m, {}).get("capacity")
        if row is not None and not row["passed"]:
            return False, (f"{POSTER_NAMES.get(m, m)} failed its capacity check (judge lung-Dice ratio "
                           f"{row['lung ratio']:.3g} on {row['slices']} memorised training slices): a defect, "
                           f"not a result")
    return True, ""


def _signature(runs_root) -> dict[str, tuple[bool, str]]:
    try:
        return read_signature(runs.chapter_dir(runs_root, runs.DATA_PREPARATION))
    except FileNotFoundError:
        return {}


def _dataset_classes(runs_root) -> list[str] | None:
    """The class names of the run's dataset (chapter 1's artifact); None when chapter 1 did not run."""
    path = runs.phantom_dataset_dir(runs_root) / "manifest.json"
    return json.loads(path.read_text())["class_names"] if path.is_file() else None


def _missing(c: Claim, reason: str) -> Comparison:
    return Comparison(c.text, math.nan, direction=c.direction, margin=c.margin, reported=c.reported,
                      measurable=False, reason=reason,
                      unit="training seeds" if c.kind == "segmentation" else "test patients")


def _quality(c: Claim, m4: pd.DataFrame, records: dict, measurable: dict | None = None, *,
             chapter: str = "chapter 4", gate_models=None) -> Comparison:
    """An image-quality or judge-Dice claim between two generators on the same test slices and noise, over every
    training seed of each (`compare_generators`)."""
    x = m4[(m4.metric == c.metric) & (m4["condition"] == "full")] if "condition" in m4 else m4[m4.metric == c.metric]
    x = x[(x["class"] == c.cls) & (x["slice"] >= 0)] if "class" in x else x[x["slice"] >= 0]
    a, b = x[x.model == c.a], x[x.model == c.b]
    if a.empty or b.empty or not set(a["slice"]) & set(b["slice"]):
        return _missing(c, f"{chapter} has no {c.metric} scores of {POSTER_NAMES.get(c.a, c.a)} and "
                           f"{POSTER_NAMES.get(c.b, c.b)} on the same test slices")
    shared = sorted(set(a["slice"]) & set(b["slice"]))
    a, b = a[a["slice"].isin(shared)], b[b["slice"].isin(shared)]
    ok = (True, "") if c.cls == "all" or measurable is None else measurable.get(
        c.cls, (False, f"{c.cls}: not judged in {chapter}"))
    return compare_generators(a, b, claim=c.text, direction=c.direction, margin=c.margin, reported=c.reported,
                              **_validity([c.a, c.b] if gate_models is None else gate_models, records,
                                          (bool(ok[0]), ok[1])))


def cost_values(runs_root) -> dict[str, dict[str, float]]:
    """generator -> {gflops_per_image, s_per_image} as chapter 4 measured them (NaN where it did not)."""
    m = _metrics(runs_root, runs.BASELINE_COMPARISON)
    path = runs.chapter_dir(runs_root, runs.BASELINE_COMPARISON) / "metrics.json"
    timings = json.loads(path.read_text()).get("timings", {}) if path.is_file() else {}
    out = {}
    for key in ("pix2pix", "spade", "segguided", "difflung"):
        g = m.loc[(m.model == key) & (m.metric == "gflops_per_image"), "value"] if m is not None else []
        out[key] = {"gflops_per_image": float(g.iloc[0]) if len(g) else math.nan,
                    "s_per_image": float(timings.get(key, {}).get("s_per_image", math.nan))}
    return out


def _cost(c: Claim, runs_root) -> Comparison:
    """A cost claim: our ratio a / b (FLOPs counted, seconds a median of repeats) against its range."""
    ours = cost_values(runs_root)
    a, b = ours.get(c.a, {}).get(c.metric, math.nan), ours.get(c.b, {}).get(c.metric, math.nan)
    if not (np.isfinite(a) and np.isfinite(b) and b > 0):
        return Comparison(c.text, math.nan, reported=c.reported, measurable=False, unit="exact measurement",
                          reason=f"chapter 4 has no {c.metric} of {c.a} and {c.b}")
    return Comparison(c.text, a / b, reported=c.reported, exact_range=c.ratio_range, n=1, unit="exact measurement")


def _judge_floors(runs_root, stem: str) -> dict | None:
    """A chapter's measurable classes (judge floors, HU signature) from its criteria.json; None without one."""
    try:
        return read_criteria(runs.chapter_dir(runs_root, stem))["measurable"]
    except FileNotFoundError:
        return None


def _per_image(runs_root, stem: str) -> pd.DataFrame | None:
    p = runs.chapter_dir(runs_root, stem) / "per_image.csv"
    return read_metrics(p) if p.is_file() else None


def _segmentation(c: Claim, m5: pd.DataFrame, records: dict, signature: dict) -> Comparison:
    if "dataset" in m5:
        m5 = m5[m5["dataset"].astype(str) == "phantom"]
    x = m5[(m5.metric == "dice") & (m5["class"] == c.cls) & (m5.seed >= 0)]
    a, b = x[x.model == c.a].set_index("seed")["value"], x[x.model == c.b].set_index("seed")["value"]
    both = a.index.intersection(b.index).sort_values()
    if len(both) == 0:
        return _missing(c, f"chapter 5 has no per-seed Dice of {c.a} and {c.b} for {c.cls}")
    present = m5[(m5.metric == "test_pixels") & (m5["class"] == c.cls)]["value"]
    measurable = signature.get(c.cls, (True, ""))
    if len(present) and float(present.max()) <= 0:
        measurable = (False, f"{c.cls} absent from the test truth")
    gens = [ARM_GENERATOR[k] for k in (c.a, c.b) if k in ARM_GENERATOR]
    return compare_seeds(a[both].to_numpy(float), b[both].to_numpy(float), claim=c.text,
                         direction=c.direction, margin=c.margin, reported=c.reported,
                         **_validity(gens, records, measurable))


def comparisons(runs_root, seed: int = 0, claims=CLAIMS) -> list[Comparison]:
    """One `Comparison` per claim, in `claims` order (chapters that did not run give "not measurable").

    Args:
        runs_root: `runs/<profile>`.
        seed: unused (the t-tests draw nothing); kept for existing callers.
    """
    m4, m5 = _metrics(runs_root, runs.BASELINE_COMPARISON), _metrics(runs_root, runs.SEGMENTATION_AUGMENTATION)
    records, signature, held = _records(runs_root), _signature(runs_root), _dataset_classes(runs_root)
    out = []
    for c in claims:
        if held is not None and c.cls not in ("all", *held):
            out.append(_missing(c, f"{c.cls} absent from this dataset"))
        elif c.kind == "cost":
            out.append(_cost(c, runs_root))
        elif c.kind == "image quality":
            out.append(_quality(c, m4, records) if m4 is not None else _missing(c, "chapter 4 did not run"))
        elif c.kind == "generation":
            out.append(_quality(c, m4, records, _judge_floors(runs_root, runs.BASELINE_COMPARISON) or {})
                       if m4 is not None else _missing(c, "chapter 4 did not run"))
        elif c.kind == "ablation":  # chapter 2's strategy models: no main-model gate, the judge's floors only
            m2 = _per_image(runs_root, runs.MASK_ABLATION)
            out.append(_quality(c, m2, {}, _judge_floors(runs_root, runs.MASK_ABLATION) or {}, chapter="chapter 2",
                                gate_models=[]) if m2 is not None else _missing(c, "chapter 2 did not run"))
        else:
            out.append(_segmentation(c, m5, records, signature) if m5 is not None
                       else _missing(c, "chapter 5 did not run"))
    return out


FAMILIES = {"poster": CLAIMS, "extension": EXTENSION_CLAIMS, "controls": CONTROL_CLAIMS,  # Holm within each family
            "cost": COST_CLAIMS}  # exact measurements: no test


def judge_run(runs_root, seed: int = 0) -> pd.DataFrame:
    """The claims table of a run: each claim with its family, kind, key, our estimate, interval, n, p, Holm p,
    verdict, magnitude note, note and convergence note (`stats.judge_claims`: Holm within the family over its
    measurable, tested claims, then `stats.verdict`) and source.

    Args:
        runs_root: `runs/<profile>`.
        seed: unused (nothing is drawn); kept for existing callers.
    """
    parts = []
    for k, (family, claims) in enumerate(FAMILIES.items()):
        t = judge_claims(comparisons(runs_root, seed + 1000 * k, claims))
        t.insert(1, "family", family)
        t.insert(2, "kind", [c.kind for c in claims])
        t.insert(3, "key", [c.key for c in claims])
        t["source table"] = [c.table for c in claims]
        parts.append(t)
    return pd.concat(parts, ignore_index=True)


def write_claims(runs_root, run_dir, seed: int = 0) -> tuple[pd.DataFrame, Path]:
    """Judge the run and write `claims.csv` into `run_dir` (archived with the run's numbers)."""
    from difflung.core.provenance import atomic_path

    table = judge_run(runs_root, seed)
    path = Path(run_dir) / "claims.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6g")
    return table, path
