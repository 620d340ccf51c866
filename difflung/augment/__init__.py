"""Segmentation augmentation (chapter 5): the arms (reference, oversampling, synthetic sets from each
generator, lesion insertion), their training data, and the segmenters trained on them across seeds.

    arms          the registry (`ARMS`: one `ArmSpec` per arm), each arm's training set (`build_arms`) and the
                  Diff-Lung dose-response arms (`dose_arms`, `build_dose_arms`)
    oversample    the oversampling control, matched to the synthetic masks' rare-class balance
    copypaste     the copy-paste control: real lesion patches pasted into healthy lung of other training slices
    choice        one segmenter configuration for every arm, chosen on the validation split (`choose_segmenter`)
    dice          Dice computed identically for every arm: pooled per test patient, and per image on truth slices
    synthetic     masks synthesised for the synthetic arms, painted by each generator or inserted into base slices
    experiment    training a segmenter per arm and seed, scoring it, the chapter's metrics rows (`run_experiment`)
    comparisons   statistics over training seeds: summaries, validity, the chapter's comparisons and verdicts,
                  the dose-response curve
    synthetic_set `python -m difflung generate`: a trained Diff-Lung model paints a synthetic training set (NIfTI)

    from difflung.augment import ARMS, choose_segmenter, run_experiment, judge_arms

May import: every library package below the chapters (`core`, `data`, `diffusion`, `baselines`,
`segmentation`, `generators`, `judging`, `insertion`).
"""
from difflung.augment.arms import (ARM_NAMES, ARMS, CONTROL_ARMS, DOSE_ARM, RARE_DEFAULT, SYNTHETIC_ARMS, Arm, ArmSpec,
                                   arm_label, arm_order, build_arms, build_dose_arms, class_balance_table, dose_arm,
                                   dose_arms, dose_share, n_extra, rare_ids)
from difflung.augment.choice import (CANDIDATES, SegChoice, choice_path, choose_segmenter, one_se_choice,
                                    validation_score)
from difflung.augment.comparisons import (arm_convergence, arm_usable, class_measurability, comparison_triples,
                                          dose_response, judge_arms, seed_scores, summarize_arms, validity)
from difflung.augment.copypaste import CopyPaste, Patch, copy_paste, patch_bank
from difflung.augment.dice import (mean_over_patients, mean_over_truth_slices, per_image_dice,
                                   pooled_patient_dice)
from difflung.augment.experiment import (Results, example_slices, metric_rows, per_seed_dice, run_experiment,
                                         timing_record, train_and_evaluate, training_seeds)
from difflung.augment.oversample import balance_weights, oversample_indices
from difflung.augment.synthetic import (Synthesis, SyntheticSet, describe_generator, inserted_sets, paint_masks,
                                        synthesize_masks)

__all__ = [
    "ARM_NAMES", "ARMS", "CONTROL_ARMS", "DOSE_ARM", "RARE_DEFAULT", "SYNTHETIC_ARMS", "Arm", "ArmSpec", "arm_label",
    "arm_order", "build_arms", "build_dose_arms", "class_balance_table", "dose_arm", "dose_arms", "dose_share",
    "n_extra", "rare_ids", "CANDIDATES", "SegChoice", "choice_path", "choose_segmenter", "one_se_choice",
    "validation_score",
    "arm_convergence", "arm_usable", "class_measurability", "comparison_triples", "dose_response",
    "judge_arms", "seed_scores", "summarize_arms", "validity", "CopyPaste", "Patch", "copy_paste", "patch_bank",
    "mean_over_patients", "mean_over_truth_slices", "per_image_dice", "pooled_patient_dice", "Results",
    "example_slices", "metric_rows",
    "per_seed_dice", "run_experiment", "timing_record", "train_and_evaluate", "training_seeds", "balance_weights",
    "oversample_indices", "Synthesis", "SyntheticSet", "describe_generator", "inserted_sets", "paint_masks",
    "synthesize_masks",
]
