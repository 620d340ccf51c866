"""Convergence of a generator, measured: the criteria of `difflung.judging.instruments` on one split's masks.

    judge = fit_judge("runs/x/judge", ds, steps=600, seed=0)
    unet, meta = checkpoint_model("runs/x/model", ds)            # a run's latest checkpoint, EMA or raw weights
    gen = lambda masks, g: sample(unet, meta, masks, generator=g, sampler="dpm", steps=20)
    table, info = measure_criteria(gen, ds, judge, seed=0)       # instruments.convergence table + the details

The judge is a segmenter trained on the real training slices without intensity shift or noise augmentation: it
must see HU levels (emphysema is defined by < -950 HU), and intensity augmentation teaches it to ignore them.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from difflung.judging import instruments as I
from difflung import labels as L
from difflung.data.dataset import Dataset, unwindow
from difflung.judging.metrics import dice_per_class
from difflung.judging.realism import air_check, classifier_two_sample, hu_wasserstein
from difflung.segmentation import SegConfig, Segmenter, fit_segmenter

# the judge: no intensity augmentation (it must keep HU levels); geometric augmentation only
def fit_judge(out_dir, ds: Dataset, *, steps: int = 600, seed: int = 0, config: SegConfig | None = None,
              device="cpu", progress: bool = False) -> Segmenter:
    """Train (or reuse, by run key) the judge segmenter on the real training slices of `ds`.

    Args:
        out_dir: the segmenter folder.
        ds: the dataset artifact.
        steps: optimisation steps (when `config` is None).
        seed: the judge's seed.
        config: a SegConfig (default: the book's judge rule, `scoring.judge_config(steps)`, so the benchmark judges
            with the judge the chapters use).
    """
    from difflung.judging.scoring import judge_config

    config = config or judge_config(steps)
    tr = ds.split("train")
    return fit_segmenter(out_dir, tr.images, tr.labels, ds.classes, config, seed,
                         dataset_sha256=ds.manifest["splits"]["train"]["sha256"], device=device, progress=progress)


def checkpoint_model(model_dir, ds: Dataset, *, ema: bool = True):
    """The weights of a diffusion run's newest checkpoint (or of its finished model) as (unet, meta) for `sample`.

    Args:
        model_dir: the `train_diffusion` output folder.
        ds: the dataset it trains on (classes and size).
        ema: the EMA weights when the run keeps an EMA (else the raw weights).
    Returns:
        (UNet2DModel in eval mode on the CPU, meta with classes, mask_mode, sample_size, noise_schedule, step,
        weights ("ema" or "raw")).
    """
    from difflung.diffusion.model import build_unet
    from difflung.diffusion.train import META_FILE, TrainConfig, load_model, noise_schedule
    from difflung.core.training import latest_checkpoint, rng_scope

    model_dir = Path(model_dir)
    if (model_dir / META_FILE).is_file():  # finished: save_pretrained holds the EMA weights when there is an EMA
        unet, meta = load_model(model_dir, ds)
        return unet, {**meta, "step": meta["training"]["steps"]}
    ckpt = latest_checkpoint(model_dir / "checkpoints")
    if ckpt is None:
        raise FileNotFoundError(f"{model_dir}: no finished model and no checkpoint to evaluate")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    cfg = TrainConfig(**{k: v for k, v in state["extra"]["run_key"]["config"].items()
                         if k in TrainConfig.__dataclass_fields__})
    with rng_scope(0):  # its init is overwritten: leave the global RNG alone
        unet = build_unet(len(ds.classes), ds.size, cfg.mask_mode, cfg.preset)
    unet.load_state_dict(state["modules"]["unet"])
    use_ema = ema and "ema" in state["modules"]
    if use_ema:
        for p, s in zip(unet.parameters(), state["modules"]["ema"]["shadow_params"]):
            p.data.copy_(s)
    meta = {"classes": ds.classes, "mask_mode": cfg.mask_mode, "sample_size": ds.size,
            "noise_schedule": noise_schedule(cfg), "step": int(state["step"]), "weights": "ema" if use_ema else "raw"}
    return unet.eval(), meta


def criteria_classes(real_dice: dict[str, float]) -> tuple[list[str], dict[str, tuple[bool, str]]]:
    """The classes the Dice criterion judges: lung always (a judge that cannot see lung fails the criterion
    rather than dropping it) and every rarer class the judge can see on real slices (`instruments.judge_validity`);
    background and body are anatomy that the air and HU criteria cover."""
    valid = I.judge_validity(real_dice)
    keep = [c for c, (ok, _) in valid.items() if (ok or c == "lung") and c not in ("background", "body")]
    return keep, valid


def measure_criteria(generate: Callable[[np.ndarray, torch.Generator], np.ndarray], ds: Dataset, judge: Segmenter, *,
                     split: str = "test", seed: int = 0, classifier_steps: int = 300) -> tuple[pd.DataFrame, dict]:
    """Generate one slice per mask of a split and measure the convergence criteria.

    Args:
        generate: (masks (N, S, S) uint8, CPU torch.Generator) -> (N, S, S) slices in [-1, 1].
        ds: the dataset artifact; `split`'s real slices are the reference.
        judge: the judge segmenter (`fit_judge`).
        seed: seeds the generator passed to `generate` and the two-sample classifier.
        classifier_steps: training steps of the real-vs-generated classifier.
    Returns:
        (the `instruments.convergence` table, details: judge Dice on real and generated per class, the judged
        classes, the air table, the generated slices).
    """
    real = ds.split(split)
    gen = generate(real.labels, torch.Generator().manual_seed(seed))  # (N, S, S)
    classes = ds.classes
    d_real = dice_per_class(judge.predict(real.images), real.labels, classes).groupby("class")["dice"].mean()
    d_gen = dice_per_class(judge.predict(gen), real.labels, classes).groupby("class")["dice"].mean()
    judged, valid = criteria_classes(d_real.to_dict())
    ratios = I.dice_ratios(d_gen.to_dict(), d_real.to_dict(), {c: (True, "") for c in judged})
    hu_g, hu_r = unwindow(gen), unwindow(real.images)
    w1 = hu_wasserstein(hu_g, hu_r, real.labels, [c for c in L.names(classes) if c != "background"])
    air = air_check(hu_g, hu_r, real.labels, I.AIR_TOLERANCE_HU)
    acc = float("nan")  # not measurable (criterion not met) with fewer than 2 patients: no held-out patient
    if len(np.unique(real.patient)) >= 2:
        acc = classifier_two_sample(real.images, gen, real.patient, real.patient,
                                    generator=torch.Generator().manual_seed(seed), steps=classifier_steps)["accuracy"]
    table = I.convergence(dice_ratio=ratios, hu_w1={c: v for c, v in w1.items() if np.isfinite(v)},
                          air_share=float(air["ok"].mean()), classifier_accuracy=acc)
    return table, {"real_dice": d_real.to_dict(), "generated_dice": d_gen.to_dict(), "judged": judged,
                   "air": air, "generated": gen}
