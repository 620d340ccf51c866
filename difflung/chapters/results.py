"""Chapter 6, results: the paper's reported numbers against this run's, read from the chapters' files.

Nothing here trains or re-measures: every number comes from a chapter's `metrics.csv` (or, for timings that
differ from run to run, its cost/timings JSON) under `runs/<profile>/`. Verdicts follow stated rules:

    A claim "X beats Y" is tested on our paired differences X - Y (over test slices for image quality, over
    training seeds for segmentation), with a 95 % t-interval:
      reproduced              the interval lies above 0 (above -margin for "not worse than" claims)
      not reproduced          the interval lies below 0 (below -margin)
      inconclusive at this n  the interval contains 0 (or -margin)
      not measurable          the class is absent from the test truth, or a chapter did not run
    A cost claim "X costs at least k times Y" is reproduced when our ratio is at least k, else not reproduced.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluation import mean_ci
from ..metrics import read_metrics
from ..plots import plt, save_figure
from ..reported import IMAGE_QUALITY, LABEL, POSTER_NAMES, SEGMENTATION_DICE

CHAPTERS = ("01_data_preparation", "02_mask_ablation_study", "03_cbmat_training", "04_baseline_comparison",
            "05_segmentation_augmentation")
CH4_NAMES = {"pix2pix": "Pix2Pix", "spade": "SPADE", "segguided": "Seg-Guided", "difflung": "Diff-Lung (CBMAT)"}
NON_INFERIORITY = 0.02  # Dice margin for "not worse than ref" (the poster's healthy-lung change is +0.01)


def load_metrics(runs_root) -> dict[str, pd.DataFrame]:
    """Every chapter's metrics.csv of the run (a chapter that did not run is absent)."""
    out = {}
    for stem in CHAPTERS:
        p = Path(runs_root) / stem / "metrics.csv"
        if p.is_file():
            out[stem] = read_metrics(p)
    if not out:
        raise FileNotFoundError(f"{runs_root}: no chapter metrics.csv found; run the chapters first")
    return out


def _json(path) -> dict:
    p = Path(path)
    return json.loads(p.read_text()) if p.is_file() else {}


def _fmt(m, lo=None, hi=None, d=2) -> str:
    if m is None or not np.isfinite(m):
        return "n/a"
    if lo is None or not np.isfinite(lo) or not np.isfinite(hi):
        return f"{m:.{d}f}"
    return f"{m:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]"


# ---------------------------------------------------------------------------------------------------------------
# summary tables

def image_quality_table(metrics: dict, runs_root) -> pd.DataFrame:
    """Chapter 4's models: PSNR, SSIM (mean [95 % CI] over test slices), GFLOPs per image, parameters and s/image,
    each with the poster's reported row beneath."""
    m = metrics.get("04_baseline_comparison")
    if m is None:
        return pd.DataFrame()
    timings = _json(Path(runs_root) / "04_baseline_comparison" / "metrics.json").get("timings", {})
    rows = []
    for key, name in CH4_NAMES.items():
        mm = m[m.model == name]
        per_slice = mm[mm["slice"].astype(int) >= 0] if "slice" in mm else mm
        row = {"model": name, "source": "ours"}
        for metric in ("psnr", "ssim"):
            v = per_slice.loc[per_slice.metric == metric, "value"].to_numpy(float)
            row[metric.upper()] = _fmt(*mean_ci(v)) if v.size else "n/a"
        one = lambda k: mm.loc[mm.metric == k, "value"].astype(float)
        row["GFLOPs/image"] = _fmt(one("gflops_per_image").iloc[0], d=3) if len(one("gflops_per_image")) else "n/a"
        row["params (M)"] = _fmt(one("params").iloc[0] / 1e6) if len(one("params")) else "n/a"
        spi = timings.get(name, {}).get("s_per_image")
        row["s/image"] = _fmt(spi, d=3) if spi is not None else "n/a"
        rows.append(row)
        r = IMAGE_QUALITY[key]
        rows.append({"model": name, "source": LABEL, "PSNR": f"{r['psnr']:.2f}",
                     "SSIM": f"{r['ssim']:.2f}", "GFLOPs/image": f"{r['gflops_per_image']:g}", "params (M)": "",
                     "s/image": f"{r['s_per_image']:g}"})
    return pd.DataFrame(rows).set_index(["model", "source"])


def segmentation_table(metrics: dict, dataset: str = "phantom") -> pd.DataFrame:
    """Chapter 5: Dice per class and arm (mean [95 % CI] over training seeds), with the poster's rows."""
    m = metrics.get("05_segmentation_augmentation")
    if m is None:
        return pd.DataFrame()
    if "dataset" in m:
        m = m[m["dataset"] == dataset]
    classes = [c for c in ("lung", "emphysema", "fibrosis", "ggo") if c in set(m["class"])]
    agg = m[m.seed == -1].pivot_table(index=["model", "class"], columns="metric", values="value", aggfunc="first")
    rows = []
    for arm in ("ref", "oversample", "+segguided", "+difflung"):
        if arm not in agg.index.get_level_values(0):
            continue
        row = {"arm": arm, "source": "ours"}
        for c in classes:
            r = agg.loc[(arm, c)] if (arm, c) in agg.index else None
            row[f"Dice {c}"] = _fmt(r["dice_mean"], r["dice_lo"], r["dice_hi"]) if r is not None else "n/a"
        rows.append(row)
        if arm in SEGMENTATION_DICE:
            rows.append({"arm": arm, "source": LABEL,
                         **{f"Dice {c}": f"{SEGMENTATION_DICE[arm][c]:.2f}" if c in SEGMENTATION_DICE[arm] else ""
                            for c in classes}})
    return pd.DataFrame(rows).set_index(["arm", "source"])


def cost_table(runs_root) -> pd.DataFrame:
    """Training and sampling cost of the run: chapter 3's main training, chapter 5's synthesis, chapter 4's
    per-image sampling cost (timings come from JSON files, not metrics.csv, since they vary between runs)."""
    root = Path(runs_root)
    rows = []
    c3 = _json(root / "03_cbmat_training" / "cost.json")
    if c3:
        rows.append({"what": "Diff-Lung training (chapter 3)", "device": c3.get("device"), "steps": c3.get("steps"),
                     "wall s": c3.get("wall_s"), "images/s": c3.get("images_per_s"),
                     "peak memory MB": (c3.get("peak_mem_bytes") or 0) / 2**20})
    t4 = _json(root / "04_baseline_comparison" / "metrics.json")
    for name, t in t4.get("timings", {}).items():
        rows.append({"what": f"{name} sampling (chapter 4)", "device": t4.get("device"),
                     "s/image": t.get("s_per_image"), "batch": t4.get("timing_batch")})
    t5 = _json(root / "05_segmentation_augmentation" / "timings.json")
    for arm, t in t5.get("synthesis", {}).items():
        rows.append({"what": f"synthetic set {arm} (chapter 5)", "images/s": t.get("images_per_s"),
                     "wall s": t.get("seconds"), "steps": t.get("n")})
    return pd.DataFrame(rows).set_index("what") if rows else pd.DataFrame()


# ---------------------------------------------------------------------------------------------------------------
# claims and verdicts

def _verdict(lo: float, hi: float, margin: float = 0.0) -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "not measurable"
    if lo > -margin:
        return "reproduced"
    if hi < -margin:
        return "not reproduced"
    return "inconclusive at this n"


def _paired_slices(m: pd.DataFrame, a: str, b: str, metric: str) -> np.ndarray:
    x = m[(m.metric == metric) & (m["slice"].astype(int) >= 0)]
    pa = x[x.model == a].set_index(["seed", "slice"])["value"]
    pb = x[x.model == b].set_index(["seed", "slice"])["value"]
    both = pa.index.intersection(pb.index)
    return (pa[both] - pb[both]).to_numpy(float)


def _paired_seeds(m: pd.DataFrame, a: str, b: str, cls: str) -> np.ndarray:
    x = m[(m.metric == "dice") & (m["class"] == cls) & (m.seed >= 0)]
    pa, pb = x[x.model == a].set_index("seed")["value"], x[x.model == b].set_index("seed")["value"]
    both = pa.index.intersection(pb.index)
    return (pa[both] - pb[both]).to_numpy(float)


def claims_table(metrics: dict, dataset: str = "phantom") -> pd.DataFrame:
    """The poster's claims, each with its reported difference, ours (mean [95 % CI], n) and the verdict."""
    rows = []
    m4 = metrics.get("04_baseline_comparison")
    if m4 is not None:
        for metric, label in (("psnr", "PSNR"), ("ssim", "SSIM")):
            for other in ("segguided", "spade", "pix2pix"):
                d = _paired_slices(m4, CH4_NAMES["difflung"], CH4_NAMES[other], metric)
                mean, lo, hi = mean_ci(d) if d.size >= 2 else (np.nan, np.nan, np.nan)
                rows.append({"claim": f"Diff-Lung {label} > {POSTER_NAMES[other]} {label}",
                             "reported": IMAGE_QUALITY["difflung"][metric] - IMAGE_QUALITY[other][metric],
                             "ours": mean, "lo": lo, "hi": hi, "n": int(d.size), "unit": "test slices",
                             "verdict": _verdict(lo, hi)})
        g = m4[m4.metric == "gflops_per_image"].set_index("model")["value"].astype(float)
        if CH4_NAMES["difflung"] in g and CH4_NAMES["pix2pix"] in g:
            ratio = g[CH4_NAMES["difflung"]] / g[CH4_NAMES["pix2pix"]]
            rep = IMAGE_QUALITY["difflung"]["gflops_per_image"] / IMAGE_QUALITY["pix2pix"]["gflops_per_image"]
            rows.append({"claim": "Diff-Lung costs >= 10x the GFLOPs of Pix2Pix per image", "reported": rep,
                         "ours": ratio, "lo": np.nan, "hi": np.nan, "n": 1, "unit": "ratio",
                         "verdict": "reproduced" if ratio >= 10 else "not reproduced"})
    m5 = metrics.get("05_segmentation_augmentation")
    if m5 is not None:
        if "dataset" in m5:
            m5 = m5[m5["dataset"] == dataset]
        present = set(m5.loc[(m5.metric == "test_pixels") & (m5.value > 0), "class"])
        for cls in ("emphysema", "fibrosis", "lung"):
            for other in ("ref", "+segguided"):
                margin = NON_INFERIORITY if cls == "lung" and other == "ref" else 0.0
                d = _paired_seeds(m5, "+difflung", other, cls)
                mean, lo, hi = mean_ci(d) if d.size >= 2 else (np.nan, np.nan, np.nan)
                verdict = _verdict(lo, hi, margin) if cls in present else "not measurable"
                rel = "not worse than" if margin else ">"
                rows.append({"claim": f"Dice {cls}: +difflung {rel} {other}"
                                      + (f" (margin {margin:g})" if margin else ""),
                             "reported": SEGMENTATION_DICE["+difflung"][cls] - SEGMENTATION_DICE[other][cls],
                             "ours": mean, "lo": lo, "hi": hi, "n": int(d.size), "unit": "training seeds",
                             "verdict": verdict})
    # the columns stand even when no chapter with claims has run (a partial run renders an empty table)
    return pd.DataFrame(rows, columns=["claim", "reported", "ours", "lo", "hi", "n", "unit", "verdict"])


def best_model(metrics: dict, metric: str = "psnr") -> str:
    """The chapter-4 model with the highest mean of `metric` over test slices in this run ("n/a" if absent)."""
    m = metrics.get("04_baseline_comparison")
    if m is None:
        return "n/a"
    x = m[(m.metric == metric) & (m["slice"].astype(int) >= 0) & (m.model.isin(CH4_NAMES.values()))]
    return str(x.groupby("model")["value"].mean().idxmax()) if len(x) else "n/a"


def verdict_counts(claims: pd.DataFrame) -> dict[str, int]:
    order = ("reproduced", "not reproduced", "inconclusive at this n", "not measurable")
    counts = claims["verdict"].value_counts() if len(claims) else pd.Series(dtype=int)
    return {k: int(counts.get(k, 0)) for k in order}


def figure_claims(claims: pd.DataFrame, run_dir, *, seed: int = 0):
    """Our paired differences with 95 % CIs against the poster's reported differences, one panel per unit."""
    c = claims[claims.unit != "ratio"].reset_index(drop=True)
    fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * max(len(c), 4) + 1.2), squeeze=False)
    for ax, unit in zip(axes[0], ("test slices", "training seeds")):
        s = c[c.unit == unit]
        y = np.arange(len(s))
        ax.errorbar(s["ours"], y, xerr=[s["ours"] - s["lo"], s["hi"] - s["ours"]], fmt="o", color="C0",
                    label="ours (95 % CI)")
        ax.scatter(s["reported"], y, marker="D", facecolors="none", edgecolors="C3", label=LABEL)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_yticks(y, s["claim"], fontsize=8)
        ax.invert_yaxis()
        ax.set_title(f"paired differences over {unit}", fontsize=9)
        ax.legend(fontsize=7, frameon=False, loc="lower right")
    fig.tight_layout()
    save_figure(fig, Path(run_dir) / "claims.png", seed=seed)
    return fig


def provenance_table(runs_root) -> pd.DataFrame:
    """Per chapter of the run: status, wall time, device and git revision (from provenance.json)."""
    prov = _json(Path(runs_root) / "provenance.json")
    rows = [{"chapter": k, "status": v.get("status"), "wall s": v.get("wall_s"), "device": v.get("device"),
             "git revision": str(v.get("git_revision", ""))[:12]} for k, v in prov.get("notebooks", {}).items()
            if k in CHAPTERS]
    return pd.DataFrame(rows).set_index("chapter") if rows else pd.DataFrame()
