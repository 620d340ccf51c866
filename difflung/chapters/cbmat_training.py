"""Chapter 3, CBMAT training: the profile's main Diff-Lung model (on a GPU when there is one), its loss curve,
whether it meets its convergence criteria on the test masks, region PSNR/SSIM, samples and HU per class, and cost.

Each function is one section of `notebooks/03_cbmat_training.py`:

    result = ch.train_main(runs_root, steps=..., batch_size=..., preset=..., lr=..., seed=seed)
    ch.write_cost(result, run_dir); ch.table_training(result); ch.figure_loss(result, run_dir)
    scored = ch.evaluate(runs_root, run_dir, result, judge_steps=..., n_test=..., sampler=..., seeds=...)
    measurable, results = ch.check(runs_root, run_dir, scored, sampler=..., steps=..., seed=seed)
    ch.table_criteria(results); ch.table_power(results); ch.table_memorisation(results)
    ch.table_judge_errors(runs_root, scored, measurable, judge_steps=..., seed=seed); ch.table_texture(scored)
    ch.table_regions(scored); ch.figure_samples(scored, run_dir); ch.figure_hu(scored, run_dir)
    ch.scope(profile, scored, measurable, results)

The model is saved to `<runs_root>/03_cbmat_training/model/` (`difflung.core.runs.main_model_dir`; chapters 4 and 5
reuse it) and reused when finished with the same configuration and data. Generation and scoring follow
`difflung.judging.scoring`, so chapter 4 reports the same PSNR for this model on the same test slices and seeds.
Intervals are patient-level (`difflung.judging.stats.slice_intervals`); the criteria are
`difflung.judging.criteria`'s, written to `criteria.json` for later chapters.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from difflung.judging import instruments, scoring, stats
from difflung.core import runs
from difflung import labels as L
from difflung.data.dataset import Dataset
from difflung.diffusion import TrainResult, to_hu, train_diffusion
from difflung.diffusion.train import trained_with
from difflung.generators import diffusion_config, display_name, load_generator
from difflung.plots import interval, plt, save_figure, sig, slice_grid, table, window_name
from difflung.core.provenance import atomic_dir, provenance, resolve_device, write_json_atomic
from difflung.judging.realism import judge_errors, region_rows, texture_ratio
from difflung.chapters import common, criteria_tables
from difflung.chapters.scope import Scope, glue_facts, smoke_caveat  # noqa: F401  (glue_facts: for the page)

MODEL = "difflung"


def _recipe_words(r: dict) -> str:
    """A recipe's settings in words, e.g. "AdamW at 0.0001 with 500 warm-up steps, epsilon prediction, no EMA"."""
    return (f"AdamW at {r['lr']:g} with {r['warmup']} warm-up steps, {r['prediction_type']} prediction, "
            + ("no EMA" if r["ema_decay"] is None else f"EMA {r['ema_decay']:g}")
            + f", batch {r['batch_size']}, " + ("fp32" if r["mixed_precision"] == "no" else "mixed precision"))


def page_facts() -> dict:
    """Values the page's prose quotes before any run (glued): the noise schedule, the parent's recipe, the
    display window, the judge's floors."""
    from difflung.diffusion.recipes import recipe
    from difflung.diffusion.train import NOISE_SCHEDULE

    return {"n_timesteps": NOISE_SCHEDULE["num_train_timesteps"], "beta_schedule": NOISE_SCHEDULE["beta_schedule"],
            "parent_recipe": _recipe_words(recipe("parent")), "lung_window": window_name(),
            "anatomy_floor": instruments.JUDGE_FLOOR_ANATOMY, "rare_floor": instruments.JUDGE_FLOOR_RARE,
            "dice_ratio_min": instruments.DICE_RATIO_MIN}


def train_facts(result: TrainResult) -> dict:
    """The main run's device and prediction target, for the prose."""
    tc = load_generator(result.model_dir).config["train_config"]
    return {"train_device": result.device, "prediction": str(tc["prediction_type"]).replace("_", "-")}


def train_main(runs_root, *, steps: int, batch_size: int, preset: str = "small", lr: float = 1e-4,
               warmup: int | None = None, seed: int = 0, device: str = "auto", judge_steps: int = 300,
               n_val: int = 8, curve_evals: int = 4, sampler: str = "dpm", sampler_steps: int = 10,
               low_res_share: float = 0.0, mixed_precision: str = "auto", compile: bool = False) -> TrainResult:
    """Train (or reuse) Diff-Lung with CBMAT on the training split: one-hot masks, cosine-annealed 1 - f_i, scored on
    the validation split `curve_evals` times while it trains (`difflung.training_curves`; chapter 4 reads that curve
    and trains it on when it has not plateaued).

    Args:
        runs_root: the profile's runs folder (chapter 1's dataset); the model goes to `runs.main_model_dir`.
        steps, batch_size, preset, lr, warmup, low_res_share, mixed_precision: `TrainConfig` fields (the
            profile's). seed: training seed.
        device: "auto" (GPU when there is one), "cpu" or "cuda"; bf16 and channels_last on GPU.
        judge_steps, n_val, curve_evals, sampler, sampler_steps: how the curve is scored. compile: torch.compile
            on GPU.
    Returns:
        the `TrainResult`, its `wall_s` the training's wall time summed over the curve's segments.
    """
    from difflung.training_curves import train_curve

    dev = resolve_device(device)
    cfg = diffusion_config(MODEL, preset=preset, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup,
                           low_res_share=low_res_share, mixed_precision=mixed_precision, seed=seed, compile=compile)
    ds, main = Dataset(runs.phantom_dataset_dir(runs_root)), runs.main_model_dir(runs_root)
    shared = runs.model_dir(runs.chapter_dir(runs_root, runs.MASK_ABLATION), "cbmat")
    if not trained_with(main, ds, cfg) and trained_with(shared, ds, cfg):
        with atomic_dir(main) as tmp:  # chapter 2's CBMAT run is this model: take it rather than train it again
            shutil.copytree(shared, tmp, dirs_exist_ok=True)
    curve = train_curve(common.curve_job(runs_root, MODEL, cfg, main, judge_steps=judge_steps, seed=seed,
                                         n_val=n_val, curve_evals=curve_evals, max_budgets=1, sampler=sampler,
                                         sampler_steps=sampler_steps, device=dev))
    result = train_diffusion(ds, cfg, curve.folder, device=dev, progress=False)
    result.wall_s = float(sum(p["wall_s"] for p in curve.points))
    return result


def _final_loss(result: TrainResult) -> float:
    loss = pd.read_csv(result.loss_csv)["loss"]
    return float(loss.tail(max(len(loss) // 10, 1)).mean())


RECIPE_NAMES = {"lr": "learning rate (AdamW)", "warmup": "warm-up steps", "prediction_type": "prediction target",
                "snr_gamma": "min-SNR loss weighting (gamma)", "ema_decay": "EMA of the weights (decay)",
                "batch_size": "batch size", "mixed_precision": "precision", "weight_decay": "weight decay",
                "grad_clip": "gradient clipping (max norm)",
                "low_t_share": "share of timesteps from the least noisy tenth",
                "low_res_share": "share of the steps trained at half the size (progressive resolution)"}


def _setting(key: str, value) -> str:
    """A recipe value in words (no Python None, no identifiers)."""
    if value is None:
        return "10 % of the steps, at most 500" if key == "warmup" else "none"
    words = {"v_prediction": "v (velocity)", "epsilon": "epsilon (the noise)", "auto": "bf16 on a GPU, fp32 on a CPU",
             "no": "fp32", "bf16": "bf16"}
    return words.get(value, sig(value) if isinstance(value, float) else str(value))


def table_recipe(result: TrainResult) -> pd.DataFrame:
    """The main run's training settings against the parent's published recipe (`difflung.diffusion.recipes`),
    where they differ: what difflung changes, each lever measured by `benchmarks/bench_convergence.py`."""
    from difflung.diffusion.recipes import recipe

    tc, parent = load_generator(result.model_dir).config["train_config"], recipe("parent")
    rows = [{"setting": RECIPE_NAMES.get(k, k), "parent (Segmentation-Guided Diffusion)": _setting(k, v),
             "this run": _setting(k, tc.get(k))} for k, v in parent.items() if tc.get(k) != v]
    return pd.DataFrame(rows, columns=["setting", "parent (Segmentation-Guided Diffusion)", "this run"]
                        ).set_index("setting")


def table_training(result: TrainResult) -> pd.DataFrame:
    """Device, steps, wall time, throughput, peak memory, parameters and final loss of the main run."""
    g = load_generator(result.model_dir)
    tc, size = g.config["train_config"], g.config["sample_size"]
    mem = "GPU, allocated" if "cuda" in result.device else "process peak RSS"
    rows = {
        "device": result.device, "preset": tc["preset"], "parameters (M)": g.params / 1e6,
        "image size": f"{size} x {size}", "steps x batch": f"{result.steps} x {tc['batch_size']}",
        "wall time (s)" + (" (reused from an earlier run)" if result.reused else ""): result.wall_s,
        "training images / s": result.images_per_s, f"peak memory (MiB, {mem})": result.peak_mem_bytes / 2**20,
        "final loss (mean of last 10% of steps)": _final_loss(result)}
    return pd.DataFrame({"value": {k: sig(v) if isinstance(v, float) else v for k, v in rows.items()}})


def figure_loss(result: TrainResult, run_dir, *, smooth: int = 20, seed: int = 0):
    """Training loss (raw and running mean) with the learning rate."""
    df = pd.read_csv(result.loss_csv)
    fig, ax = plt.subplots(figsize=(6, 3.2))
    ax.plot(df["step"], df["loss"], color="0.75", lw=0.7, label="per step")
    ax.plot(df["step"], df["loss"].rolling(smooth, min_periods=1).mean(), color="C0", label=f"running mean ({smooth})")
    ax.set(yscale="log", xlabel="training step", ylabel="training loss")
    ax2 = ax.twinx()
    ax2.plot(df["step"], df["lr"], color="C1", lw=1, ls="--")
    ax2.set_ylabel("learning rate", color="C1")
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    save_figure(fig, Path(run_dir) / "cbmat_loss.png", seed=seed)
    return fig


def write_cost(result: TrainResult, run_dir) -> Path:
    """Wall time, throughput, peak memory and device of the main run, with provenance, to `<run_dir>/cost.json`."""
    meta = load_generator(result.model_dir).config
    return write_json_atomic(Path(run_dir) / "cost.json", {
        "device": result.device, "wall_s": result.wall_s, "images_per_s": result.images_per_s,
        "peak_mem_bytes": result.peak_mem_bytes, "steps": result.steps, "reused": result.reused,
        "provenance": provenance(config=meta["train_config"], seed=meta["seed"])})


def evaluate(runs_root, run_dir, result: TrainResult, *, judge_steps: int, n_test: int, sampler: str,
             sampler_steps: int, seeds=(0,), seed: int = 0, batch_size: int = 32, device: str = "auto",
             progress: bool = False) -> scoring.Scored:
    """Generate the test subset's masks with the main model for every sampling seed and score them (PSNR, SSIM,
    the judge's Dice; `difflung.judging.scoring`). Writes `per_image.csv` and `metrics.csv` (steps, final loss, and
    full/body/lung PSNR and SSIM with patient-level intervals, seed -1)."""
    def metric_rows(scored, gens):
        rows = [{"model": MODEL, "metric": m, "class": "all", "seed": gens[0].train_seed, "value": float(v)}
                for m, v in (("train_steps", result.steps), ("final_loss", _final_loss(result)))]
        for r in regions(scored, seed=seed).itertuples():
            rows.append({"model": MODEL, "metric": r.metric if r.region == "full" else f"{r.metric}_{r.region}",
                         "class": "all", "seed": -1, "value": r.mean, "lo": r.lo, "hi": r.hi, "n": r.patients})
        return rows

    return common.evaluate(runs_root, run_dir, [(MODEL, result.model_dir)], judge_steps=judge_steps, n_test=n_test,
                           sampler=sampler, sampler_steps=sampler_steps, seeds=seeds, seed=seed,
                           batch_size=batch_size, device=device, progress=progress, metric_rows=metric_rows).scored


def check(runs_root, run_dir, scored: scoring.Scored, *, sampler: str, steps: int, seed: int = 0):
    """Measurable classes (judge floors, chapter 1's HU signature) and the main model's convergence criteria
    (`common.check`), written to `<run_dir>/criteria.json`. Returns (measurable, results)."""
    ds = common.open_dataset(runs_root)
    return common.check(runs_root, run_dir, scored, [MODEL], seed=seed, dataset=ds, size=ds.size,
                        test_patients=len(set(scored.patient)), sampler=sampler, steps=steps)


def table_measurable(scored: scoring.Scored, measurable) -> pd.DataFrame:
    """Per class scored: the judge's Dice on the real test slices, its floor, measurable or why not."""
    return criteria_tables.measurable_table(scored, measurable)


def run_facts(scored: scoring.Scored) -> dict:
    """The evaluation's facts for the prose: test slices, test patients, sampling seeds, the interval's level."""
    return {"n_test_slices": len(scored.index), "n_test_patients": len(set(scored.patient)),
            "n_seeds": len({k[3] for k in scored.images if k[0] == MODEL}), "confidence": f"{stats.CONFIDENCE:.0%}"}


def table_criteria(results) -> pd.DataFrame:
    """The main model's convergence criteria: value, threshold, met."""
    return results[MODEL]["table"].set_index("criterion")


def table_power(results) -> pd.DataFrame:
    """Whether the instruments can see known flaws (`criteria_tables.power_table`): the real-vs-generated classifier
    on the main model's slices and on each positive control (real test slices 40 HU brighter inside the lung;
    blurred), with the judge-feature Fréchet distance, precision, recall, density and coverage of each set."""
    return table(criteria_tables.power_table(results[MODEL]))


def criteria_facts(results) -> dict:
    """Whether the main model converged, as one sentence for the prose."""
    return {"converged_sentence": criteria_tables.sentence(display_name(MODEL), results[MODEL])}


def table_memorisation(results):
    """The memorisation check (reported, not a criterion), its flagged share as a percentage."""
    return table(criteria_tables.memorisation_table(results, {MODEL: display_name(MODEL)}),
                 percent=[criteria_tables.MEMORISATION_FLAGGED])


def table_judge_errors(runs_root, scored: scoring.Scored, measurable, *, judge_steps: int, seed: int = 0,
                       device: str = "auto") -> pd.DataFrame:
    """Where the judge's false positives of each measurable rare class lie, by the mask's class, on the real test
    slices and on the main model's generations of the same masks (first sampling seed): the judge Dice ratio's
    shortfall read as image content (`quality.judge_errors`). Columns: pixels on real and generated."""
    ds, dev = Dataset(runs.phantom_dataset_dir(runs_root)), resolve_device(device)
    seg = scoring.judge(ds, runs.judge_dir(runs_root), steps=judge_steps, seed=seed, device=dev)  # finished: reused
    rare = [c for c, (ok, _) in measurable.items() if ok and L.BY_NAME[c].pathology]
    if not rare:
        return pd.DataFrame({"note": ["no rare class is measurable in this run"]},
                            index=pd.Index(["rare classes"], name="judge says"))
    t = judge_errors(seg, scored.real, scored.generated(MODEL), scored.labels, rare)
    t.index = t.index.set_names(["judge says", "mask says"])
    return t.rename(columns={"real": "real slices", "generated": "generated slices"})


def table_texture(scored: scoring.Scored) -> pd.DataFrame:
    """Fine texture per class (`quality.texture_ratio`: high-pass HU standard deviation inside the class), real
    test slices against the main model's generations of the same masks (first sampling seed), and their ratio."""
    present = [L.BY_ID[int(i)].name for i in np.unique(scored.labels) if int(i) != L.BACKGROUND]
    t = texture_ratio(to_hu(scored.generated(MODEL)), to_hu(scored.real), scored.labels, present)
    return t.rename(columns={"real": "real (HU)", "generated": "generated (HU)", "ratio": "generated / real"})


def regions(scored: scoring.Scored, seed: int = 0) -> pd.DataFrame:
    """PSNR and SSIM full-frame, inside the body and inside the lung: each slice averaged over sampling seeds,
    mean with a patient-level bootstrap interval (`stats.slice_intervals`)."""
    return stats.slice_intervals(region_rows(scored, MODEL), ["region", "metric"],
                                 generator=np.random.default_rng(seed))


def table_regions(scored: scoring.Scored, seed: int = 0) -> pd.DataFrame:
    """`regions` as a table: region (rows) by PSNR (dB) and SSIM, "mean [95 % interval]" at 3 significant figures."""
    r = regions(scored, seed).assign(cell=lambda d: [interval(*v) for v in zip(d["mean"], d["lo"], d["hi"])])
    t = r.pivot(index="region", columns="metric", values="cell").reindex(["full", "body", "lung"])
    return t.rename(columns={"psnr": "PSNR (dB)", "ssim": "SSIM"}, index={"full": "full frame"})


def figure_samples(scored: scoring.Scored, run_dir, *, n: int = 6):
    """For the `n` scored test masks richest in rare classes: the mask over the real slice, the real slice,
    and the scored generation of every sampling seed (lung window, HU colour bar)."""
    pos = scoring.rare_rich(scored.labels, n)
    real = to_hu(scored.real[pos])
    seeds = sorted({k[3] for k in scored.images if k[0] == MODEL})
    rows = [("mask", real, scored.labels[pos]), ("phantom (truth)", real, None)]
    rows += [(f"seed {s}", to_hu(scored.generated(MODEL, seed=s)[pos]), None) for s in seeds]
    fig = slice_grid(rows, np.unique(scored.labels).tolist(), cell=1.6)
    save_figure(fig, Path(run_dir) / "cbmat_samples.png", config={"test_slices": scored.index[pos].tolist()},
                seed=seeds[0])
    return fig


def figure_hu(scored: scoring.Scored, run_dir, per_class: int = 5000):
    """Histograms of HU per class, generated (first sampling seed) against real pixels under the same masks."""
    import seaborn as sns

    hu = {"real": to_hu(scored.real), "generated": to_hu(scored.generated(MODEL))}
    names = [L.BY_ID[c].name for c in np.unique(scored.labels) if c != L.BACKGROUND]
    fig, axes = plt.subplots(1, len(names), figsize=(2.5 * len(names), 2.8), squeeze=False)
    for ax, name in zip(axes[0], names):
        sel = scored.labels == L.class_id(name)
        df = pd.concat([pd.DataFrame({"source": k, "hu": v[sel][np.linspace(0, sel.sum() - 1, min(per_class,
                        sel.sum())).astype(int)]}) for k, v in hu.items()])  # evenly taken: no randomness
        sns.histplot(df, x="hu", hue="source", bins=40, binrange=(-1050, 450), stat="density", element="step",
                     common_norm=False, ax=ax, legend=ax is axes[0, -1],
                     palette={"real": "0.3", "generated": L.BY_NAME[name].color})
        if L.BY_NAME[name].hu_range:
            ax.axvspan(*L.BY_NAME[name].hu_range, color="grey", alpha=0.15, lw=0)
        ax.set(title=name, xlabel="HU", ylabel="", yticks=[])
    fig.tight_layout()
    save_figure(fig, Path(run_dir) / "cbmat_hu_histograms.png", config={"test_slices": scored.index.tolist()})
    return fig


def scope(profile: str, scored: scoring.Scored, measurable, results) -> Scope:
    """The chapter's "What this run can and cannot show" box, from its own numbers."""
    seeds = sorted({k[3] for k in scored.images})
    s = Scope(profile, facts={"image size": f"{scored.real.shape[-1]} px",
                              "test patients": str(len(set(scored.patient))), "test slices": str(len(scored.index)),
                              "sampling seeds": ", ".join(map(str, seeds)), "training seeds": "1"})
    ok = [c for c, (m, _) in measurable.items() if m]
    s.can.append("Whether the main model meets its convergence criteria on the test masks, and its image quality "
                  "(PSNR/SSIM, full frame, body, lung) with patient-level intervals.")
    if ok:
        s.can.append(f"Mask faithfulness of {', '.join(ok)}: the judge meets its floor there.")
    s.cannot += criteria_tables.cannot_show(measurable, results, {MODEL: display_name(MODEL)})
    s.cannot.append("Variation over training seeds: this chapter trains one model.")
    s.cannot += smoke_caveat(profile)
    return s
