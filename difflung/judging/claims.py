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
Validity, with the reason carried into the verdict "not measurable: <reason>": the generators involved met their
convergence criteria (`criteria.json` of chapters 3 and 4); the class is present in the test truth and keeps its
HU signature at the run's size (chapter 1's `hu_signature.json`); the chapter ran at all.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from difflung.core import runs
from difflung.judging.criteria import read_criteria, validity
from difflung.judging.instruments import read_signature
from difflung.core.metrics_csv import read_metrics
from difflung.judging.reported import CLAIMS, EXTENSION_CLAIMS, Claim
from difflung.judging.stats import Comparison, compare_seeds, compare_slices, judge_claims

ARM_GENERATOR = {"+difflung": "difflung", "+segguided": "segguided", "+insert": "difflung"}  # synthetic arm -> the generator it paints with


def _metrics(runs_root, stem: str) -> pd.DataFrame | None:
    p = runs.chapter_dir(runs_root, stem) / "metrics.csv"
    return read_metrics(p) if p.is_file() else None


def _converged(runs_root) -> dict[str, bool]:
    """Generator key -> met its convergence criteria (chapter 4's record, chapter 3's for the main model)."""
    out = {}
    # chapter 3 last: its record of the main model (every test slice) is the one that counts
    for stem in (runs.BASELINE_COMPARISON, runs.CBMAT_TRAINING):
        try:
            out.update(read_criteria(runs.chapter_dir(runs_root, stem))["converged"])
        except FileNotFoundError:
            continue
    return out


def _signature(runs_root) -> dict[str, tuple[bool, str]]:
    try:
        return read_signature(runs.chapter_dir(runs_root, runs.DATA_PREPARATION))
    except FileNotFoundError:
        return {}


def _missing(c: Claim, reason: str) -> Comparison:
    return Comparison(c.text, math.nan, direction=c.direction, margin=c.margin, reported=c.reported,
                      measurable=False, reason=reason,
                      unit="test patients" if c.kind == "image quality" else "training seeds")


def _quality(c: Claim, m4: pd.DataFrame, converged: dict, rng: np.random.Generator) -> Comparison:
    x = m4[(m4.metric == c.metric) & (m4["condition"] == "full")] if "condition" in m4 else m4[m4.metric == c.metric]
    keys = ["train_seed", "seed", "slice"]
    a = x[x.model == c.a].set_index(keys)
    b = x[x.model == c.b].set_index(keys)
    both = a.index.intersection(b.index)
    if len(both) == 0:
        return _missing(c, f"chapter 4 has no paired {c.metric} scores of {c.a} and {c.b}")
    a, b = a.loc[both], b.loc[both]
    flags = validity(["all"], {}, converged, [c.a, c.b])
    return compare_slices(a["value"].to_numpy(float), b["value"].to_numpy(float),
                          both.get_level_values("slice").to_numpy(), a["patient"].astype(str).to_numpy(),
                          claim=c.text, generator=rng, direction=c.direction, margin=c.margin, reported=c.reported,
                          **flags)


def _segmentation(c: Claim, m5: pd.DataFrame, converged: dict, signature: dict,
                  rng: np.random.Generator) -> Comparison:
    if "dataset" in m5:
        m5 = m5[m5["dataset"].astype(str) == "phantom"]
    x = m5[(m5.metric == "dice") & (m5["class"] == c.cls) & (m5.seed >= 0)]
    a, b = x[x.model == c.a].set_index("seed")["value"], x[x.model == c.b].set_index("seed")["value"]
    both = a.index.intersection(b.index).sort_values()
    if len(both) == 0:
        return _missing(c, f"chapter 5 has no per-seed Dice of {c.a} and {c.b} for {c.cls}")
    present = m5[(m5.metric == "test_pixels") & (m5["class"] == c.cls)]["value"]
    measurable = dict(signature)
    if len(present) and float(present.max()) <= 0:
        measurable[c.cls] = (False, f"{c.cls} absent from the test truth")
    measurable.setdefault(c.cls, (True, ""))
    gens = [ARM_GENERATOR[k] for k in (c.a, c.b) if k in ARM_GENERATOR]
    flags = validity([c.cls], measurable, converged, gens)
    return compare_seeds(a[both].to_numpy(float), b[both].to_numpy(float), claim=c.text, generator=rng,
                         direction=c.direction, margin=c.margin, reported=c.reported, **flags)


def comparisons(runs_root, seed: int = 0, claims=CLAIMS) -> list[Comparison]:
    """One `Comparison` per claim, in `claims` order (chapters that did not run give "not measurable")."""
    m4, m5 = _metrics(runs_root, runs.BASELINE_COMPARISON), _metrics(runs_root, runs.SEGMENTATION_AUGMENTATION)
    converged, signature = _converged(runs_root), _signature(runs_root)
    out = []
    for i, c in enumerate(claims):
        rng = np.random.default_rng(np.random.SeedSequence([seed, i]))  # per claim: independent of the others
        if c.kind == "image quality":
            out.append(_quality(c, m4, converged, rng) if m4 is not None else _missing(c, "chapter 4 did not run"))
        else:
            out.append(_segmentation(c, m5, converged, signature, rng) if m5 is not None
                       else _missing(c, "chapter 5 did not run"))
    return out


FAMILIES = {"poster": CLAIMS, "extension": EXTENSION_CLAIMS}  # Holm is applied within each family


def judge_run(runs_root, seed: int = 0) -> pd.DataFrame:
    """The claims table of a run: each claim with its family, kind, key, our estimate, interval, n, p, Holm p,
    verdict (`stats.judge_claims`: Holm across the family's measurable claims, then `stats.verdict`) and source.

    Args:
        runs_root: `runs/<profile>`.
        seed: seeds the bootstrap and permutation draws (one stream per claim and family).
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
