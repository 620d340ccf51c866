"""Chapter 4, baseline comparison: Pix2Pix, SPADE, Seg-Guided Diffusion and Diff-Lung (CBMAT) on the same data.

Each function is one section of `notebooks/04_baseline_comparison.py`:

    cmp = ch.open_comparison(runs_root, run_dir, seed=seed, n_seeds=n_seeds, min_seeds=min_seeds, gan_size=gan_size)
    ch.table_models(ch.train_models(cmp, ...)); ch.figure_gan_losses(cmp)
    scored = ch.evaluate(cmp, judge_steps=..., n_test=..., sampler=..., sampler_steps=..., seeds=..., ...)
    s = ch.summary(run_dir, seed); ch.table_instruments(run_dir, s); ch.table_criteria(run_dir)
    ch.table_quality(s); ch.table_comparisons(ch.comparisons(runs_root, seed)); ch.table_faithfulness(run_dir, s)
    ch.table_hu(run_dir); ch.figure_samples(cmp, scored); ch.table_cost(run_dir); ch.figure_quality_cost(run_dir, s)
    ch.scope(profile, run_dir)    # the "What this run can and cannot show" box

Diff-Lung of the main seed is chapter 3's model when it fits this dataset and seed; Seg-Guided (uniform p = 0.5,
one k/255 mask channel) gets its network and budget, Pix2Pix and SPADE the same steps x batch. Scores follow
`difflung.judging.scoring` (same slices and noise as chapter 3). Unit of every interval: the test patient
(`stats.slice_intervals`). Classes are judged only where `criteria.measurable_classes` allows; whether each
generator met its convergence criteria (`criteria.json`) is noted beside the comparisons, never a gate.
`metrics.csv` rows: full-frame psnr/ssim (what `difflung.judging.claims` reads), psnr_body/ssim_body/psnr_lung/
ssim_lung, dice, hu_w1 per class, and cost rows (slice -1); model window HU [-1000, 400] as [-1, 1] (data range 2.0).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from difflung.judging import criteria, instruments, realism as quality, reported, scoring, stats
from difflung.core import runs
from difflung import labels as L
from difflung.baselines import read_loss_log, train_gan
from difflung.data.dataset import Dataset
from difflung.diffusion import train_diffusion
from difflung.judging.cost import generator_cost
from difflung.judging.metrics import DATA_RANGE
from difflung.generators import diffusion_config, display_name, gan_config, load_generator
from difflung.core.metrics_csv import read_metrics
from difflung.core.parallel import run_jobs
from difflung.plots import cost_scatter, interval, pct, plt, save_figure, summary_cell, window_name, zoom_grid
from difflung.core.provenance import device_description, provenance, resolve_device, write_json_atomic
from difflung.chapters import common, criteria_tables
from difflung.chapters.scope import Scope, glue_facts, smoke_caveat  # noqa: F401  (glue_facts: for the page)

MODELS = ("pix2pix", "spade", "segguided", "difflung")
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

    @property
    def seed(self) -> int:
        return self.seeds[0]

    def model_dir(self, key: str, seed: int) -> Path:
        """`<run_dir>/models/<key>` for the main seed, `<key>-seed<k>` for the others."""
        return runs.model_dir(self.run_dir, key, None if seed == self.seed else seed)


def open_comparison(runs_root, run_dir, *, seed: int, n_seeds: int = 1, min_seeds: int = 1, gan_size: str = "S",
                    device: str = "auto", workers: int = 1) -> Setup:
    """Open the phantom dataset of chapter 1 and fix the seeds, GAN size and device of the chapter.

    Args:
        runs_root: the run's root (`runs/<profile>`). run_dir: this chapter's folder.
        seed, n_seeds: training seeds seed, seed + 1, ..., seed + n_seeds - 1.
        min_seeds: the fewest training seeds the profile accepts.
        gan_size: registry size of Pix2Pix and SPADE (`difflung.baselines.registry.BASELINES`: T, S, B, L).
        device: "auto", "cpu" or "cuda".
        workers: models trained at once on a CPU, one thread each (`difflung.core.parallel.run_jobs`).
    """
    if n_seeds < min_seeds:
        raise ValueError(f"n_seeds={n_seeds}: this profile needs at least {min_seeds} training seeds")
    runs_root, run_dir = Path(runs_root), Path(run_dir)
    ds = Dataset(runs.phantom_dataset_dir(runs_root))
    gan_config("pix2pix", gan_size)  # a clear error for an unknown size, before any training
    run_dir.mkdir(parents=True, exist_ok=True)
    return Setup(ds, runs_root, run_dir, list(range(seed, seed + n_seeds)), gan_size, resolve_device(device),
                 int(workers))


# ---------------------------------------------------------------------------------------------------------------
# models

def _main_model(cmp: Setup):
    """Chapter 3's Diff-Lung folder and TrainConfig when it fits this dataset and seed, else (None, None)."""
    from difflung.diffusion import TrainConfig

    ch3 = runs.main_model_dir(cmp.runs_root)
    if not (ch3 / "difflung_config.json").is_file():
        return None, None
    meta = json.loads((ch3 / "difflung_config.json").read_text())
    tc = meta.get("train_config", {})
    fits = (tc.get("strategy") == "cbmat" and tc.get("mask_mode") == "onehot" and tc.get("seed") == cmp.seed
            and meta.get("dataset", {}).get("sha256") == cmp.dataset.manifest["splits"]["train"]["sha256"])
    return (ch3, TrainConfig(**tc)) if fits else (None, None)


def _train_one(kind: str, kwargs: dict):
    """One training job of `train_models` (module level: worker processes import it by name)."""
    return train_diffusion(**kwargs) if kind == "diffusion" else train_gan(**kwargs)


def train_models(cmp: Setup, *, preset: str = "small", steps: int = 300, batch_size: int = 8,
                 progress: bool = False) -> pd.DataFrame:
    """Find or train every generator and training seed of the chapter; fix its training budget.

    Diff-Lung's configuration is chapter 3's when its model fits this dataset and seed (then `preset`,
    `steps` and `batch_size` are unused); Seg-Guided uses the same configuration with its registry settings;
    Pix2Pix and SPADE get the same steps x batch (one GAN step updates the discriminator and the generator once
    each, as in the originals). All jobs share one pool of `cmp.workers`, longest first (diffusion, then SPADE,
    then Pix2Pix), so no worker idles while another trains (in the laptop run, separate diffusion and GAN pools of
    two workers left one idle for a whole diffusion training: 17 of chapter 4's 78 minutes). A finished model is
    reused, not retrained. Returns one row per model and seed: where it comes from, steps, batch, images seen,
    parameters, training seconds.
    """
    reused, base = _main_model(cmp)
    base = asdict(base) if base else dict(preset=preset, steps=steps, batch_size=batch_size, seed=cmp.seed)
    for k in ("mask_mode", "strategy"):
        base.pop(k, None)
    steps, batch = base["steps"], base["batch_size"]
    cmp.budget = {"steps": steps, "batch_size": batch}
    cmp.notes["difflung"] = ("chapter 3's model for the main seed" if reused else
                             "trained here (no chapter 3 model for this dataset and seed)")
    cmp.notes["segguided"] = "trained here: Diff-Lung's network and budget, single k/255 mask channel, uniform p=0.5"
    solo = progress and cmp.workers == 1
    jobs = []  # (key, seed, config, folder, kind, kwargs), in the order of the table
    for key in ("difflung", "segguided"):
        for s in cmp.seeds:
            cfg = diffusion_config(key, **{**base, "seed": s})
            folder = reused if (key == "difflung" and s == cmp.seed and reused) else cmp.model_dir(key, s)
            jobs.append((key, s, cfg, folder, "diffusion", dict(data=cmp.dataset.root, config=cfg, out_dir=folder,
                                                                device=cmp.device, progress=solo)))
    for key in ("pix2pix", "spade"):
        for s in cmp.seeds:
            cfg = gan_config(key, cmp.gan_size, steps=steps, batch_size=batch, seed=s, device=cmp.device,
                             checkpoint_every=max(1, steps // 2), log_every=max(1, steps // 50))
            cmp.notes[key] = f"trained here ({cfg.model}), same steps x batch as the diffusion models"
            jobs.append((key, s, cfg, cmp.model_dir(key, s), "gan",
                         dict(dataset=cmp.dataset, config=cfg, out_dir=cmp.model_dir(key, s), progress=solo)))
    rank = {"difflung": 0, "segguided": 0, "spade": 1, "pix2pix": 2}  # measured cost per step, largest first
    longest_first = sorted(range(len(jobs)), key=lambda i: rank[jobs[i][0]])
    done = run_jobs(_train_one, [(jobs[i][4], jobs[i][5]) for i in longest_first], workers=cmp.workers,
                    device=cmp.device)
    results = dict(zip(longest_first, done))
    rows = []
    for i, (key, s, cfg, folder, kind, _) in enumerate(jobs):
        cmp.models.setdefault(key, {})[s] = folder
        if kind == "diffusion":
            rows.append({"model": display_name(key), "seed": s, "source": "chapter 3" if folder == reused else
                         "this chapter", "setup": f"{cfg.preset}, {cfg.mask_mode} mask, {cfg.strategy} ablation",
                         "steps": cfg.steps, "batch": cfg.batch_size, "images seen": cfg.steps * cfg.batch_size,
                         "params (M)": load_generator(folder, key=key, dataset=cmp.dataset).params / 1e6,
                         "train s": results[i].wall_s})
        else:
            meta = json.loads((results[i] / "config.json").read_text())
            rows.append({"model": display_name(key), "seed": s, "source": "this chapter", "setup": cfg.model,
                         "steps": steps, "batch": batch, "images seen": meta["images_seen"],
                         "params (M)": meta["params_generator"] / 1e6, "train s": meta["train_seconds_last_session"]})
    return pd.DataFrame(rows)


def table_models(models: pd.DataFrame) -> pd.DataFrame:
    """The models of the chapter, one row per model and training seed (`train_models`)."""
    return models.set_index(["model", "seed"])


def figure_gan_losses(cmp: Setup):
    """Training losses of Pix2Pix and SPADE (main seed): discriminator on real/fake, generator terms."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), layout="constrained")
    for ax, key in zip(axes, ("pix2pix", "spade")):
        log = read_loss_log(cmp.models[key][cmp.seed])
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
    missing = [k for k in MODELS if k not in cmp.models]
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

    folders = [(k, folder) for k in MODELS for folder in cmp.models[k].values()]
    ev = common.evaluate(cmp.runs_root, cmp.run_dir, folders,
                         judge_steps=judge_steps, n_test=n_test, sampler=sampler, sampler_steps=sampler_steps,
                         seeds=seeds, seed=cmp.seed, batch_size=batch_size, device=cmp.device, dataset=ds,
                         per_image=False, metric_rows=metric_rows)
    scored, path = ev.scored, ev.metrics
    settings = {"n_test": int(len(scored.index)), "sampler": sampler, "sampler_steps": sampler_steps,
                "sample_seeds": list(seeds), "timing_batch": timing_batch, "timing_repeats": timing_repeats}
    common.check(cmp.runs_root, cmp.run_dir, scored, MODELS, seed=cmp.seed,  # the main training seed
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


def _results(run_dir) -> dict:
    """criteria.json back in `criteria.check`'s form: {key: {"table", "converged", "memorisation"}}."""
    crit = criteria.read_criteria(run_dir)
    return {k: {"table": crit["tables"][k], "converged": crit["converged"][k], "memorisation": crit["memorisation"][k],
                **crit["instruments"][k]} for k in MODELS}


def table_criteria(run_dir) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each generator's convergence criteria (criteria.json), one column per model, and the memorisation check
    beside them (not a criterion)."""
    names = {k: display_name(k) for k in MODELS}
    return (criteria_tables.wide_table(_results(run_dir), names),
            criteria_tables.memorisation_table(_results(run_dir), names))


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
                         "convergence (not a gate)": t.convergence}).set_axis(t.claim)


def table_faithfulness(run_dir, s: pd.DataFrame) -> pd.DataFrame:
    """Mask faithfulness: the judge's Dice per class on each model's slices, mean [patient interval]; a class the
    judge cannot judge reads "not measurable" (its reason in the first column); real slices are the ceiling."""
    return criteria_tables.dice_frame(s, criteria.read_criteria(run_dir)["measurable"], [*MODELS, "real"], display_name)


def table_hu(run_dir) -> pd.DataFrame:
    """Per-class HU Wasserstein-1 between generated and real slices (HU; mean over training and sampling seeds);
    the convergence criterion asks at most `instruments.HU_W1_MAX` for measurable classes."""
    df = read_metrics(run_dir)
    w = df[df.metric == "hu_w1"].pivot_table("value", "class", "model").reindex(columns=list(MODELS))
    return w.rename(columns=display_name).reindex([n for n in L.names(range(L.NUM_IDS)) if n in w.index])


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
