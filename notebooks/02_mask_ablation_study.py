# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Mask ablation study
#
# A mask-guided DDPM learns $\varepsilon_\theta(x_t, t \mid m)$ from image-mask pairs. Mask-ablated training
# removes classes from the condition $m$ during training, so that the model can also generate from partial masks.
# Segmentation-Guided Diffusion {cite}`konz2024segguided` removes each class with $p = 0.5$; Diff-Lung's CBMAT
# removes class $i$ with $P_\text{initial}(i) = 1 - f_i$, cosine-annealed to zero over training. Read literally,
# $1 - f_i$ drops the *rarest* classes most often; we therefore also train the inverse ($P_i = f_i$) to see which
# direction helps. Same network, data, budget and seed for every strategy:
#
# | strategy | $P_i(t)$ |
# |---|---|
# | `none` | 0 |
# | `uniform` | 0.5 (the parent) |
# | `cbmat` | $(1 - f_i)\,(1 + \cos(\pi t / T))/2$ (Diff-Lung) |
# | `cbmat-constant` | $1 - f_i$ |
# | `cbmat-inverse` | $f_i\,(1 + \cos(\pi t / T))/2$ |
#
# Ablated pixels become "unspecified" (zero in every mask channel); background is never ablated.

# %% tags=["parameters", "remove-input"]
profile = "smoke"
seed = 0
run_dir = "runs/smoke/02_mask_ablation_study"
runs_root = "runs/smoke"
device = "auto"
workers = 2  # models trained at once on a CPU, one thread each
judge_steps = 300
curve_evals = 2
n_val = 4
preset = "small"
steps = 200
batch_size = 8
lr = 0.002
warmup = 20
low_res_share = 0.0
mixed_precision = "auto"
n_test = 16
sampler = "dpm"
sampler_steps = 10
sample_seeds = [0, 1]
strategies = ["none", "uniform", "cbmat", "cbmat-constant", "cbmat-inverse"]

# %% tags=["remove-input"]
from difflung.progress import quiet_notebook_tqdm

quiet_notebook_tqdm()

from difflung.chapters import ablation_study as ch
from difflung.plots import table

ch.glue_facts(ch.page_facts())

# %% [markdown]
# ## Ablation probabilities per class
#
# $f_i$ is each class's share of the non-background pixels of the training split (chapter 1's dataset).
# {numref}`ch2-schedules` shows how each strategy's $P_i$ changes over training.

# %% tags=["hide-input"]
table(ch.table_probabilities(runs_root, steps=steps, strategies=strategies))

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Ablation probability P_i(t) of each class over training, one panel per strategy (rare pathologies solid and thick). Made by `difflung.chapters.ablation_study.figure_schedules`.", "name": "ch2-schedules"}}
ch.figure_schedules(runs_root, run_dir, steps=steps, strategies=strategies, seed=seed)

# %% [markdown]
# ## Training: one model per strategy
#
# Every strategy gets the same network, data, budget and training seed; {numref}`ch2-losses` shows their losses.

# %% tags=["hide-input"]
table(ch.train_strategies(runs_root, run_dir, steps=steps, batch_size=batch_size, preset=preset, lr=lr,
                          strategies=strategies, warmup=warmup, seed=seed, device=device, workers=workers,
                          judge_steps=judge_steps, n_val=n_val, curve_evals=curve_evals, sampler=sampler,
                          sampler_steps=sampler_steps, low_res_share=low_res_share,
                          mixed_precision=mixed_precision))

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Training loss per strategy (running mean). Made by `difflung.chapters.ablation_study.figure_losses`.", "name": "ch2-losses"}}
ch.figure_losses(run_dir, strategies=strategies, seed=seed)

# %% [markdown]
# ## Evaluation
#
# Each model generates the test slices' masks (and the masks with one class removed in turn); every model gets
# the same initial noise for the same mask and seed. PSNR and SSIM compare with the real slice; mask faithfulness
# is the per-class Dice between the conditioning mask and what the run's judge, a segmentation network trained on
# real training slices only (shared by every chapter), reads in the generated image. A class is *measurable* only
# where the judge reaches its floor on the real test slices and the class keeps its HU signature at this image
# size (chapter 1):

# %% tags=["hide-input"]
scored = ch.evaluate(runs_root, run_dir, judge_steps=judge_steps, n_test=n_test, sampler=sampler,
                     strategies=strategies,
                     sampler_steps=sampler_steps, seeds=sample_seeds, seed=seed, device=device)
measurable, results = ch.check(runs_root, run_dir, scored, sampler=sampler, steps=steps, seed=seed)
table(ch.table_measurable(scored, measurable))

# %% [markdown]
# ### Did each strategy converge?
#
# The convergence criteria of chapter 3 (`difflung.judging.criteria`), measured for every strategy on the same test
# masks. A strategy that misses any of them is still compared (the miss is noted beside the verdict); only CBMAT
# never learning its masks (judge Dice ratio on lung below 0.8) makes the comparisons *not measurable*.

# %% tags=["hide-input"]
table(ch.table_criteria(results))

# %% tags=["remove-input"]
ch.glue_facts(ch.run_facts(scored))

# %% [markdown]
# ### Image quality and faithfulness per strategy
#
# Full masks. Each of the {glue:text}`n_test_slices` test slices is first averaged over the {glue:text}`n_seeds`
# sampling seeds; the {glue:md}`confidence` intervals are cluster-bootstrap intervals over the
# {glue:text}`n_test_patients` test patients, since slices of one patient are not independent. The column
# *real slices* is the judge on the real test slices, the ceiling for any generator.

# %% tags=["hide-input"]
table(ch.table_quality(scored, measurable, results, seed=seed))

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Mask faithfulness per measurable class and strategy, full masks: mean judge Dice with its patient-level confidence interval; classes not measurable are left out and named above the plot. Made by `difflung.chapters.ablation_study.figure_dice`.", "name": "ch2-dice"}}
ch.figure_dice(scored, measurable, run_dir, seed=seed)

# %% [markdown]
# {numref}`ch2-dice` shows the same faithfulness per class.
#
# ### CBMAT against the other strategies

# %% tags=["hide-input"]
claims = ch.comparisons(scored, measurable, results, seed=seed)
table(claims, hide_index=True)

# %% tags=["remove-input"]
ch.glue_facts(ch.claim_facts(claims))

# %% [markdown]
# Each row compares CBMAT with another strategy on the same slices and seeds
# (`difflung.judging.stats.compare_slices`): the estimate is the mean difference, its interval and its p-value come
# from one t-statistic over patients. The p-values are corrected with Holm's method over the
# {glue:text}`n_claims` comparisons of this chapter, then every row goes through the book's one verdict rule
# (`difflung.judging.stats.verdict`): *reproduced* when the adjusted p is below {glue:text}`alpha` in the claimed
# direction, *contradicted* when it is in the other, *inconclusive* otherwise (at least {glue:text}`min_patients` test
# patients are needed for a test); a comparison involving a class the run cannot measure, or a CBMAT model that never
# learned its masks, reads *not measurable*, with the reason.
#
# ## Generation from partial masks
#
# {numref}`ch2-partial` withholds one class from the masks at a time.

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Generation from partial masks, first sampling seed: PSNR (left) and the judge's mean Dice over the measurable classes still given (right), per strategy (rows) and withheld class (columns; 'full' is the complete mask). Made by `difflung.chapters.ablation_study.figure_partial`.", "name": "ch2-partial"}}
ch.figure_partial(scored, measurable, run_dir, seed=seed)

# %% [markdown]
# {numref}`ch2-samples` shows the images behind these numbers, in the {glue:md}`lung_window`.

# %% tags=["hide-input"] mystnb={"figure": {"caption": "Scored test slices richest in rare classes (mask over the phantom slice, the phantom slice itself as truth) and each strategy's generation from the same masks (first sampling seed), in the lung window with its HU colour bar. Made by `difflung.chapters.ablation_study.figure_samples`.", "name": "ch2-samples"}}
ch.figure_samples(scored, run_dir)

# %% tags=["remove-input"]
ch.scope(profile, scored, measurable, results, len(claims))
