"""Chapter 7, results (`notebooks/07_results.py`): the poster's claims judged on this run, beside the archived
reference run.

Nothing here trains or re-measures. The claims table is `difflung.judging.claims.judge_run` (the one function chapter 5
also shows), the summary tables read the chapters' `metrics.csv`, timings come from their JSON records, and the
reference run is the newest archive under `reference/` (`difflung.run.archive`). The prose of the page is generated
from the verdicts (`summary_markdown`), so it follows the run.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from difflung.judging import claims as C
from difflung.core import runs
from difflung.run.archive import load_reference
from difflung.generators import display_name
from difflung.core.metrics_csv import read_metrics
from difflung.plots import footnoted, interval, plt, save_figure, sig
from difflung.judging.reported import IMAGE_QUALITY, LABEL, SEGMENTATION_DICE, cost_ratio_frame
from difflung.chapters.scope import Scope, glue_facts, smoke_caveat  # noqa: F401  (glue_facts: for the page)
from difflung.judging import stats
from difflung.judging.metrics import DATA_RANGE
from difflung.judging.stats import cluster_interval, min_units, seed_interval, unit_means
from difflung import labels as L

CONFIDENCE = f"{100 * stats.CONFIDENCE:g} %"  # the intervals' level, as the page writes it
QUALITY_MODELS = ("pix2pix", "spade", "segguided", "difflung")
ARMS = ("ref", "oversample", "+segguided", "+difflung")


def page_facts() -> dict:
    """The statistics' and the model's constants the page's prose quotes (glued, never typed): the verdict's
    alpha, the interval level, the fewest training seeds for an interval (`difflung.judging.stats`), and the HU
    window PSNR and SSIM are computed on with its data range."""
    return {"alpha": stats.ALPHA, "confidence": CONFIDENCE, "min_seeds": stats.MIN_SEEDS,
            "model_window": "HU [{:g}, {:g}]".format(*L.MODEL_WINDOW), "data_range": DATA_RANGE}


def _metrics(runs_root, stem) -> pd.DataFrame | None:
    p = runs.chapter_dir(runs_root, stem) / "metrics.csv"
    return read_metrics(p) if p.is_file() else None


def _json(path) -> dict:
    p = Path(path)
    return json.loads(p.read_text()) if p.is_file() else {}


def _ci(est, lo=np.nan, hi=np.nan) -> str:
    if est is None or not np.isfinite(est):
        return "n/a"
    return interval(est, lo, hi)


# ---------------------------------------------------------------------------------------------------------------
# claims

def judge(runs_root, run_dir, seed: int = 0) -> pd.DataFrame:
    """The run's claims table (`difflung.judging.claims`), written to `<run_dir>/claims.csv` for the archive."""
    return C.write_claims(runs_root, run_dir, seed)[0]


def table_claims(claims: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The claims for the page: ours with its interval and unit, the poster's effect, Holm p, the verdict with its
    magnitude note; why a claim is not measurable and the training notes (never a gate) are numbered notes written
    once under the table (`plots.footnoted`), not repeated down it. Returns (the table, the notes in Markdown)."""
    label = claims["verdict"].str.split(": ", n=1).str[0]
    out = pd.DataFrame({
        "claim": claims["claim"],
        "reported": [sig(v) for v in claims["reported"]],
        # a claim whose instrument failed shows no number, here as at a glance and in the chapters
        "ours [interval]": ["n/a" if lab == "not measurable" else _ci(e, lo, hi)
                            for e, lo, hi, lab in zip(claims["estimate"], claims["lo"], claims["hi"], label)],
        "n": [_n_text(n, u) for n, u in zip(claims["n"], claims["unit"])],
        "p (Holm)": [sig(p) if np.isfinite(p) else "" for p in claims["p (Holm)"]],
        "verdict": label,
        # an archive written before the magnitude and convergence notes has neither column
        "magnitude": claims["magnitude"].fillna("") if "magnitude" in claims else "",
        "why": [_reason(v) for v in claims["verdict"]],
        "training": claims["convergence"].fillna("") if "convergence" in claims else "",
    }).set_index("claim")
    shown, notes = footnoted(out, ["why", "training"], name="notes")
    return shown, (f"**Notes** (why a claim is not measurable; how its generators' training ended, never a gate):"
                   f"\n\n{notes}" if notes else "")


def _reason(verdict: str) -> str:
    """Why a claim is not measurable ("" for a measured verdict)."""
    label, _, reason = str(verdict).partition(": ")
    return reason if label == "not measurable" else ""


def _n_text(n, unit) -> str:
    """The units behind an interval in words: "9 patients", "9 seeds", "9 patients x 3/3 seeds"."""
    import re

    if str(unit) == "exact measurement":
        return "exact"
    if not n or not np.isfinite(n):
        return ""
    unit = str(unit)
    seeds = re.search(r"\((\d+) and (\d+)\)", unit)
    if unit.startswith("test patients") and seeds:
        return f"{int(n)} patients x {seeds.group(1)}/{seeds.group(2)} seeds"
    return f"{int(n)} {'patients' if unit.startswith('test patients') else 'seeds'}"


VERDICT_MARKS = {"reproduced": "✔ reproduced", "contradicted": "✘ contradicted", "inconclusive": "? inconclusive",
                 "not measurable": "– not measurable"}


def table_at_a_glance(claims: pd.DataFrame) -> pd.DataFrame:
    """The poster's claims in one table a reader takes in within a minute: reported, ours with its interval, the
    verdict with a mark, and one short reason (why not measurable, or how our effect compares with the poster's)."""
    poster = claims[claims["family"].isin(("poster", "cost"))] if "family" in claims else claims
    label = poster["verdict"].str.split(":").str[0]
    reason = [_reason(v) or (m if lab != "not measurable" and isinstance(m, str) else "")
              for v, lab, m in zip(poster["verdict"], label,
                                   poster["magnitude"] if "magnitude" in poster else [""] * len(poster))]
    return pd.DataFrame({"claim": poster["claim"],
                         "reported": [sig(v) if np.isfinite(v) else "not reported" for v in poster["reported"]],
                         # a claim that cannot be measured shows no number (as chapters 4 and 5 show it)
                         "ours [95 % interval]": ["n/a" if lab == "not measurable" else _ci(e, lo, hi) for
                                                  lab, e, lo, hi in zip(label, poster["estimate"], poster["lo"],
                                                                        poster["hi"])],
                         "verdict": [VERDICT_MARKS.get(x, x) for x in label], "why": reason}).set_index("claim")


def glance_source(ref, claims_here: pd.DataFrame, ref_claims, profile: str):
    """(markdown line naming the run the opening table shows, its claims): the archived reference run when there is
    one (the run made to test the paper), else this run."""
    if ref is not None and ref_claims is not None:
        return (f"Archived **{ref.label}** (the run made to test the paper; this build's own {profile} run "
                f"follows below).", ref_claims)
    return f"This build's **{profile}** run (no reference run is archived yet).", claims_here


def summary_markdown(all_claims: pd.DataFrame, profile: str) -> str:
    """The page's conclusion, generated from the verdicts (no number or profile fact is typed in the notebook)."""
    claims = all_claims[all_claims["family"] == "poster"] if "family" in all_claims else all_claims
    label = claims["verdict"].str.split(":").str[0]
    counts = label.value_counts()
    n_tested = int((~label.eq("not measurable")).sum())
    parts = [f"In this **{profile}** run, of {len(claims)} claims of the poster, "
             + ", ".join(f"{int(counts.get(k, 0))} {k}" for k in stats.VERDICTS) + "."]
    for k, head in (("reproduced", "Reproduced"), ("contradicted", "Contradicted (significant in the other "
                                                                     "direction from the poster's)")):
        rows = claims[label == k]
        if len(rows):
            parts.append(f"{head}: " + "; ".join(rows["claim"]) + ".")
    reasons = claims.loc[label == "not measurable", "verdict"].str.split(": ", n=1).str[1].value_counts()
    if len(reasons):
        parts.append("Not measurable, and why: " + "; ".join(f"{r} ({n} claim{'s' * (n > 1)})"
                                                             for r, n in reasons.items()) + ".")
    if n_tested:
        units = claims.loc[~label.eq("not measurable")].groupby("unit")["n"].max()
        need = min_units(n_tested)
        short = [f"{int(n)} {u}" for u, n in units.items() if n < need]
        if short:
            parts.append(f"With {n_tested} claims tested, a paired t-test needs at least {need} units per "
                         f"comparison to reach p < {stats.ALPHA:g}; this run has "
                         f"{' and '.join(short)}, so those claims can be at best inconclusive, whatever the data.")
    for family, head in (("extension", "Beyond the poster (its own Holm family)"),
                         ("controls", "Controls: the synthetic arm against rebalancing without a generator (its own "
                                      "Holm family)"),
                         ("cost", "The poster's cost columns as ratios (exact measurements, read against their "
                                  "ranges; no test)")):
        ext = all_claims[all_claims["family"] == family] if "family" in all_claims else all_claims.iloc[:0]
        if len(ext):
            parts.append(f"{head}: " + "; ".join(f"{c}: {v}" for c, v in zip(ext["claim"], ext["verdict"])) + ".")
    if profile == "smoke":
        parts.append("The smoke profile checks the pipeline; its verdicts do not test the paper. The archived "
                     "reference run below was made at a size and budget chosen to test it.")
    return "\n\n".join(parts)


# one panel per scale, so dB, SSIM and Dice never share an axis: (panel, x label, test on the claim's text)
PANELS = (("PSNR", "PSNR difference (dB), unit: test patients x training seeds", lambda t: t.startswith("PSNR")),
          ("SSIM", "SSIM difference, unit: test patients x training seeds", lambda t: t.startswith("SSIM")),
          ("judge Dice", "judge Dice difference on generated slices", lambda t: t.startswith("judge Dice")),
          ("Dice", "Dice difference of the segmenters, unit: training seeds", lambda t: t.startswith("Dice")),
          ("cost", "cost ratio a / b, exact measurement (log scale)", lambda t: t.startswith(("GFLOPs", "seconds"))))


def _panel(claim: str) -> str:
    return next(name for name, _, test in PANELS if test(claim))


def figure_claims(claims: pd.DataFrame, run_dir, *, seed: int = 0, name: str = "claims.png"):
    """Every claim's effect with its interval (dots; grey when not measurable) against the poster's reported
    difference (open diamonds), one panel per scale (PSNR, SSIM, judge Dice of generated slices, segmenters'
    Dice), claims in table order."""
    claims = claims.assign(panel=claims["claim"].map(_panel))
    panels = [p for p in PANELS if (claims["panel"] == p[0]).any()]
    heights = [max(int((claims["panel"] == p[0]).sum()), 2) for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(8.5, 0.3 * sum(heights) + 1.2 * len(panels)), squeeze=False,
                             layout="constrained", gridspec_kw={"height_ratios": heights})
    for ax, (panel, xlabel, _) in zip(axes[:, 0], panels):
        s = claims[claims["panel"] == panel].reset_index(drop=True)
        y = np.arange(len(s))
        ok = ~s["verdict"].str.startswith("not measurable")
        ours = "ours (exact measurement)" if panel == "cost" else f"ours ({CONFIDENCE} interval)"
        for sel, color, lab in ((ok, "C0", ours), (~ok, "0.6", "ours, not measurable")):
            t = s[sel]
            if t.empty:
                continue
            err = np.nan_to_num(np.vstack([t["estimate"] - t["lo"], t["hi"] - t["estimate"]]), nan=0.0)
            ax.errorbar(t["estimate"], y[sel.to_numpy()], xerr=err, fmt="o", color=color, label=lab, ms=4)
        ax.scatter(s["reported"], y, marker="D", facecolors="none", edgecolors="C3", label=LABEL, zorder=3)
        ax.axvline(1 if panel == "cost" else 0, color="grey", lw=0.8)
        if panel == "cost":
            ax.set_xscale("log")
        ax.set_yticks(y, s["claim"], fontsize=7)
        ax.set_ylim(len(s) - 0.5, -0.5)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.legend(fontsize=7, frameon=False, loc="best")
    save_figure(fig, Path(run_dir) / name, seed=seed)
    return fig


# ---------------------------------------------------------------------------------------------------------------
# summary tables

def table_image_quality(runs_root, seed: int = 0) -> pd.DataFrame:
    """Chapter 4: PSNR and SSIM per generator (mean [patient-level 95 % interval]), cost, beside the poster."""
    m = _metrics(runs_root, runs.BASELINE_COMPARISON)
    if m is None:
        return pd.DataFrame()
    timings = _json(runs.chapter_dir(runs_root, runs.BASELINE_COMPARISON) / "metrics.json").get("timings", {})
    rows = []
    for key in QUALITY_MODELS:
        mm = m[m.model == key]
        row = {"model": display_name(key), "source": "ours"}
        for metric in ("psnr", "ssim"):
            x = mm[(mm.metric == metric) & (mm["slice"].astype(int) >= 0)]
            if len(x):
                means, cl, _ = unit_means(x["value"], x["slice"], x["patient"].astype(str))
                iv = cluster_interval(means, cl)
                row[metric.upper()] = _ci(iv.estimate, iv.lo, iv.hi)
        g = mm.loc[mm.metric == "gflops_per_image", "value"]
        row["GFLOPs/image"] = sig(g.iloc[0]) if len(g) else "n/a"
        row["s/image"] = sig(timings.get(key, {}).get("s_per_image", np.nan))
        rows.append(row)
        r = IMAGE_QUALITY[key]
        rows.append({"model": display_name(key), "source": LABEL, "PSNR": sig(r["psnr"]), "SSIM": sig(r["ssim"]),
                     "GFLOPs/image": sig(r["gflops_per_image"]), "s/image": sig(r["s_per_image"])})
    return pd.DataFrame(rows).set_index(["model", "source"]).fillna("n/a")


def table_segmentation(runs_root, seed: int = 0) -> pd.DataFrame:
    """Chapter 5: Dice per arm and class, mean over training seeds [95 % interval only from >= 5 seeds]."""
    m = _metrics(runs_root, runs.SEGMENTATION_AUGMENTATION)
    if m is None:
        return pd.DataFrame()
    if "dataset" in m:
        m = m[m["dataset"].astype(str) == "phantom"]
    x = m[(m.metric == "dice") & (m.seed >= 0)]
    classes = [c for c in ("lung", "emphysema", "fibrosis", "ggo") if c in set(x["class"])]
    rows = []
    for arm in [a for a in ARMS if a in set(x.model)] + sorted(set(x.model) - set(ARMS)):
        row = {"arm": arm, "source": "ours", "seeds": str(x[x.model == arm]["seed"].nunique())}
        for c in classes:
            v = x[(x.model == arm) & (x["class"] == c)]["value"].to_numpy(float)
            iv = seed_interval(v, generator=np.random.default_rng(seed))
            row[f"Dice {c}"] = _ci(v.mean(), *(iv[1:3] if iv else (np.nan, np.nan))) if v.size else "n/a"
        rows.append(row)
        if arm in SEGMENTATION_DICE:
            rows.append({"arm": arm, "source": LABEL, "seeds": "", **{
                f"Dice {c}": sig(SEGMENTATION_DICE[arm][c]) if c in SEGMENTATION_DICE[arm] else "" for c in classes}})
    return pd.DataFrame(rows).set_index(["arm", "source"])


def table_cost_ratios(runs_root) -> pd.DataFrame:
    """The poster's cost ratios beside ours (chapter 4's measurements, `claims.cost_values`); the cost claims of the
    claims table read the same ratios against their ranges."""
    t = cost_ratio_frame(C.cost_values(runs_root))
    return t.assign(**{c: t[c].map(sig) for c in ("reported ratio", "our ratio")}).set_index(["comparison", "metric"])


# ---------------------------------------------------------------------------------------------------------------
# the reference run and this run's provenance

def reference(root=None):
    """The newest archived reference run (`difflung.run.archive.Reference`) and its claims table (None: none)."""
    ref = load_reference(root) if root else load_reference()
    if ref is None:
        return None, None
    p = ref.path / runs.RESULTS / "claims.csv"
    return ref, (pd.read_csv(p) if p.is_file() else None)


def reference_markdown(ref) -> str:
    if ref is None:
        return ("No reference run is archived in `reference/` yet: `python -m difflung archive --profile laptop` "
                "after a finished laptop run puts its numbers there.")
    stale = {True: " **The chapters' code has changed since this run was made: its numbers may not be what the "
                   "current code would give.**", None: " Whether the code changed since is unknown (no git history)."
             }.get(ref.code_changed, "")
    if ref.code_changed and ref.changed_files:
        shown = ", ".join(f"`{f}`" for f in ref.changed_files[:8])
        stale += f" Changed since: {shown}" + (f" and {len(ref.changed_files) - 8} more" if len(ref.changed_files) > 8
                                                else "") + "."
    wall = ref.meta.get("total_wall_s")
    return (f"Archived reference run: **{ref.label}** ({len(ref.meta.get('chapters', []))} chapters"
            + (f", {wall / 60:.0f} min of wall time" if wall else "") + f").{stale}"
            + (f" {ref.meta['note'].rstrip('.')}." if ref.meta.get("note") else "") + _parts_text(ref.meta))


def _parts_text(meta: dict) -> str:
    """A run made in parts (`run --part`): each part's chapters, wall time and note, in the order they ran."""
    parts = meta.get("parts") or {}
    if not parts:
        return ""
    notes = meta.get("notes", {})
    each = [f"{name} (chapter{'s' if len(p['chapters']) > 1 else ''} "
            f"{', '.join(s.split('_')[0].lstrip('0') for s in p['chapters'])}"
            + (", a first pass at fewer settings whose models the chapter's own part reuses" if p.get("first_pass")
               else "") + f", {p.get('wall_s', 0.0) / 60:.0f} min"
            + (f"; {notes[name].rstrip('.')}" if notes.get(name) else "") + ")"
            for name, p in sorted(parts.items(), key=lambda kv: str(kv[1].get("started", "")))]
    return f" It ran in {len(parts)} parts, each in one sitting: {'; '.join(each)}."


def provenance_table(runs_root) -> pd.DataFrame:
    """Per chapter of the run: status, wall time, device and git revision (from provenance.json)."""
    prov = _json(Path(runs_root) / "provenance.json")
    rows = [{"chapter": k, "status": v.get("status"), "wall s": sig(v.get("wall_s", np.nan)),
             "device": v.get("device"), "git revision": str(v.get("git_revision", ""))[:12]}
            for k, v in prov.get("notebooks", {}).items() if k in runs.CHAPTERS]
    return pd.DataFrame(rows).set_index("chapter") if rows else pd.DataFrame()


def scope(claims: pd.DataFrame, profile: str, ref) -> Scope:
    label = claims["verdict"].str.split(":").str[0]
    can = [f"{int((label == k).sum())} claims {k}, each by the one verdict rule with Holm's correction"
           for k in ("reproduced", "contradicted") if (label == k).any()]
    cannot = [f"{c}: {v.split(': ', 1)[1]}" for c, v in zip(claims["claim"], claims["verdict"])
              if v.startswith("not measurable")]
    cannot += [f"{c}: inconclusive at this number of units" for c, v in zip(claims["claim"], claims["verdict"])
               if v == "inconclusive"]
    facts = {"claims": str(len(claims)), "reference run": ref.label if ref is not None else "none archived"}
    return Scope(profile, can=can, cannot=smoke_caveat(profile) + cannot, facts=facts)
