"""The capacity check: can a generator learn its masks at all? Trained on a handful of training slices, it must
reproduce their masks before its plateau on the full data counts as a result rather than a defect.

    row = capacity_check(CapacityJob(key="segguided", config=cfg, folder=..., dataset=ds.root, judge=spec))
    row["lung ratio"] >= CAPACITY_MIN                       # passed

The handful (`n_slices` training slices spread evenly over the training split) becomes its own dataset artifact
(`<folder>/data`: train, and the same slices again as validation), the generator trains on it with its own
configuration, and the run's judge reads the generated slices back: the judge's lung Dice on them over its lung Dice
on the real slices. A network that cannot redraw eight lungs it has seen hundreds of times has a defect (inputs it
cannot see, a normalisation that erases them, a loss that ignores them); one that can, and still plateaus low on
the full data, has met a capacity or budget limit, which is a result.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

CAPACITY_MIN = 0.9  # judge lung-Dice ratio on the memorised slices


@dataclass
class CapacityJob:
    """One generator's capacity check.

    Args:
        key: registry key. config: its training config (steps, batch, recipe; `steps` is the check's budget).
        folder: where the check's dataset and model go. dataset: the full dataset folder.
        judge: `training_curves.JudgeSpec` of the run's judge. n_slices: how many training slices.
        sampler, sampler_steps: how a diffusion model samples. device: "cpu" or "cuda".
    """

    key: str
    config: object
    folder: str
    dataset: str
    judge: object
    n_slices: int = 8
    sampler: str = "dpm"
    sampler_steps: int | None = None
    device: str = "cpu"


def handful_dataset(dataset, folder, n_slices: int):
    """The capacity check's dataset: `n_slices` training slices as train, and the same slices as val and test
    (patient ids suffixed), written once to `folder` and reused."""
    from difflung.data.dataset import Dataset, Slices, write_dataset
    from difflung.judging.scoring import subset_indices

    folder = Path(folder)
    if (folder / "manifest.json").is_file():
        return Dataset(folder)
    train = dataset.split("train")
    part = train.subset(subset_indices(len(train), n_slices))
    copies = [Slices(part.images, part.labels, np.char.add(part.patient.astype(str), tag), part.z)
              for tag in ("", "-val", "-test")]
    both = Slices(*(np.concatenate([getattr(c, f) for c in copies]) for f in ("images", "labels", "patient", "z")))
    split = {name: sorted(set(c.patient.tolist())) for name, c in zip(("train", "val", "test"), copies)}
    return write_dataset(folder, both, source=f"capacity check: {n_slices} training slices of {dataset.root}",
                         params={"n_slices": n_slices, "parent_sha256": dataset.manifest["splits"]["train"]["sha256"]},
                         seed=0, split=split)


def capacity_check(job: CapacityJob) -> dict:
    """Train `job`'s generator on the handful and score how well the judge reads its masks back (module level, so
    `difflung.core.parallel.run_jobs` can run several in worker processes). Returns one row: model, seed, slices,
    steps, lung ratio, judge Dice on generated and real lung, passed."""
    from difflung.data.dataset import Dataset
    from difflung.generators import DIFFUSION, _spec, checkpoint_generator
    from difflung.judging import scoring
    from difflung.training_curves import expected_key, model_key

    full = Dataset(job.dataset)
    ds = handful_dataset(full, Path(job.folder) / "data", job.n_slices)
    cfg, model_dir = job.config, Path(job.folder) / "model"
    if model_key(model_dir) not in (None, expected_key(job.key, cfg, ds)):
        shutil.rmtree(model_dir)  # a check of another configuration (an earlier run): redone
    if _spec(job.key).kind == DIFFUSION:
        from difflung.diffusion import train_diffusion

        train_diffusion(ds, cfg, model_dir, device=job.device, progress=False)
    else:
        from difflung.baselines import train_gan

        train_gan(ds, replace(cfg, checkpoint_every=cfg.steps), model_dir, progress=False)
    seg = scoring.judge(full, job.judge.folder, steps=job.judge.steps, seed=job.judge.seed, device=job.device)
    g = checkpoint_generator(model_dir, key=job.key, dataset=ds, device=job.device, sampler=job.sampler,
                             sampler_steps=job.sampler_steps)
    scored = scoring.generate_and_score([g], ds, seg, n_test=job.n_slices, seeds=(0,), split="val")
    rows = scored.rows[(scored.rows["metric"] == "dice") & (scored.rows["class"] == "lung")]
    real = float(rows[rows["model"] == "real"]["value"].mean())
    gen = float(rows[rows["model"] == job.key]["value"].mean())
    ratio = gen / real if real > 0 else float("nan")
    return {"model": job.key, "seed": int(cfg.seed), "slices": job.n_slices, "steps": int(cfg.steps),
            "lung ratio": ratio, "lung Dice generated": gen, "lung Dice real": real,
            "passed": bool(np.isfinite(ratio) and ratio >= CAPACITY_MIN)}
