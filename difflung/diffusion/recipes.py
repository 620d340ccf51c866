"""Named training recipes: the optimisation settings of a diffusion run, apart from the model and the data.

    cfg = recipe_config("parent", steps=3000, preset="small", strategy="cbmat")

A recipe fixes how a model learns (optimiser, learning rate and warm-up, prediction target, loss weighting, EMA,
batch, precision); the model size, mask encoding, ablation strategy and step budget stay the caller's. All
diffusion models in one comparison share one recipe, so two generators differ only in what the comparison
is about. `benchmarks/bench_convergence.py` measures each recipe's time to quality (CPU minutes until the
convergence criteria of `difflung.judging.instruments` are met).

- "parent": the published recipe of Segmentation-Guided Diffusion (the parent): AdamW at 1e-4, cosine
  schedule with 500 warm-up steps, epsilon prediction, linear betas, no EMA, batch 16, fp32.
- "difflung": what difflung trains with. Measured in the benchmark (phantom, 64 px, `small`, one seed):
  v-prediction (arm `eps=difflung:prediction_type=epsilon`: epsilon gives grey air with DPM-Solver++ 20 and
  misses the criteria at every checkpoint), min-SNR-5 weighting (arm `nosnr=difflung:snr_gamma=None`: without
  it the EMA weights met the criteria later) and the EMA (each evaluation scores EMA and raw weights; the raw
  weights met them later), learning rate 2e-3 (arm `lr2e-3`, below), half of each batch's timesteps from the
  least noisy tenth (`low_t_share=0.5`, below); warm-up and batch are not yet compared.
  Warm-up None is `TrainConfig`'s rule, 10 % of the steps and at most 500, so the recipe fits any budget (a fixed
  100 steps failed budgets under 100 steps).
- At 45 phantom patients (the laptop profile's data, where the judge sees GGO on real slices at Dice 0.54), arm
  `d2000=difflung:warmup=50` over a 2,000-step horizon met every criterion but GGO's judge Dice ratio, which is
  the one that sets the budget there: 0.57 (EMA) and 0.63 (raw) at step 1,000, 0.68 (EMA) at step 2,000
  (20.5 single-thread CPU minutes); fibrosis 1.02, lung 0.99, HU W1 at most 27 HU, air 100 %, classifier 0.55.
- Levers at 45 patients (2026-12-04, single-thread, 0.23 CPU s per `small` step; GGO's judge Dice ratio of the EMA
  weights with DPM-Solver++ 20, the criterion that sets the budget; one sampling seed moves it by about 0.05;
  lr 1e-3 unless the arm says otherwise):
  - steps, linear betas, horizon 4,000 (arm `d4000`): 0.51, 0.59, 0.69, 0.73 at steps 1,000-4,000 (16 CPU min);
    every other criterion met from step 2,000.
  - horizon 8,000 (arm `d8000`): 0.56, 0.68, 0.83, 0.84 at steps 2,000-8,000 (34 CPU min): GGO's ratio is met from
    step 6,000, but then the HU criterion fails for the lesions (W1 GGO 57, fibrosis 70 HU at step 8,000; 21 and
    38 HU at step 4,000): on the test masks the generated GGO and fibrosis are 55-60 HU darker than real, while on
    the training masks they match to 2 HU. The model memorises its 216 training slices (27 patients x 8; 8,000
    steps of batch 8 are 296 epochs) and renders unseen lesions fainter. At this data size the two criteria pull
    apart; more training slices per patient remove the drift (below).
  - cosine betas (`beta_schedule=squaredcos_cap_v2`): 0.56 and 0.64 at steps 1,000 and 2,000, no better than linear;
    linear stays.
  - width (`preset=medium`, 2.9x the step cost): 0.57 and 0.62 at steps 500 and 1,000 (11 CPU min), below `small`
    at the same CPU time.
  - no ablation (`strategy=none`): 0.64 and 0.66 at steps 1,000 and 2,000 (raw weights 0.70 at 1,000): CBMAT
    withholds the rare classes for most of a short budget, which delays the full-mask conditional.
  - learning rate 2e-3 (arm `lr2e-3`, horizon 4,000): 0.62 at step 2,000 (1e-3: 0.59), 0.76 / 0.74 at step 4,000
    over two sampling seeds (1e-3: 0.73 / 0.67), 17 CPU min; with `dpm-sde` 0.81 / 0.78, and the first seed met
    every criterion (lesion HU W1 at most 36 HU): the only arm that did. The recipe's lr is now 2e-3 (it was 1e-3);
    profiles set their own per model size.
  - 24 slices per patient (`--slices 24`, 648 training slices; the judge then sees real emphysema, Dice 0.36, and
    GGO at 0.55): arm `s24d6000` (lr 1e-3, horizon 6,000) GGO 0.74 at steps 3,000 and 6,000, emphysema 0.52 and
    0.84; arm `s24lr2e-3` (horizon 4,000, 17 CPU min) GGO 0.75 (dpm) / 0.73 (dpm-sde), emphysema 0.83. Lesion HU
    W1 at most 34 HU at every step: three times the slices remove the memorisation of 8 slices per patient, and
    every criterion but GGO's ratio is met; GGO stays near 0.75.
  - sampler `dpm-sde` (stochastic DPM-Solver++ 20, same models, two sampling seeds each): +0.04 at `d4000`'s step
    4,000 (0.74 vs 0.70), +0.03 for `medium`, +0.01 for cosine, -0.01 without ablation, +0.05 at lr 2e-3: within
    the seed noise; the profiles keep `dpm`.
- Where GGO's ratio is lost (2026-12-05, arm `s24lr2e-3` at step 4,000, 214 test slices of 9 patients, 97 with
  GGO; `quality.false_positive_sources`, `quality.texture`): on the slices with GGO the judge's Dice is the same on
  generated and real (0.678 and 0.684); the shortfall is false GGO where the mask has none, 2,648 pixels on
  generated slices against 1,177 on real, mostly on healthy lung (1,600 against 653) and fibrosis (735 against
  283). The generated lung is too smooth: fine texture (high-pass HU spread) 42 HU against 58 in lung, 76 against
  117 in fibrosis, while the HU means match (-864 against -871); the judge reads the haze as ground glass and the
  smooth reticulation as GGO. Volume Dice per test patient gives the same ratio (0.77), so the per-slice
  convention is not the cause; the criterion measures a real texture deficit. What did not change it (GGO ratio
  at 24 slices per patient, one sampling seed unless said):
  - sampler, same model: DDIM-50 0.76, ancestral DDPM-100 0.77, `dpm-sde` 0.77 (volume Dice); lung texture
    41-43 HU with every sampler, so the smoothness is in the model, not in the solver.
  - no min-SNR weighting (arm `s24nosnr`, `snr_gamma=None`): 0.66 at step 2,000, 0.76 at 4,000 (emphysema 0.77).
  - width (`medium`, arm `s24m3000`, 2.9x the step cost): 0.70 at step 1,500, 0.76 at 3,000 (36.5 CPU min);
    lung texture 42 HU, fibrosis 71.
  - twice the channels at full resolution only (preset `fine`, 1.5x the step cost, arm `s24fine3000`): 0.69 at
    step 1,500, 0.79 / 0.74 / 0.75 at step 3,000 over three sampling seeds (19.2 CPU min; emphysema 0.90, every
    other criterion met); lung texture 43 HU: within the seed noise of `small`.
  What did change it: more training on the least noisy images, where texture is resolved. Arm `s24lowt`
  (`low_t_share=0.3`: 30 % of each batch's timesteps from the lowest tenth of the schedule, so 37 % there instead
  of 10 %) met EVERY criterion at step 4,000 (17.0 CPU min; GGO 0.82, emphysema 0.91, fibrosis 1.07, lesion HU W1
  at most 28 HU, classifier 0.57) on sampling seed 0; seeds 1 and 2 gave GGO 0.78 and 0.81. Lung texture ratio
  0.81 (small without it: 0.73), false GGO 2,151 pixels against 2,648. At step 2,000 the raw weights had the
  texture (0.96) and the EMA did not (0.77). A gain of about 0.05 on every sampling seed, from one training
  seed. A larger share does more: arm `s24lowt5` (`low_t_share=0.5`, 55 % of timesteps in the lowest tenth) met
  every criterion at step 4,000 (16.3 CPU min; GGO 0.84, emphysema 0.90, lesion HU W1 at most 26 HU, classifier
  0.55) on sampling seed 0, and GGO 0.83 / 0.84 (emphysema 0.92 / 0.89) on seeds 1 and 2: the first arm above 0.8
  on every sampling seed. GGO's ratio rises with the share (0.75, 0.80, 0.84 as the mean over sampling seeds at
  shares 0, 0.3, 0.5). A second training seed did not confirm it: arm `s24lowt5s1` (the same with training seed 1,
  two threads) missed at step 4,000 with GGO 0.78 and emphysema 0.76 (lung texture 0.77). So training seeds move
  the ratio as much as the lever does. The recipe takes `low_t_share=0.5` (2026-12-05) because it has the best
  mean over the seeds measured (at 24 slices per patient no arm without it reached 0.8 on any sampling seed by
  step 4,000), not because it makes convergence certain: the laptop run checks every training seed it trains
  against the criteria. Not the EMA: arm `s24ema995` (`ema_decay=0.995`) at step 2,000 had GGO 0.68 and lung
  texture 0.70 (stopped there).
- A shorter budget with the lever does not converge (2026-12-05, horizon 2,500, 11.2 CPU min, arms `h2500`
  and `h2500s1`): training seed 0 missed on GGO alone (0.788; emphysema 0.87, fibrosis HU W1 27 HU, air 100 %),
  seed 1 on GGO 0.74, emphysema 0.71 and air 94 %. 4,000 steps stays the laptop budget. Seed 0 at 4,000 met every
  criterion again (arm `difflung`, 17.7 CPU min, GGO 0.837). A longer budget does not rescue seed 1: a 6,000-step
  horizon (arm `h6000s1`, 26.5 CPU min) still missed on GGO alone (0.796; emphysema 0.83, lesion HU W1 at most
  26 HU, classifier 0.58), so the training seed, not the budget, decides GGO's last few hundredths here.
- Time to quality against the parent (2026-12-05, 45 patients, 24 slices, one thread, DPM-Solver++ 20, 216 test
  slices): arm `difflung` met every criterion at step 4,000 after 17.7 CPU min. Arm `parent` (the parent's recipe,
  batch 16, horizon 11,000, 0.52 CPU s per step) met no image criterion at step 5,500 (47.6 CPU min): air within
  30 HU on 0 % of slices (generated air -544 HU: the grey air of epsilon prediction under a deterministic
  solver), the judge's lung Dice ratio 0.08, lesion HU W1 over 230 HU; an earlier arm over a 6,400-step horizon
  looked the same at step 4,800 (40.5 CPU min). So the parent is at least 2.7x slower to quality here; the
  11,000-step evaluation (about 95 CPU min) is the one that can show 5x. The parent's own sampler (1,000 ancestral
  steps) is not what the book samples with, so this is the time to quality of the book's pipeline.
- Every diffusion model of the chapters is built from a recipe (`generators.diffusion_config(key, recipe=...)`,
  "difflung" by default), so chapter 2's strategies, Diff-Lung and Seg-Guided differ only in what is compared.
"""
from __future__ import annotations

from dataclasses import fields

from difflung.diffusion.train import TrainConfig

RECIPES: dict[str, dict] = {
    "parent": {"lr": 1e-4, "warmup": 500, "prediction_type": "epsilon", "snr_gamma": None, "ema_decay": None,
               "batch_size": 16, "mixed_precision": "no", "weight_decay": 1e-2, "grad_clip": 1.0,
               "low_t_share": 0.0},  # timesteps uniform over the schedule
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
