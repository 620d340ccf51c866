"""Named training recipes: the optimisation settings of a diffusion run, apart from the model and the data.

    cfg = recipe_config("parent", steps=3000, preset="small", strategy="cbmat")

A recipe fixes how a model learns (optimiser, learning rate and warm-up, prediction target, loss weighting, EMA,
batch, precision); the model size, mask encoding, ablation strategy and step budget stay the caller's. All
diffusion models in one comparison share one recipe, so two generators differ only in what the comparison
is about. `benchmarks/bench_convergence.py` measures each recipe's time to quality (CPU minutes until the
convergence criteria of `difflung.judging.instruments` are met).

- "parent": the published recipe of Segmentation-Guided Diffusion (the parent): AdamW at 1e-4, cosine
  schedule with 500 warm-up steps, epsilon prediction, linear betas, no EMA, batch 16, fp32.
- "difflung": what difflung trains with, each field kept because the benchmark measured it helping at the laptop
  profile's data (45 phantom patients, 64 px, `small`): v-prediction (epsilon gives grey air under DPM-Solver++),
  min-SNR-5 weighting and an EMA (both met the criteria sooner), lr 2e-3 (1e-3 had not converged at 4,000 steps),
  and `low_t_share=0.5`, half of each batch's timesteps from the least noisy tenth of the schedule, where fine
  texture is learnt (without it the generated lung was too smooth and the judge read it as ground glass). Warm-up
  None is `TrainConfig`'s rule, 10 % of the steps and at most 500, so the recipe fits any budget.

The measurements behind these choices, and the time to quality of each recipe, are in one place:
reference/laptop/NOTES.md, section "Time to quality" (measured by `benchmarks/bench_convergence.py`, with the
command that produced them).

Every diffusion model of the chapters is built from a recipe (`generators.diffusion_config(key, recipe=...)`,
"difflung" by default), so chapter 2's strategies, Diff-Lung and Seg-Guided differ only in what is compared.
"""
from __future__ import annotations

from dataclasses import fields

from difflung.diffusion.train import TrainConfig

RECIPES: dict[str, dict] = {
    "parent": {"lr": 1e-4, "warmup": 500, "prediction_type": "epsilon", "snr_gamma": None, "ema_decay": None,
               "batch_size": 16, "mixed_precision": "no", "weight_decay": 1e-2, "grad_clip": 1.0,
               "low_t_share": 0.0, "low_res_share": 0.0},  # timesteps uniform, every step at full size
    "difflung": {"lr": 2e-3, "warmup": None, "prediction_type": "v_prediction", "snr_gamma": 5.0,
                 "ema_decay": 0.999, "batch_size": 8, "mixed_precision": "auto", "weight_decay": 1e-2,
                 "grad_clip": 1.0, "low_t_share": 0.5},
}


def recipe(name: str) -> dict:
    """The TrainConfig fields of a named recipe (a copy)."""
    if name not in RECIPES:
        raise ValueError(f"recipe {name!r}: expected one of {sorted(RECIPES)}")
    return dict(RECIPES[name])


def recipe_config(name: str, **overrides) -> TrainConfig:
    """A TrainConfig with a recipe's settings; `overrides` set the other fields (steps, preset, strategy, ...)
    and may replace a recipe field (a lever under study)."""
    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"unknown TrainConfig fields {unknown}; known: {sorted(known)}")
    return TrainConfig(**{**recipe(name), **overrides})


def recipe_difference(a: str = "parent", b: str = "difflung") -> dict[str, tuple]:
    """field -> (value in recipe a, value in recipe b) for every field where the two recipes differ."""
    ra, rb = recipe(a), recipe(b)
    return {k: (ra.get(k), rb.get(k)) for k in sorted(set(ra) | set(rb)) if ra.get(k) != rb.get(k)}
