"""Chapter 4, baseline comparison: Pix2Pix, SPADE, Seg-Guided Diffusion and Diff-Lung (CBMAT) on the same data.

Each function is one section of `notebooks/04_baseline_comparison.py`:

    cmp = ch.open_comparison(runs_root, run_dir, seed=seed, n_seeds=n_seeds, min_seeds=min_seeds, gan_size=gan_size,
                             comparators=[...])
    ch.tune_segguided(cmp, levers=[...], ...)     # Seg-Guided's recipe chosen on validation
    ch.table_models(ch.train_models(cmp, ...))     # every generator to its validation plateau (up to max_budgets)
    ch.check_capacity(cmp, steps=...); ch.figure_curves(cmp); ch.figure_gan_losses(cmp)
    scored = ch.evaluate(cmp, judge_steps=..., n_test=..., sampler=..., sampler_steps=..., seeds=..., ...)
    s = ch.summary(run_dir, seed); ch.table_instruments(run_dir, s); ch.table_criteria(run_dir)
    ch.table_realism_by_seed(run_dir); ch.table_quality(s); ch.table_comparisons(ch.comparisons(runs_root, seed))
    ch.table_faithfulness(run_dir, s)
    ch.table_hu(run_dir); ch.figure_samples(cmp, scored); ch.table_cost(run_dir); ch.figure_quality_cost(run_dir, s)
    ch.scope(profile, run_dir)    # the "What this run can and cannot show" box

Diff-Lung of the main seed is chapter 3's model when it fits this dataset and seed; Seg-Guided (uniform p = 0.5,
one k/255 mask channel) gets its network and budget, with the recipe lever validation chose; Pix2Pix and SPADE the
same steps x batch. Every generator is scored on the validation patients while it trains and trains on past its
budget until it plateaus (`difflung.training_curves`, `difflung.judging.plateau`), up to the profile's cap; a
generator that fails the capacity check (`difflung.capacity`) makes its comparisons a defect, not a result. Scores follow
`difflung.judging.scoring` (same slices and noise as chapter 3). Unit of every interval: the test patient
(`stats.slice_intervals`). Classes are judged only where `criteria.measurable_classes` allows; whether each
generator met its convergence criteria (`criteria.json`) is noted beside the comparisons, never a gate.
`metrics.csv` rows: full-frame psnr/ssim (what `difflung.judging.claims` reads), psnr_body/ssim_body/psnr_lung/
ssim_lung, dice, hu_w1 per class, and cost rows (slice -1); model window HU [-1000, 400] as [-1, 1] (data range 2.0).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from difflung.judging import criteria, instruments, realism as quality, reported, scoring, stats
from difflung.core import runs
from difflung import labels as L
from difflung.baselines import read_loss_log
from difflung.data.dataset import Dataset
from difflung.judging.cost import generator_cost
from difflung.judging.metrics import DATA_RANGE
from difflung.generators import diffusion_config, display_name, gan_config, load_generator
from difflung.core.metrics_csv import read_metrics
from difflung.core.parallel import run_jobs
from difflung.plots import cost_scatter, interval, pct, plt, save_figure, summary_cell, window_name, zoom_grid
from difflung.core.provenance import device_description, provenance, resolve_device, write_json_atomic
from difflung.chapters import common, criteria_tables
from difflung.chapters.scope import Scope, glue_facts, smoke_caveat  # noqa: F401  (glue_facts: for the page)

MODELS = ("pix2pix", "spade", "segguided", "difflung")  # the poster's four
# matched comparators a profile may add (`comparators`): "uniform" is Diff-Lung's network and one-hot masks with the
# parent's uniform p = 0.5 ablation, which separates "one-hot against k/255" from "class-balanced against uniform"
COMPARATORS = ("uniform",)
QUALITY = {"psnr": "PSNR (dB)", "ssim": "SSIM", "psnr_body": "PSNR body (dB)", "ssim_body": "SSIM body",
           "psnr_lung": "PSNR lung (dB)", "ssim_lung": "SSIM lung"}
MEASURED = "measured: verdict in the results chapter (Holm across the run's claims)"


@dataclass
class Setup:
    """State shared by the chapter's sections: inputs, seeds, device and the model folders found or trained."""

    dataset: Dataset
    runs_root: Path
    run_dir: Path
    seeds: list[int]
    gan_size: str
    device: str
    workers: int = 1  # models trained at once on a CPU (`difflung.core.parallel.run_jobs`)
    models: dict = field(default_factory=dict)  # key -> {seed: folder}
    budget: dict = field(default_factory=dict)  # steps, batch_size shared by all models
    notes: dict = field(default_factory=dict)  # key -> how the model was obtained
    curves: dict = field(default_factory=dict)  # key -> {seed: training_curves.CurveResult}
    base_config: dict = field(default_factory=dict)  # the diffusion models' shared TrainConfig fields
    segguided_lever: str = "shared"  # Seg-Guided's recipe lever chosen on validation (`tune_segguided`)
    comparators: tuple = ()  # matched comparators trained beside the four (`COMPARATORS`)

    @property
    def keys(self) -> tuple:
        """Every generator of the chapter: the poster's four, then the comparators."""
        return MODELS + tuple(self.comparators)

    @property
    def seed(self) -> int:
        return self.seeds[0]

    def model_dir(self, key: str, seed: int) -> Path:
        """`<run_dir>/models/<key>` for the main seed, `<key>-seed<k>` for the others."""
        return runs.model_dir(self.run_dir, key, None if seed == self.seed else seed)


def open_comparison(runs_root, run_dir, *, seed: int, n_seeds: int = 1, min_seeds: int = 1, gan_size: str = "S",
                    device: str = "auto", workers: int = 1, comparators=()) -> Setup:
    """Open the phantom dataset of chapter 1 and fix the seeds, GAN size and device of the chapter.

    Args:
        runs_root: the run's root (`runs/<profile>`). run_dir: this chapter's folder.
        seed, n_seeds: training seeds seed, seed + 1, ..., seed + n_seeds - 1.
        min_seeds: the fewest training seeds the profile accepts.
        gan_size: registry size of Pix2Pix and SPADE (`difflung.baselines.registry.BASELINES`: T, S, B, L).
        device: "auto", "cpu" or "cuda".
        workers: models trained at once on a CPU, one thread each (`difflung.core.parallel.run_jobs`).
        comparators: matched comparators trained and scored beside the four (`COMPARATORS`), every seed.
    """
    unknown = [c for c in comparators if c not in COMPARATORS]
    if unknown:
        raise ValueError(f"comparators {unknown}: known are {', '.join(COMPARATORS)}")
    if n_seeds < min_seeds:
        raise ValueError(f"n_seeds={n_seeds}: this profile needs at least {min_seeds} training seeds")
    runs_root, run_dir = Path(runs_root), Path(run_dir)
    ds = Dataset(runs.phantom_dataset_dir(runs_root))
    gan_config("pix2pix", gan_size)  # a clear error for an unknown size, before any training
    run_dir.mkdir(parents=True, exist_ok=True)
    return Setup(ds, runs_root, run_dir, list(range(seed, seed + n_seeds)), gan_size, resolve_device(device),
                 int(workers), comparators=tuple(comparators))


# ---------------------------------------------------------------------------------------------------------------
# models

def _main_model(cmp: Setup):
    """Chapter 3's Diff-Lung folder and TrainConfig when it fits this dataset and seed, else (None, None)."""
    from dataclasses import fields

    from difflung.diffusion import TrainConfig

    ch3 = runs.main_model_dir(cmp.runs_root)
    if not (ch3 / "difflung_config.json").is_file():
        return None, None
    meta = json.loads((ch3 / "difflung_config.json").read_text())
    tc = meta.get("train_config", {})
    fits = (tc.get("strategy") == "cbmat" and tc.get("mask_mode") == "onehot" and tc.get("seed") == cmp.seed
            and meta.get("dataset", {}).get("sha256") == cmp.dataset.manifest["splits"]["train"]["sha256"]
            and not set(tc) - {f.name for f in fields(TrainConfig)})  # a model of another difflung version: retrain
    return (ch3, TrainConfig(**tc)) if fits else (None, None)


def train_models(cmp: Setup, *, preset: str = "small", steps: int = 300, batch_size: int = 8, judge_steps: int = 300,
                 n_val: int = 8, curve_evals: int = 4, max_budgets: int = 3, sampler: str = "dpm",
                 sampler_steps: int = 10) -> pd.DataFrame:
    """Find or train every generator and training seed of the chapter, each until it stops improving on the
    validation split (`difflung.training_curves`: `curve_evals` evaluations per budget; a generator not plateaued
    at its budget trains on, up to `max_budgets` budgets, and is compared wherever it stopped).

    Diff-Lung's configuration is chapter 3's when its model fits this dataset and seed (then `preset`, `steps` and
    `batch_size` are unused, and its curve is chapter 3's first budget); Seg-Guided uses the same configuration
    with its registry settings; Pix2Pix and SPADE get the same steps x batch per budget (one GAN step updates the
    discriminator and the generator once each, as in the originals). All jobs share one pool of `cmp.workers`,
    longest first (diffusion, then SPADE, then Pix2Pix). Finished curves are read back, not retrained. The curve
    points go to `<run_dir>/training_curves.csv` (scores; deterministic) and `training_cpu.csv` (CPU seconds;
    measured). Returns one row per model and seed: where it comes from, budgets trained, steps, batch, images
    seen, parameters, training CPU minutes, how training ended.
    """
    from difflung.judging import plateau
    from difflung.training_curves import train_curve

    reused, base = _fix_base(cmp, preset, steps, batch_size)
    steps, batch = base["steps"], base["batch_size"]
    cmp.budget = {"steps": steps, "batch_size": batch, "max_budgets": max_budgets}
    cmp.notes["difflung"] = ("chapter 3's model for the main seed" if reused else
                             "trained here (no chapter 3 model for this dataset and seed)")
    cmp.notes["segguided"] = ("trained here: Diff-Lung's network and budget, single k/255 mask channel, uniform "
                              f"p=0.5, {SEGGUIDED_LEVERS[cmp.segguided_lever]} (chosen on validation)")
    curve = dict(judge_steps=judge_steps, seed=cmp.seed, n_val=n_val, curve_evals=curve_evals,
                 max_budgets=max_budgets, sampler=sampler, sampler_steps=sampler_steps, device=cmp.device)
    jobs = []  # (key, seed, CurveJob), in the order of the table
    lever = _lever(cmp.segguided_lever, base)
    for key in ("difflung", "segguided"):
        for s in cmp.seeds:
            cfg = diffusion_config(key, **{**base, **(lever if key == "segguided" else {}), "seed": s})
            own = cmp.model_dir(key, s)
            first = (reused if (key == "difflung" and s == cmp.seed and reused) else
                     _lever_folder(cmp, cmp.segguided_lever) if (key == "segguided" and s == cmp.seed) else own)
            jobs.append((key, s, common.curve_job(cmp.runs_root, key, cfg, first, later=own, **curve)))
    ch2 = runs.chapter_dir(cmp.runs_root, runs.MASK_ABLATION)
    for key in cmp.comparators:  # chapter 2's model of the main seed when it fits (train_curve checks), else its own
        cmp.notes[key] = "Diff-Lung's network, recipe and budget, one-hot masks, uniform p=0.5 ablation"
        for s in cmp.seeds:
            own = cmp.model_dir(key, s)
            first = runs.model_dir(ch2, key) if s == cmp.seed else own
            jobs.append((key, s, common.curve_job(cmp.runs_root, key, diffusion_config(key, **{**base, "seed": s}),
                                                  first, later=own, **curve)))
    for key in ("pix2pix", "spade"):
        for s in cmp.seeds:
            cfg = gan_config(key, cmp.gan_size, steps=steps, batch_size=batch, seed=s, device=cmp.device,
                             log_every=max(1, steps // 50))
            cmp.notes[key] = f"trained here ({cfg.model}), same steps x batch as the diffusion models per budget"
            jobs.append((key, s, common.curve_job(cmp.runs_root, key, cfg, cmp.model_dir(key, s), **curve)))
    rank = {"difflung": 0, "segguided": 0, "uniform": 0, "spade": 1, "pix2pix": 2}  # cost per step, largest first
    longest_first = sorted(range(len(jobs)), key=lambda i: rank[jobs[i][0]])
    done = run_jobs(train_curve, [jobs[i][2] for i in longest_first], workers=cmp.workers, device=cmp.device)
    results = dict(zip(longest_first, done))
    rows = []
    for i, (key, s, job) in enumerate(jobs):
        r = results[i]
        cmp.models.setdefault(key, {})[s] = r.folder
        cmp.curves.setdefault(key, {})[s] = r
        g = load_generator(r.folder, key=key, dataset=cmp.dataset)
        other = {"difflung": reused, "uniform": runs.model_dir(ch2, "uniform")}.get(key)
        chapter = "chapter 3" if key == "difflung" else "chapter 2"
        from_other = other is not None and Path(r.folders[0]) == Path(other)
        rows.append({"model": display_name(key), "seed": s,
                     "source": (chapter + (", trained on here" if r.phases > 1 else "")) if from_other
                     else "this chapter",
                     "budgets": r.phases, "steps": r.points[-1]["step"], "batch": job.config.batch_size,
                     "images seen": r.points[-1]["images"], "params (M)": g.params / 1e6,
                     "train CPU min": r.points[-1]["cpu_min"],
                     "training ended": plateau.status(r.plateaued, r.phases, max_budgets)})
    _write_curves(cmp)
    return pd.DataFrame(rows)


def _fix_base(cmp: Setup, preset: str, steps: int, batch_size: int):
    """(chapter 3's folder or None, the diffusion models' shared TrainConfig fields): chapter 3's configuration when
    its model fits this dataset and seed, else the profile's; kept in `cmp.base_config`."""
    reused, base = _main_model(cmp)
    base = asdict(base) if base else dict(preset=preset, steps=steps, batch_size=batch_size, seed=cmp.seed)
    for k in ("mask_mode", "strategy", "checkpoint_every", "init_from"):
        base.pop(k, None)
    cmp.base_config = dict(base)
    return reused, base


# Seg-Guided's tuning levers (at least those Diff-Lung's recipe was chosen over), in order of preference for the
# one-standard-error rule: the shared recipe first, so a difference validation cannot resolve keeps it
SEGGUIDED_LEVERS = {
    "shared": "the shared recipe (Diff-Lung's)",
    "uniform-t": "the shared recipe with timesteps uniform over the schedule (low_t_share 0)",
    "half-lr": "the shared recipe at half the learning rate",
    "parent": "the parent's published recipe (AdamW 1e-4, 500 warm-up steps at most, epsilon target, no EMA, "
              "batch 16), over the same number of images",
}


def _lever(name: str, base: dict) -> dict:
    """The TrainConfig fields a Seg-Guided lever changes on top of the shared `base`."""
    from difflung.diffusion.recipes import recipe

    if name == "shared":
        return {}
    if name == "uniform-t":
        return {"low_t_share": 0.0}
    if name == "half-lr":
        return {"lr": base.get("lr", recipe("difflung")["lr"]) / 2}  # the shared recipe's unless the profile sets one
    if name == "parent":
        images = base["steps"] * base["batch_size"]
        return {**recipe("parent"), "warmup": None, "steps": max(1, images // recipe("parent")["batch_size"])}
    raise ValueError(f"unknown Seg-Guided lever {name!r}; known: {', '.join(SEGGUIDED_LEVERS)}")


def _lever_folder(cmp: Setup, name: str) -> Path:
    """The shared recipe's model is Seg-Guided's main-seed model; the other levers train beside it."""
    return cmp.model_dir("segguided", cmp.seed) if name == "shared" else cmp.run_dir / "tuning" / f"segguided-{name}"


def tune_segguided(cmp: Setup, *, levers=tuple(SEGGUIDED_LEVERS), preset: str = "small", steps: int = 300,
                   batch_size: int = 8, judge_steps: int = 300, n_val: int = 8, curve_evals: int = 4,
                   sampler: str = "dpm", sampler_steps: int = 10) -> pd.DataFrame:
    """Give Seg-Guided the tuning Diff-Lung's recipe had: train it (main seed, one budget) with each of `levers`
    (`SEGGUIDED_LEVERS`), score each on the validation patients while it trains (`difflung.training_curves`), and
    keep the first lever within one standard error of the best final score (`plateau.one_se_choice`); every
    Seg-Guided seed of `train_models` trains with it. The test split is not read. Written to
    `<run_dir>/segguided_tuning.json`. Returns one row per lever."""
    from difflung.judging.plateau import one_se_choice
    from difflung.training_curves import train_curve

    levers = list(levers)
    if not levers:
        raise ValueError("tune_segguided: no lever given")
    _, base = _fix_base(cmp, preset, steps, batch_size)
    if len(levers) == 1:  # nothing to choose: the model trains with the others in `train_models`
        _lever(levers[0], base)  # a clear error for an unknown lever
        cmp.segguided_lever = levers[0]
        return pd.DataFrame([{"lever": SEGGUIDED_LEVERS[levers[0]], "chosen": "yes (the profile gives one lever: "
                              "nothing was compared)"}]).set_index("lever")
    jobs = [common.curve_job(cmp.runs_root, "segguided",
                             diffusion_config("segguided", **{**base, **_lever(n, base), "seed": cmp.seed}),
                             _lever_folder(cmp, n), judge_steps=judge_steps, seed=cmp.seed, n_val=n_val,
                             curve_evals=curve_evals, max_budgets=1, sampler=sampler, sampler_steps=sampler_steps,
                             device=cmp.device) for n in levers]
    results = run_jobs(train_curve, jobs, workers=cmp.workers, device=cmp.device)
    scores = {n: (r.points[-1]["score"], r.points[-1]["se"]) for n, r in zip(levers, results)}
    cmp.segguided_lever = one_se_choice(scores)
    write_json_atomic(cmp.run_dir / "segguided_tuning.json", {
        "chosen": cmp.segguided_lever, "rule": "the first lever within one standard error of the best validation "
        "score (levers in order of preference)", "levers": {n: {"description": SEGGUIDED_LEVERS[n],
                                                                "score": v[0], "se": v[1]} for n, v in scores.items()},
        "provenance": provenance(config={"base": base, "levers": levers}, seed=cmp.seed)})
    rows = [{"lever": SEGGUIDED_LEVERS[n], "steps": r.points[-1]["step"], "images seen": r.points[-1]["images"],
             "validation judge-Dice ratio": scores[n][0], "standard error": scores[n][1],
             "chosen": "yes" if n == cmp.segguided_lever else ""} for n, r in zip(levers, results)]
    return pd.DataFrame(rows).set_index("lever")


def _write_curves(cmp: Setup) -> None:
    from difflung.judging import plateau

    points = pd.DataFrame([p for by_seed in cmp.curves.values() for r in by_seed.values() for p in r.points])
    keep = ["model", "seed", "phase", "step", "images", "score", "se", "patients"]
    write_json_atomic(cmp.run_dir / runs.PLATEAU_FILE, {
        "rule": plateau.RULE, "score": plateau.SCORE,
        "curves": {k: {str(s): {"plateaued": r.plateaued, "budgets": r.phases,
                                "folder": os.path.relpath(r.folder, cmp.runs_root)}
                       for s, r in by_seed.items()} for k, by_seed in cmp.curves.items()},
        "budget": cmp.budget})
    points[keep].sort_values(["model", "seed", "step"]).to_csv(cmp.run_dir / "training_curves.csv", index=False,
                                                              float_format="%.6g")
    points[["model", "seed", "step", "cpu_s", "wall_s", "cpu_min"]].sort_values(["model", "seed", "step"]).to_csv(
        cmp.run_dir / "training_cpu.csv", index=False, float_format="%.6g")


def check_capacity(cmp: Setup, *, steps: int, n_slices: int = 8, judge_steps: int = 300, sampler: str = "dpm",
                   sampler_steps: int = 10) -> pd.DataFrame:
    """Every generator's capacity check (`difflung.capacity`), main training seed: its own configuration trained for
    `steps` on `n_slices` training slices, then the judge's lung Dice on its redrawn slices over that on the real
    ones. Written to `<run_dir>/capacity.json`, which the claims read: a comparison involving a generator that fails
    is a defect to find, not a result. Returns one row per generator."""
    from difflung.capacity import CAPACITY_MIN, CapacityJob, capacity_check
    from difflung.training_curves import JudgeSpec

    base = {k: v for k, v in cmp.base_config.items() if k not in ("mask_mode", "strategy", "init_from")}
    jobs = []
    for key in MODELS:
        lever = _lever(cmp.segguided_lever, base) if key == "segguided" else {}
        cfg = (diffusion_config(key, **{**base, **lever, "steps": steps, "seed": cmp.seed})
               if key in ("difflung", "segguided")
               else gan_config(key, cmp.gan_size, steps=steps, batch_size=base["batch_size"], seed=cmp.seed,
                               device=cmp.device, log_every=max(1, steps // 50)))
        jobs.append(CapacityJob(key, cfg, str(cmp.run_dir / "capacity" / key), str(cmp.dataset.root),
                                JudgeSpec(str(runs.judge_dir(cmp.runs_root)), judge_steps, cmp.seed),
                                n_slices=n_slices, sampler=sampler, sampler_steps=sampler_steps, device=cmp.device))
    rows = run_jobs(capacity_check, jobs, workers=cmp.workers, device=cmp.device)
    write_json_atomic(cmp.run_dir / "capacity.json", {
        "threshold": CAPACITY_MIN, "rows": {r["model"]: r for r in rows},
        "provenance": provenance(config={"steps": steps, "n_slices": n_slices}, seed=cmp.seed)})
    t = pd.DataFrame(rows)
    t["model"] = t["model"].map(display_name)
    t["passed"] = t["passed"].map({True: "yes", False: "no: a defect to find"})
    return t.set_index("model")[["slices", "steps", "lung Dice real", "lung Dice generated", "lung ratio", "passed"]]


def plateau_facts(cmp: Setup, *, capacity_steps: int, capacity_slices: int) -> dict:
    """The plateau rule, the score, the cap and the capacity check's budget, for the prose."""
    from difflung.judging import plateau

    return {"plateau_rule": plateau.RULE, "plateau_score": plateau.SCORE,
            "train_on": (f"up to {cmp.budget['max_budgets']} budgets" if cmp.budget["max_budgets"] > 1 else
                         "where a profile allows more than one budget (this one allows one, so here none does)"),
            "curve_evals": _curve_evals(cmp),
            "capacity_slices": capacity_slices, "capacity_steps": capacity_steps}


def _curve_evals(cmp: Setup) -> int:
    first = next(iter(next(iter(cmp.curves.values())).values()))
    return sum(1 for p in first.points if p["phase"] == 1)


def figure_curves(cmp: Setup):
    """Validation score against training CPU minutes for every generator and training seed
    (`difflung.judging.plateau`): each evaluation with its patient-level standard error; the point where training
    stopped is a filled star when the generator plateaued, an open circle when it was still improving at the cap."""
    from difflung.judging import plateau

    fig, ax = plt.subplots(figsize=(7.5, 3.6), layout="constrained")
    colors = dict(zip(cmp.keys, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for key in cmp.keys:
        for k, (s, r) in enumerate(sorted(cmp.curves.get(key, {}).items())):
            x = [p["cpu_min"] for p in r.points]
            y = [p["score"] for p in r.points]
            e = [0.0 if not np.isfinite(p["se"]) else p["se"] for p in r.points]
            ax.errorbar(x, y, yerr=e, color=colors[key], lw=1, alpha=0.85, capsize=2,
                        label=display_name(key) if k == 0 else None)
            ax.plot(x[-1], y[-1], marker="*" if r.plateaued else "o", ms=11 if r.plateaued else 7,
                    color=colors[key], mfc=colors[key] if r.plateaued else "white", zorder=3)
    ax.axhline(1.0, color="0.5", lw=0.8, ls=":")
    ax.set(xlabel="training CPU minutes", ylabel="validation judge-Dice ratio\n(generated / real)")
    ax.plot([], [], "k*", ms=9, label="plateaued (stopped)")
    ax.plot([], [], "ko", mfc="white", label="still improving at the cap")
    ax.legend(fontsize=7, frameon=False, loc="lower right")
    save_figure(fig, cmp.run_dir / "training_curves.png", seed=cmp.seed,
                config={"rule": plateau.RULE, "score": plateau.SCORE, "budget": cmp.budget})
    return fig


def table_models(models: pd.DataFrame) -> pd.DataFrame:
    """The models of the chapter, one row per model and training seed (`train_models`)."""
    return models.set_index(["model", "seed"])


def figure_gan_losses(cmp: Setup):
    """Training losses of Pix2Pix and SPADE (main seed): discriminator on real/fake, generator terms."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), layout="constrained")
    for ax, key in zip(axes, ("pix2pix", "spade")):
        r = cmp.curves[key][cmp.seed]  # every phase's log, steps counted from the first
        log = pd.concat([read_loss_log(f).assign(step=lambda d, k=k: d["step"] + k * cmp.budget["steps"])
                         for k, f in enumerate(r.folders)], ignore_index=True)
        for col in [c for c in log.columns if c.startswith(("d_", "g_"))]:
            ax.plot(log["step"], log[col], label=col, lw=1)
        ax.set(title=f"{display_name(key)} (seed {cmp.seed})", xlabel="step", ylabel="loss")
        ax.legend(fontsize=7, frameon=False)
    save_figure(fig, cmp.run_dir / "gan_losses.png", seed=cmp.seed,
                config={"models": {k: str(cmp.models[k][cmp.seed]) for k in ("pix2pix", "spade")}})
    return fig


# ---------------------------------------------------------------------------------------------------------------
# evaluation

def evaluate(cmp: Setup, *, judge_steps: int, n_test: int, sampler: str, sampler_steps: int, seeds=(0,),
             timing_batch: int = 8, timing_repeats: int = 2, batch_size: int = 16,
             classifier_steps: int = 300) -> scoring.Scored:
    """Generate and score the test masks with every model and training seed (`difflung.judging.scoring`), measure each
    generator's convergence criteria (main training seed, first sampling seed) and write metrics.csv,
    metrics.json and criteria.json.

    Args:
        judge_steps: training steps of the run's judge segmenter (`difflung.judging.scoring.judge`, trained once).
        n_test: test slices scored; sampler, sampler_steps: the diffusion models' solver; seeds: sampling seeds.
        timing_batch, timing_repeats: the s/image measurement (`cost.generator_cost`).
        batch_size: batch for generation. classifier_steps: the real-vs-generated classifier's training steps.
    """
    missing = [k for k in cmp.keys if k not in cmp.models]
    if missing:
        raise ValueError(f"models {missing} are not trained yet: run train_models(cmp)")
    ds = cmp.dataset
    signature = common.hu_signature(cmp.runs_root)  # before any work
    timings = {}

    def metric_rows(scored, gens):
        # region rows psnr_body, ssim_lung, ... beside the full-frame psnr/ssim rows `difflung.judging.claims` reads
        rows = [scored.rows, quality.region_metric_rows(scored), quality.hu_w1_rows(scored)]
        for g in gens:
            if g.train_seed == cmp.seed:
                c = timings[g.key] = generator_cost(g, scored.labels, device=cmp.device, timing_batch=timing_batch,
                                                    timing_repeats=timing_repeats)
                rows.append(pd.DataFrame([{"model": g.key, "train_seed": g.train_seed, "condition": "full",
                                           "seed": -1, "slice": -1, "patient": "all", "class": "all", "metric": m,
                                           "value": c[m]} for m in ("gflops_per_image", "params")]))
        return pd.concat(rows, ignore_index=True)

    folders = [(k, folder) for k in cmp.keys for folder in cmp.models[k].values()]
    ev = common.evaluate(cmp.runs_root, cmp.run_dir, folders,
                         judge_steps=judge_steps, n_test=n_test, sampler=sampler, sampler_steps=sampler_steps,
                         seeds=seeds, seed=cmp.seed, batch_size=batch_size, device=cmp.device, dataset=ds,
                         per_image=False, metric_rows=metric_rows)
    scored, path = ev.scored, ev.metrics
    settings = {"n_test": int(len(scored.index)), "sampler": sampler, "sampler_steps": sampler_steps,
                "sample_seeds": list(seeds), "timing_batch": timing_batch, "timing_repeats": timing_repeats}
    common.check(cmp.runs_root, cmp.run_dir, scored, list(cmp.keys), seed=cmp.seed,  # the main training seed
                 classifier_steps=classifier_steps, dataset=ds, signature=signature, sample_seed=list(seeds)[0])
    write_json_atomic(cmp.run_dir / "metrics.json", {
        "metrics_csv": path.name, "window_hu": list(L.MODEL_WINDOW), "data_range": DATA_RANGE, "size": ds.size,
        "test_slices": scored.index.tolist(), "test_patients": sorted(set(scored.patient.tolist())),
        "seeds": cmp.seeds, **settings, "device": device_description(cmp.device), "device_kind": cmp.device.upper(),
        "budget": cmp.budget, "notes": cmp.notes, "timings": timings,
        "models": {k: {str(s): str(p) for s, p in v.items()} for k, v in cmp.models.items()},
        "provenance": provenance(config={"gan_size": cmp.gan_size, **settings}, seed=cmp.seed, device=cmp.device),
    })
    return scored


# ---------------------------------------------------------------------------------------------------------------
# tables (DataFrames of text or numbers; the notebook shows them through `plots.table`)

# `difflung.judging.instruments`' thresholds the page quotes
INSTRUMENT_FACTS = ("JUDGE_FLOOR_ANATOMY", "JUDGE_FLOOR_RARE", "DICE_RATIO_MIN", "DICE_RATIO_MAX", "HU_W1_MAX",
                    "HU_W1_CONTRAST_MAX", "AIR_TOLERANCE_HU", "AIR_SHARE_MIN", "CLASSIFIER_ACCURACY_MAX")


def page_facts() -> dict:
    """Values the page's prose quotes before any run (glued): the interval's level and the instruments'
    thresholds (`difflung.judging.instruments`), each under its constant's name in lower case."""
    return {"confidence": pct(stats.CONFIDENCE, 2),
            **{name.lower(): getattr(instruments, name) for name in INSTRUMENT_FACTS}}


def page_run_facts(run_dir) -> dict:
    """`facts` as text for the page's prose (each quoted with `{glue:md}`)."""
    return {k: str(v) for k, v in facts(run_dir).items()}


def facts(run_dir) -> dict:
    """The run's facts for the page's prose (glued, never typed): size, test slices and patients, seeds, sampler."""
    m = json.loads((Path(run_dir) / "metrics.json").read_text())
    return {"size": m["size"], "n_test": m["n_test"], "n_patients": len(m["test_patients"]),
            "train_seeds": ", ".join(map(str, m["seeds"])), "sample_seeds": ", ".join(map(str, m["sample_seeds"])),
            "sampler": f"{m['sampler']} {m['sampler_steps']} steps", "device": m["device"],
            "timing_batch": m["timing_batch"], "window": window_name(L.MODEL_WINDOW, "model window")}


def summary(run_dir, seed: int = 0) -> pd.DataFrame:
    """Per (model, metric, class) of the per-slice rows: mean over test slices, each first averaged over sampling
    and training seeds, with a patient-level 95 % bootstrap interval (`stats.slice_intervals`)."""
    df = read_metrics(run_dir)
    df = df[(df["slice"] >= 0) & (df["condition"] == "full")]
    return stats.slice_intervals(df, ["model", "metric", "class"], generator=np.random.default_rng(seed))


def table_instruments(run_dir, s: pd.DataFrame) -> pd.DataFrame:
    """Per class: the judge's Dice on the real test slices, its floor, and whether the class can be judged (judge
    floor and chapter 1's HU signature, `criteria.measurable_classes`)."""
    return criteria_tables.judge_frame(s, criteria.read_criteria(run_dir)["measurable"])


def _run_models(run_dir) -> list[str]:
    """The generators a chapter 4 run scored, in the book's order: the poster's four, then its comparators."""
    found = set(read_metrics(run_dir)["model"])
    return [k for k in MODELS + COMPARATORS if k in found]


def _results(run_dir) -> dict:
    """criteria.json back in `criteria.check`'s form: {key: {"table", "converged", "memorisation"}}."""
    crit = criteria.read_criteria(run_dir)
    return {k: {"table": crit["tables"][k], "converged": crit["converged"][k], "memorisation": crit["memorisation"][k],
                **crit["instruments"][k]} for k in _run_models(run_dir)}


def table_criteria(run_dir) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each generator's convergence criteria (criteria.json), one column per model, and the memorisation check
    beside them (not a criterion)."""
    names = {k: f"{display_name(k)} (main seed)" for k in _run_models(run_dir)}
    return (criteria_tables.wide_table(_results(run_dir), names),
            criteria_tables.memorisation_table(_results(run_dir), names))


def table_realism_by_seed(run_dir) -> pd.DataFrame:
    """The realism of every generator per training seed and pooled: the judge's Dice ratio (generated over real
    slices) of each measurable class, and full-frame PSNR. Per seed: mean with its patient-level interval
    (`stats.slice_intervals`; the ratio's interval is the Dice interval over the real slices' mean). Pooled: the
    mean over seeds with a t-interval over training seeds (none below two seeds)."""
    df = read_metrics(run_dir)
    df = df[(df["slice"] >= 0) & (df["condition"] == "full")]
    measurable = criteria.read_criteria(run_dir)["measurable"]
    classes = [c for c, (ok, _) in measurable.items() if ok and c != "background"]
    dice = df[(df["metric"] == "dice") & df["class"].isin(classes)]
    real = dice[dice["model"] == "real"].groupby("class")["value"].mean()
    keys = _run_models(run_dir)
    per = stats.slice_intervals(dice[dice["model"].isin(keys)], ["model", "train_seed", "class"])
    per[["mean", "lo", "hi"]] = per[["mean", "lo", "hi"]].div(per["class"].map(real), axis=0)
    psnr = stats.slice_intervals(df[(df["metric"] == "psnr") & df["model"].isin(keys)], ["model", "train_seed"])
    psnr["class"] = "PSNR (dB)"
    per = pd.concat([per, psnr], ignore_index=True)
    cols = [f"judge Dice ratio, {c}" for c in classes] + ["PSNR (dB)"]
    name = lambda c: c if c == "PSNR (dB)" else f"judge Dice ratio, {c}"
    rows = []
    for k in keys:
        sel = per[per["model"] == k]
        for seed, g in sel.groupby("train_seed"):
            rows.append({"model": display_name(k), "training seed": str(int(seed)),
                         **{name(r["class"]): interval(r["mean"], r["lo"], r["hi"]) for _, r in g.iterrows()}})
        pooled = {}
        for c, g in sel.groupby("class"):
            t = stats.seed_t(g["mean"].to_numpy())
            pooled[name(c)] = interval(t.estimate, *t.interval())
        rows.append({"model": display_name(k), "training seed": f"all {sel['train_seed'].nunique()}", **pooled})
    return pd.DataFrame(rows).set_index(["model", "training seed"]).reindex(columns=cols).fillna("not measured")


def table_quality(s: pd.DataFrame) -> pd.DataFrame:
    """PSNR and SSIM full-frame, in the body and in the lung: ours as mean [patient interval], the poster's
    reported full-frame values beneath (it reports no region scores)."""
    rows = []
    for k in MODELS:
        rows.append({"model": display_name(k), "source": "ours",
                     **{n: summary_cell(s, k, m) for m, n in QUALITY.items()}})
        r = reported.IMAGE_QUALITY[k]
        rows.append({"model": display_name(k), "source": reported.LABEL, "PSNR (dB)": f"{r['psnr']:g}",
                     "SSIM": f"{r['ssim']:g}"})
    return pd.DataFrame(rows).set_index(["model", "source"]).fillna("not reported")


def _ours_cost(run_dir) -> dict:
    df, meta = read_metrics(run_dir), json.loads((Path(run_dir) / "metrics.json").read_text())
    c = df[df.metric.isin(["gflops_per_image", "params"])].pivot_table("value", "model", "metric")
    return {k: {**c.loc[k].to_dict(), **meta["timings"].get(k, {})} for k in MODELS}


def table_cost(run_dir) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Cost per model, ours (this run's size and device) beside the poster's; and the poster's cost ratios beside
    ours (`reported.cost_ratio_frame`, no threshold: the poster states none)."""
    ours = _ours_cost(run_dir)
    per_model = pd.DataFrame([{"model": display_name(k), "GFLOPs/image, ours": ours[k]["gflops_per_image"],
                               "GFLOPs/image, reported": reported.IMAGE_QUALITY[k]["gflops_per_image"],
                               "s/image, ours": ours[k]["s_per_image"],
                               "s/image, reported": reported.IMAGE_QUALITY[k]["s_per_image"],
                               "params (M), ours": ours[k]["params"] / 1e6} for k in MODELS]).set_index("model")
    return per_model, reported.cost_ratio_frame(ours).set_index(["comparison", "metric"])


def comparisons(runs_root, seed: int = 0) -> pd.DataFrame:
    """The poster's image-quality claims as `difflung.judging.claims.comparisons` measures them from this chapter's
    files (`stats.compare_slices`, unit test patient; convergence a note, never a gate), so the
    numbers equal the results chapter's, through `stats.judge_claims`. Only "not measurable" is final here: the verdicts
    are given once, in the results chapter, after Holm's correction across all the run's claims."""
    from difflung.judging import claims

    comps = [c for c, k in zip(claims.comparisons(runs_root, seed), reported.CLAIMS) if k.kind == "image quality"]
    t = stats.judge_claims(comps)
    t["status"] = [v if v.startswith("not measurable") else MEASURED for v in t["verdict"]]
    return t


def table_comparisons(t: pd.DataFrame) -> pd.DataFrame:
    """`comparisons` for the page: effect (a - b) with its patient interval beside the poster's, and the status; a
    comparison that is not measurable shows its reason and no numbers ("n/a")."""
    ok = ~t.status.str.startswith("not measurable")
    return pd.DataFrame({"ours (a - b)": [interval(e, lo, hi) if m else "n/a"
                                          for e, lo, hi, m in zip(t.estimate, t.lo, t.hi, ok)],
                         "test patients": t.n, "reported (a - b)": t.reported.map(lambda v: f"{v:.3g}"),
                         "magnitude": t.magnitude.where(ok, "n/a").fillna("n/a"), "status": t.status,
                         "training notes (not a gate)": t.convergence}).set_axis(t.claim)


def table_faithfulness(run_dir, s: pd.DataFrame) -> pd.DataFrame:
    """Mask faithfulness: the judge's Dice per class on each model's slices, mean [patient interval]; a class the
    judge cannot judge reads "not measurable" (its reason in the first column); real slices are the ceiling."""
    return criteria_tables.dice_frame(s, criteria.read_criteria(run_dir)["measurable"], [*_run_models(run_dir), "real"],
                                      display_name)


def table_hu(run_dir) -> pd.DataFrame:
    """Per-class HU Wasserstein-1 between generated and real slices (HU; mean over training and sampling seeds);
    the convergence criterion asks at most `instruments.HU_W1_MAX` for measurable classes."""
    df = read_metrics(run_dir)
    w = df[df.metric == "hu_w1"].pivot_table("value", "class", "model").reindex(columns=_run_models(run_dir))
    w = w.rename(columns=lambda k: f"{display_name(k)} (all seeds)")
    return w.reindex([n for n in L.names(range(L.NUM_IDS)) if n in w.index])


# ---------------------------------------------------------------------------------------------------------------
# figures and scope

def _rare_picks(ds: Dataset, labels: np.ndarray, n: int) -> list[tuple[int, int]]:
    """Up to n (row in `labels`, class id) pairs: the rarest pathologies first, the slice holding most of each."""
    freq = ds.frequencies("train", within="all")
    present = sorted((c for c in ds.classes if L.BY_ID[c].pathology and (labels == c).any()),
                     key=lambda c: freq.get(L.BY_ID[c].name, 0.0))
    picks = [(int((labels == c).sum((1, 2)).argmax()), c) for c in present[:n]]
    return picks or [(i, L.LUNG) for i in range(min(n, len(labels)))]  # no pathology: the first slices


def figure_samples(cmp: Setup, scored: scoring.Scored, n_masks: int = 3):
    """The same test masks through the four models (main training seed, first sampling seed: images that were
    scored) beside the phantom slice, lung window with its HU colour bar; under each row a zoom on its rare class."""
    picks = _rare_picks(cmp.dataset, scored.labels, n_masks)
    cols = [("mask", None), ("phantom (truth)", scored.real)] + [
        (display_name(k), scored.generated(k, train_seed=cmp.seed)) for k in MODELS]
    fig = zoom_grid(cols, scored.labels, picks, min_side=max(8, cmp.dataset.size // 4),
                    row_text=[f"test slice {int(scored.index[i])}\nzoom: {L.BY_ID[c].name}" for i, c in picks])
    save_figure(fig, cmp.run_dir / "samples.png", seed=cmp.seed,
                config={"test_slices": [int(scored.index[i]) for i, _ in picks], "classes": [c for _, c in picks]})
    return fig


def figure_quality_cost(run_dir, s: pd.DataFrame):
    """PSNR against GFLOPs per generated image (log x): ours (this run's size and device) with patient-level 95 %
    intervals as filled circles, the poster's reported points (`reported.COST_LABEL`) as hollow squares."""
    meta, ours = json.loads((Path(run_dir) / "metrics.json").read_text()), _ours_cost(run_dir)
    psnr, rep = s[s.metric == "psnr"].set_index("model"), reported.IMAGE_QUALITY
    fig = cost_scatter({display_name(k): (ours[k]["gflops_per_image"], *psnr.loc[k, ["mean", "lo", "hi"]])
                        for k in MODELS},
                       {display_name(k): (rep[k]["gflops_per_image"], rep[k]["psnr"]) for k in MODELS},
                       ours_label=f"ours, {meta['size']}x{meta['size']} {meta['device_kind']}",
                       reported_label=reported.COST_LABEL, title="Quality against cost",
                       xlabel="GFLOPs per generated image (log; every sampling step counted)",
                       ylabel="PSNR (dB), HU [{:g}, {:g}]".format(*L.MODEL_WINDOW))
    save_figure(fig, Path(run_dir) / "quality_vs_cost.png", config={"source": "metrics.csv + reported (poster)",
                                                                    "reported_setting": reported.COST_SETTING})
    return fig


def scope(profile: str, run_dir) -> Scope:
    """The chapter's "What this run can and cannot show" box, from its own files."""
    f, crit = facts(run_dir), criteria.read_criteria(run_dir)
    box = Scope(profile, facts={"image size": f"{f['size']} px", "test patients": str(f["n_patients"]),
                                "test slices": str(f["n_test"]), "training seeds": f["train_seeds"],
                                "sampling seeds": f["sample_seeds"]})
    box.can.append(f"PSNR and SSIM (full frame, body, lung) of the four generators on the same masks and noise, "
                   f"with intervals over {f['n_patients']} test patients.")
    box.can.append(f"Cost on this run's device ({f['device']}) at {f['size']} px, beside the poster's ratios.")
    box.cannot += criteria_tables.cannot_show(crit["measurable"], _results(run_dir),
                                              {k: display_name(k) for k in MODELS})
    need = stats.min_units(len(reported.CLAIMS))
    if f["n_patients"] < need:
        box.cannot.append(f"A tested image-quality claim: with {f['n_patients']} test patient(s) there is no "
                          f"patient-level t-test (it needs {need}), so every claim is at best inconclusive.")
    box.cannot.append(f"The poster's cost at its own setting ({reported.COST_SETTING}); ours is measured at "
                      f"{f['size']} px.")
    box.cannot += smoke_caveat(profile)
    return box
