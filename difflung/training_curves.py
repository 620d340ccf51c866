"""Train a generator until it stops improving: scored on the validation split during training, trained on past its
budget when it has not plateaued, up to `max_phases` times the budget. Every generator kind, one procedure.

    job = CurveJob(key="spade", config=gan_config("spade", "S", steps=4000, ...), folder=run_dir / "models/spade",
                   dataset=ds.root, judge=JudgeSpec(runs.judge_dir(root), steps=2000), n_val=48)
    result = train_curve(job)        # CurveResult: points, final folder, plateaued?, phases
    result.points[0]                 # {"model", "seed", "phase", "step", "images", "cpu_s", "score", "se", ...}

Phase 1 trains the profile's budget (`config.steps`) exactly as a plain training would (its folder is the plain
model folder, so another chapter's model of the same key is reused) and is scored `evals` times, evenly spaced
(the training stops with `stop_after` and resumes bit-exactly). When a phase ends and the generator has not
plateaued (`difflung.judging.plateau.plateaued`), phase p + 1 trains another budget from phase p's final weights
(a warm restart: `init_from`, a fresh LR schedule), in `<folder>-phase<p+1>`; at `max_phases` it stops and is
compared anyway. Scores read the validation split only: the test split is left for the tables and verdicts.

Time is the training's CPU time (user + system of this process, every thread), evaluation excluded; each phase
folder keeps its points in `curve.json`, so a finished curve is read back, not retrained or rescored. Scores are
deterministic (fixed sampling generators); CPU seconds are measurements and vary between runs.
"""
from __future__ import annotations

import json
import resource
import shutil
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

CURVE_FILE = "curve.json"


@dataclass(frozen=True)
class JudgeSpec:
    """Which judge scores the curve (`difflung.judging.scoring.judge`, trained once and reused from `folder`)."""

    folder: str
    steps: int
    seed: int = 0


@dataclass
class CurveJob:
    """One generator and training seed to train to its plateau.

    Args:
        key: registry key (`difflung.generators.REGISTRY`).
        config: its `TrainConfig` (diffusion) or `GanTrainConfig` (GAN); `config.steps` is the budget.
        folder: the phase-1 model folder.
        dataset: the dataset folder.
        judge: the judge that scores it.
        n_val: validation slices scored per evaluation (`scoring.subset_indices`).
        evals: evaluations per phase (at least 2; evenly spaced, the last at the phase's end).
        max_phases: the cap, in budgets.
        sampler, sampler_steps: how a diffusion model samples when scored.
        signature: chapter 1's HU-signature check (`instruments.read_signature`), for the measurable classes.
        device: "cpu" or "cuda".
        later: where phases 2, 3, ... go (`<later>-phase<p>`); default `folder` (a chapter that continues another
            chapter's model keeps its own phases).
    """

    key: str
    config: object
    folder: str
    dataset: str
    judge: JudgeSpec
    n_val: int = 32
    evals: int = 4
    max_phases: int = 3
    sampler: str = "dpm"
    sampler_steps: int | None = None
    signature: dict | None = None
    device: str = "cpu"
    later: str | None = None


@dataclass
class CurveResult:
    key: str
    seed: int
    points: list[dict] = field(default_factory=list)
    folder: Path | None = None  # the final model (the last phase's folder)
    folders: list[str] = field(default_factory=list)  # every phase's folder, in order
    reused: bool = True  # every phase was read back from an earlier run (nothing trained now)
    plateaued: bool = False
    phases: int = 0


def phase_folder(job: CurveJob, phase: int) -> Path:
    """Phase 1 is the plain model folder; later phases sit beside `job.later` (or it) as `<name>-phase<p>`."""
    if phase == 1:
        return Path(job.folder)
    base = Path(job.later or job.folder)
    return base.with_name(f"{base.name}-phase{phase}")


def _cpu_seconds() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _stops(steps: int, evals: int) -> list[int]:
    """Evaluation steps of one phase: evenly spaced multiples of steps // evals, the last at `steps` (a budget of
    fewer steps than `evals` is scored at each step)."""
    if evals < 1 or steps < 1:
        raise ValueError(f"evals={evals} per phase of {steps} steps: both must be at least 1")
    evals = min(evals, steps)
    every = steps // evals
    return [every * k for k in range(1, evals)] + [steps]


def _train_until(job: CurveJob, cfg, folder: Path, ds, stop: int) -> None:
    from difflung.generators import DIFFUSION, _spec

    if _spec(job.key).kind == DIFFUSION:
        from difflung.diffusion import train_diffusion

        train_diffusion(ds, cfg, folder, device=job.device, progress=False, stop_after=stop)
    else:
        from difflung.baselines import train_gan

        train_gan(ds, cfg, folder, stop_after=stop, progress=False)


def _score(job: CurveJob, folder: Path, ds, seg):
    from difflung.generators import checkpoint_generator
    from difflung.judging import criteria, plateau, scoring

    g = checkpoint_generator(folder, key=job.key, dataset=ds, device=job.device, sampler=job.sampler,
                             sampler_steps=job.sampler_steps)
    scored = scoring.generate_and_score([g], ds, seg, n_test=job.n_val, seeds=(0,), split="val")
    measurable = criteria.measurable_classes(scored, job.signature)
    return plateau.validation_score(scored, job.key, measurable), int(g.config["step"])


def _phase_config(job: CurveJob, phase: int):
    from difflung.generators import DIFFUSION, _spec

    cfg = job.config
    if _spec(job.key).kind != DIFFUSION:  # a GAN checkpoints where it is scored (diffusion: stop_after does)
        cfg = replace(cfg, checkpoint_every=max(1, cfg.steps // job.evals))
    if phase > 1:
        cfg = replace(cfg, init_from=str(phase_folder(job, phase - 1)))
    return cfg


def train_curve(job: CurveJob) -> CurveResult:
    """Train `job`'s generator phase by phase, scoring it on validation, until it plateaus or reaches the cap.

    Module level so `difflung.core.parallel.run_jobs` can run several in worker processes.
    """
    from difflung.data.dataset import Dataset
    from difflung.judging import plateau, scoring

    ds = Dataset(job.dataset)
    seed = int(job.config.seed)
    seg = None
    result = CurveResult(job.key, seed)
    budget = int(job.config.steps)
    for phase in range(1, job.max_phases + 1):
        folder, cfg = phase_folder(job, phase), _phase_config(job, phase)
        want = expected_key(job.key, cfg, ds)
        if model_key(folder) not in (None, want) or (model_key(folder) == want and _cached(folder) is None):
            if phase == 1 and job.later is not None and Path(job.later) != Path(job.folder):
                # another chapter's model that does not fit (or has no curve: its checkpoints are gone): this
                # chapter trains its own rather than score one final model several times or touch that folder
                job.folder = str(job.later)
                folder, cfg = phase_folder(job, phase), _phase_config(job, phase)
                want = expected_key(job.key, cfg, ds)
            if model_key(folder) is not None and (model_key(folder) != want or _cached(folder) is None):
                shutil.rmtree(folder)  # this job's own folder, holding a stale model: retrained with its curve
        points = _cached(folder)
        if points is None:
            if seg is None:
                seg = scoring.judge(ds, job.judge.folder, steps=job.judge.steps, seed=job.judge.seed,
                                    device=job.device)
            points, result.reused = [], False
            for stop in _stops(budget, job.evals):
                c0, w0 = _cpu_seconds(), time.perf_counter()
                _train_until(job, cfg, folder, ds, stop)
                cpu, wall = _cpu_seconds() - c0, time.perf_counter() - w0
                score, step = _score(job, folder, ds, seg)
                points.append({"model": job.key, "seed": seed, "phase": phase, "step": (phase - 1) * budget + step,
                               "images": ((phase - 1) * budget + step) * int(job.config.batch_size),
                               "cpu_s": cpu, "wall_s": wall, "score": score.mean, "se": score.se,
                               "patients": score.patients, "classes": list(score.classes),
                               "judge_ok": score.measurable, "per_patient": [list(x) for x in score.per_patient]})
            _write_json(folder / CURVE_FILE, {"points": points, "run_key": model_key(folder), "rule": plateau.RULE,
                                              "score": plateau.SCORE})
        result.points += points
        result.folder, result.phases = folder, phase
        result.folders.append(str(folder))
        scores = [plateau.Score(p["score"], p["se"], p["patients"], tuple(p["classes"]),
                                per_patient=tuple(tuple(x) for x in p.get("per_patient", ()))) for p in result.points]
        if plateau.plateaued(scores):
            result.plateaued = True
            break
    total = 0.0
    for p in result.points:  # cumulative training CPU time, phase after phase
        total += p["cpu_s"]
        p["cpu_min"] = total / 60
    return result


def expected_key(key: str, cfg, ds) -> dict:
    """The run key a training of generator `key` with `cfg` on `ds` stores with its model."""
    from difflung.generators import DIFFUSION, _spec

    if _spec(key).kind == DIFFUSION:
        from difflung.diffusion.train import run_key_of
    else:
        from difflung.baselines.gan_train import run_key_of
    return run_key_of(cfg, ds)


def model_key(folder: Path) -> dict | None:
    """The run key stored with a finished model in `folder` (diffusion or GAN), None when unfinished."""
    for meta in (folder / "difflung_config.json", folder / "generator" / "config.json"):
        if meta.is_file():
            return json.loads(meta.read_text()).get("run_key")
    return None


def _cached(folder: Path) -> list[dict] | None:
    """The points of a finished phase, when its curve was written for the model the folder holds now."""
    path, key = folder / CURVE_FILE, model_key(folder)
    if key is None or not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data["points"] if data.get("run_key") == key else None


def _write_json(path: Path, data: dict) -> None:
    from difflung.core.provenance import write_json_atomic

    write_json_atomic(path, data)


def result_dict(r: CurveResult) -> dict:
    """A `CurveResult` as plain data (folder as a string)."""
    d = asdict(r)
    d["folder"] = str(r.folder) if r.folder is not None else None
    return d
