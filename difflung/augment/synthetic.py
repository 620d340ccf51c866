"""The synthetic arms' extra images: masks synthesised from the training masks, painted by each generator
(`paint_masks`), or their new lesions inserted into their own base slices (`inserted_sets`, the `+insert` arm).

One synthetic set per generator is drawn (from the experiment's seed) and shared by all training seeds: seeds
capture training variance, not the variance of drawing another synthetic set.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from difflung import labels as L
from difflung.core.provenance import atomic_path, provenance, resolve_device, sha256_file, write_json_atomic
from difflung.data.dataset import Dataset, Slices
from difflung.generators import load_generator


def synthesize_masks(train: Slices, classes, rare: list[int], n: int, seed: int, boost: float | dict):
    """`n` new masks from the training masks with rare-class lesions pasted into healthy lung
    (`difflung.data.masksynth`), each boosted class up to `boost` of the lung field (a float for all, or a dict).

    Returns the `MaskSynthesis` (labels (n, S, S), source_index, report of pixel counts before/after).
    """
    from difflung.data.masksynth import synthesize_masks as _synth

    targets = {L.BY_ID[c].name: (boost if not isinstance(boost, dict) else boost[L.BY_ID[c].name]) for c in rare
               if not isinstance(boost, dict) or L.BY_ID[c].name in boost}
    out = _synth(np.asarray(train.labels, dtype=np.uint8), targets, np.random.default_rng(seed), n)
    if out.labels.shape != (n,) + train.labels.shape[1:]:
        raise ValueError(f"mask synthesis returned {out.labels.shape}, expected {(n,) + train.labels.shape[1:]}")
    bad = sorted(set(np.unique(out.labels).tolist()) - set(classes))
    if bad:
        raise ValueError(f"mask synthesis produced label values {bad} outside the dataset's classes {list(classes)}")
    return out


def describe_generator(model_dir) -> str:
    """One line on a generator folder for the reader: mask encoding, ablation strategy, preset, training steps."""
    import json

    meta = json.loads((Path(model_dir) / "difflung_config.json").read_text())
    tc = meta.get("train_config", {})
    return (f"mask {meta.get('mask_mode', tc.get('mask_mode'))}, ablation "
            f"{tc.get('strategy', meta.get('ablation', {}).get('strategy', '?'))}, "
            f"preset {tc.get('preset', '?')}, {tc.get('steps', '?')} steps")


@dataclass
class SyntheticSet:
    name: str  # arm
    images: np.ndarray  # (n, S, S) float32 in [-1, 1]
    labels: np.ndarray  # (n, S, S) uint8 project ids
    model_dir: Path
    seconds: float
    images_per_s: float


@dataclass
class Synthesis:
    masks: np.ndarray | None  # (n, S, S) the synthesised masks every synthetic arm paints
    report: pd.DataFrame  # mask synthesis: rare-class pixels before and after, per class
    sets: dict[str, SyntheticSet]  # arm -> images painted by that arm's generator
    dose: SyntheticSet | None = None  # the dose-response's Diff-Lung set (`run_experiment(dose_shares=...)`)


def paint_masks(models: dict, dataset: Dataset, masks: np.ndarray, run_dir, *, seed: int, tag: str,
                sampler: str = "ddim", steps: int | None = None, batch_size: int = 32, device: str = "auto",
                progress: bool = False) -> dict[str, SyntheticSet]:
    """Generate one image per mask with each generator (the same masks and initial noise for every one).

    Args:
        models: arm -> generator folder.
        masks: (n, S, S) project-id masks.
        seed: seeds the initial noise (`torch.Generator().manual_seed(seed)` for each model).
        tag: sub-folder of `run_dir` (the dataset: phantom or real).
        sampler, steps: the diffusion sampler and its number of steps.
    Returns:
        arm -> SyntheticSet. Each set is saved as `<run_dir>/<tag>/synthetic_<arm>.npz` (images, labels: the
        format `python -m difflung export-nnunet --synthetic` reads) with a JSON sidecar (model, sampler,
        provenance).
    """
    out, sets, dev = Path(run_dir) / tag, {}, resolve_device(device)
    for arm, model_dir in models.items():
        painter = load_generator(model_dir, device=dev, sampler=sampler, sampler_steps=steps, dataset=dataset)
        t0 = time.perf_counter()
        images = painter.sample(masks, generator=torch.Generator().manual_seed(seed), batch_size=batch_size,
                                progress=progress)
        dt = time.perf_counter() - t0
        sets[arm] = SyntheticSet(arm, images, masks, Path(model_dir), dt, len(masks) / dt)
        path = out / f"synthetic_{arm.lstrip('+')}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, images=images, labels=masks)
        write_json_atomic(path.with_suffix(".json"), {
            "model_dir": str(model_dir), "model_config_sha256": sha256_file(Path(model_dir) / "difflung_config.json"),
            "sampler": sampler, "steps": steps, "n": len(masks),
            "provenance": provenance(config={"sampler": sampler, "steps": steps}, seed=seed, device=dev)})
    return sets


def inserted_sets(models: dict, train: Slices, ms, run_dir, *, seed: int, tag: str, steps: int | None,
                   device: str = "auto", progress: bool = False) -> dict[str, SyntheticSet]:
    """The insertion arms' sets: each synthesised mask's new lesions inserted into its own real base slice
    (`difflung.insertion.insertion_arm`), so the extra slices differ from real ones only inside the lesions."""
    from difflung.insertion import insertion_arm

    out = {}
    for arm, model_dir in models.items():
        s = insertion_arm(model_dir, train.images, train.labels, ms.labels, ms.source_index, seed=seed,
                          steps=steps or 50, device=device, progress=progress)
        out[arm] = SyntheticSet(arm, s.images, s.labels, Path(model_dir), s.seconds, len(s.images) / s.seconds)
        path = Path(run_dir) / tag / f"synthetic_{arm.lstrip('+')}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, images=s.images, labels=s.labels)
    return out
