"""Numbers and claims reported by the paper this book reproduces: shown as "reported" rows beside ours, never as ours.

Source of every number: the Diff-Lung poster, R. N. Khiati, P.-Y. Brillet, R. Ispas, C. Fetita, "Diff-Lung:
Diffusion-Based Texture Synthesis for Enhanced Pathological Tissue Segmentation in Lung CT Scans", ISBI 2025
(arXiv 2501.02867), two tables of its Results section:
- "Quantitative evaluation" (PSNR, SSIM, GFLOPs and s/image of Pix2Pix, SPADE, Seg-Guided-Diffusion and
  DiffLung (CBMAT)), captioned "Comparison of models in terms of PSNR, SSIM, FLOPS, and Inference time per image";
- "Comparison of data augmentation strategies for a baseline UNet model training" (Dice of ref-UNet,
  Seg-Guided-UNet and DiffLung-UNet on healthy lung, emphysema and fibrosis), captioned "Dice scores per class
  for different augmented models".
The poster does not say on which data, at which resolution, on which device or with how many seeds these were
measured, and gives no intervals or tests. Its claims (`CLAIMS`) are the orderings its tables show; its cost
columns are shown as ratios beside ours (`COST_RATIOS`), with no threshold, since the poster states none.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

SOURCE = "Diff-Lung poster (Khiati, Brillet, Ispas, Fetita), ISBI 2025"
TABLE_QUALITY = "Quantitative evaluation"
TABLE_SEGMENTATION = "Comparison of data augmentation strategies for a baseline UNet model training"
TABLE_GGO = "the poster's problem statement (ground-glass opacity named; no Dice reported)"
TABLE_CONCLUSIONS = ("the poster's conclusions: class-balanced ablation emphasises the rare classes, its cosine "
                     "annealing stabilises training (no number reported)")
LABEL = "reported (poster)"  # how reported rows are marked in every table and figure

# model -> metric -> value. Models are named as in our metrics files.
IMAGE_QUALITY = {
    "pix2pix": {"psnr": 17.56, "ssim": 0.61, "gflops_per_image": 15.0, "s_per_image": 0.18},
    "spade": {"psnr": 19.20, "ssim": 0.66, "gflops_per_image": 25.0, "s_per_image": 0.37},
    "segguided": {"psnr": 19.64, "ssim": 0.68, "gflops_per_image": 4000.0, "s_per_image": 21.0},
    "difflung": {"psnr": 20.70, "ssim": 0.71, "gflops_per_image": 4000.0, "s_per_image": 21.0},
}

# augmentation arm -> class -> Dice ("healthy" in the poster is our class "lung").
SEGMENTATION_DICE = {
    "ref": {"lung": 0.91, "emphysema": 0.60, "fibrosis": 0.72},
    "+segguided": {"lung": 0.90, "emphysema": 0.73, "fibrosis": 0.76},
    "+difflung": {"lung": 0.92, "emphysema": 0.80, "fibrosis": 0.81},
}

# the reader's name of every model and arm: the generators' are `difflung.generators.DISPLAY_NAMES`' (a test holds
# them equal), the arms' `difflung.augment.arms.ARM_NAMES`'; one name per model on every page
POSTER_NAMES = {"pix2pix": "Pix2Pix", "spade": "SPADE", "segguided": "Seg-Guided",
                "difflung": "Diff-Lung (CBMAT)", "ref": "ref-UNet", "+segguided": "Seg-Guided-UNet",
                "+difflung": "Diff-Lung-UNet", "+insert": "Insert-UNet", "oversample": "oversample-UNet",
                "copypaste": "copy-paste-UNet", "+uniform": "uniform-UNet",
                "uniform": "uniform p=0.5 (the parent's ablation)",
                "cbmat": "CBMAT (Diff-Lung)", "cbmat-constant": "CBMAT, not annealed"}


# ---------------------------------------------------------------------------------------------------------------
# claims: what the poster's tables show, declared before any run

# Non-inferiority margin for healthy-lung Dice, declared here before any run, with its reason: the poster reports
# Dice to two decimals, so a change smaller than 0.01 is below its reporting resolution, and it presents
# Seg-Guided-UNet's healthy-lung change of -0.01 (0.90 against ref-UNet's 0.91) as part of an improvement. Its
# healthy-lung row (DiffLung-UNet 0.92 against 0.91) therefore supports "augmentation does not harm healthy lung"
# (a drop of at most 0.01). Since the row also reports a gain (+0.01), the superiority test stands beside the
# non-inferiority one, as a second claim of the same family.
LUNG_MARGIN = 0.01
LUNG_MARGIN_REASON = ("the poster's Dice resolution (two decimals) and the -0.01 healthy-lung change it accepts "
                      "for Seg-Guided-UNet")


@dataclass(frozen=True)
class Claim:
    """One claim of the poster: "model `a` beats model `b` on `metric`" (a - b > 0, or > -margin).

    Attributes:
        key: short unique id. kind: "image quality" (chapter 4, unit test patients x training seeds),
            "generation" (the judge's Dice on generated slices of chapter 4, same unit), "ablation" (the same on
            chapter 2's strategy models) or "segmentation" (chapter 5, unit training seeds). metric: psnr, ssim or
            dice. cls: class for Dice ("all" otherwise).
        a, b: model keys as in IMAGE_QUALITY / SEGMENTATION_DICE. direction: "greater" (higher is better).
        margin, margin_reason: non-inferiority margin (0: superiority claim) and why.
        table: the poster table it comes from.
    """
    key: str
    kind: str
    metric: str
    cls: str
    a: str
    b: str
    direction: str = "greater"
    margin: float = 0.0
    margin_reason: str = ""
    table: str = ""
    ratio_range: tuple[float, float] | None = None  # cost claims: the range a / b must lie in

    @property
    def reported(self) -> float:
        """The poster's effect a - b (a / b for a cost claim; NaN for a claim the poster does not make, e.g. an
        extension's)."""
        if self.kind == "cost":
            return IMAGE_QUALITY[self.a][self.metric] / IMAGE_QUALITY[self.b][self.metric]
        table = IMAGE_QUALITY if self.kind == "image quality" else SEGMENTATION_DICE
        key = self.metric if self.kind == "image quality" else self.cls
        try:
            return table[self.a][key] - table[self.b][key]
        except KeyError:
            return float("nan")

    @property
    def text(self) -> str:
        name = lambda k: POSTER_NAMES[k]
        if self.kind == "cost":
            lo, hi = self.ratio_range
            rel = f"within {hi:g}x of" if math.isclose(lo * hi, 1.0) else f"at least {lo:g}x"
            return f"{COST_METRIC_NAMES[self.metric]}: {name(self.a)} {rel} {name(self.b)}"
        what = f"Dice {self.cls}" if self.metric == "dice" else self.metric.upper()
        if self.kind in ("generation", "ablation"):
            what = f"judge Dice {self.cls} on generated slices"
        rel = f"not worse than (margin {self.margin:g})" if self.margin else ">"
        return f"{what}: {name(self.a)} {rel} {name(self.b)}"


def _quality_claims() -> list[Claim]:
    """Diff-Lung against each baseline, and the baselines' order the table shows (Seg-Guided > SPADE > Pix2Pix):
    with Diff-Lung's three pairs, every adjacent pair of the poster's ranking."""
    out = [Claim(f"{m}_difflung_vs_{o}", "image quality", m, "all", "difflung", o, table=TABLE_QUALITY)
           for m in ("psnr", "ssim") for o in ("segguided", "spade", "pix2pix")]
    out += [Claim(f"{m}_{a}_vs_{b}", "image quality", m, "all", a, b, table=TABLE_QUALITY)
            for m in ("psnr", "ssim") for a, b in (("segguided", "spade"), ("spade", "pix2pix"))]
    return out


def _segmentation_claims() -> list[Claim]:
    out = [Claim(f"dice_{c}_difflung_vs_{o.lstrip('+')}", "segmentation", "dice", c, "+difflung", o,
                 table=TABLE_SEGMENTATION) for c in ("emphysema", "fibrosis") for o in ("ref", "+segguided")]
    out.append(Claim("dice_lung_difflung_vs_ref", "segmentation", "dice", "lung", "+difflung", "ref",
                     margin=LUNG_MARGIN, margin_reason=LUNG_MARGIN_REASON, table=TABLE_SEGMENTATION))
    out.append(Claim("dice_lung_difflung_vs_ref_gain", "segmentation", "dice", "lung", "+difflung", "ref",
                     table=TABLE_SEGMENTATION))  # the reported gain, beside the non-inferiority claim
    out.append(Claim("dice_lung_difflung_vs_segguided", "segmentation", "dice", "lung", "+difflung", "+segguided",
                     table=TABLE_SEGMENTATION))
    # Seg-Guided-UNet's own row against ref-UNet: gains on the lesions, healthy lung within the margin
    out += [Claim(f"dice_{c}_segguided_vs_ref", "segmentation", "dice", c, "+segguided", "ref",
                  table=TABLE_SEGMENTATION) for c in ("emphysema", "fibrosis")]
    out.append(Claim("dice_lung_segguided_vs_ref", "segmentation", "dice", "lung", "+segguided", "ref",
                     margin=LUNG_MARGIN, margin_reason=LUNG_MARGIN_REASON, table=TABLE_SEGMENTATION))
    # ground-glass opacity: named in the poster's problem statement, absent from its table (no reported value)
    out += [Claim(f"dice_ggo_{a.lstrip('+')}_vs_ref", "segmentation", "dice", "ggo", a, "ref", table=TABLE_GGO)
            for a in ("+difflung", "+segguided")]
    return out


def _conclusion_claims() -> list[Claim]:
    """The poster's conclusions about CBMAT, on the rare classes it is for: against the parent's uniform ablation
    with Diff-Lung's network and one-hot masks (chapter 4's matched comparator, every training seed), and
    cosine-annealed against constant CBMAT (chapter 2's strategies); downstream, Diff-Lung-UNet against
    uniform-UNet (chapter 5)."""
    rare = ("emphysema", "ggo", "fibrosis")
    out = [Claim(f"dice_{c}_generated_cbmat_vs_uniform", "generation", "dice", c, "difflung", "uniform",
                 table=TABLE_CONCLUSIONS) for c in rare]
    out += [Claim(f"dice_{c}_generated_cosine_vs_constant", "ablation", "dice", c, "cbmat", "cbmat-constant",
                  table=TABLE_CONCLUSIONS) for c in rare]
    # downstream: segmenters trained with either generator's images of the same synthesised masks
    out += [Claim(f"dice_{c}_difflung_vs_uniform", "segmentation", "dice", c, "+difflung", "+uniform",
                  table=TABLE_CONCLUSIONS) for c in rare]
    return out


CLAIMS: tuple[Claim, ...] = tuple(_quality_claims() + _segmentation_claims() + _conclusion_claims())

# Beyond the poster: LeFusion (Zhang et al., ICLR 2025) reports that lesion-focused generation with the real
# background kept exactly helps segmentation more than whole-image synthesis. We test that ordering with our
# `+insert` arm (lesions inserted into real slices) against `+difflung` (whole synthetic slices), as its own
# family of comparisons (Holm within the family), so it changes nothing in the verdicts on the poster's claims.
TABLE_LEFUSION = ("LeFusion (Zhang et al., ICLR 2025): lesion-focused generation, background kept "
                  "(not a Diff-Lung claim)")
EXTENSION_CLAIMS: tuple[Claim, ...] = tuple(
    Claim(f"dice_{c}_insert_vs_difflung", "segmentation", "dice", c, "+insert", "+difflung", table=TABLE_LEFUSION)
    for c in ("emphysema", "fibrosis"))
# Controls (not Diff-Lung claims): does the synthetic arm beat what needs no generator? Oversampling the real
# rare-class slices and pasting real lesion patches into healthy lung add as many rare-class pixels; a gain of
# +DiffLung over ref-UNet that they match is class rebalancing, not image synthesis. Their own Holm family.
TABLE_CONTROLS = "controls of this book: rebalancing without a generator (not a Diff-Lung claim)"
CONTROL_CLAIMS: tuple[Claim, ...] = tuple(
    Claim(f"dice_{c}_difflung_vs_{o}", "segmentation", "dice", c, "+difflung", o, table=TABLE_CONTROLS)
    for o in ("oversample", "copypaste") for c in ("emphysema", "fibrosis", "ggo"))
# The poster's cost columns as ratios, its own family: a diffusion model about as costly as the other (Diff-Lung
# and Seg-Guided share a network, so within 2x either way) and the GANs cheaper by an order of magnitude or more
# (the poster's ratios are 57x to 267x). Exact measurements (FLOPs counted, seconds a median of repeats): no sampling
# unit, so no interval and no test; `stats.verdict` reads the ratio against its range.
COST_METRIC_NAMES = {"gflops_per_image": "GFLOPs per image", "s_per_image": "seconds per image"}
COST_CLAIMS: tuple[Claim, ...] = tuple(
    Claim(f"cost_{k.split('_')[0]}_difflung_vs_{b}", "cost", k, "all", "difflung", b, table=TABLE_QUALITY,
          ratio_range=rng)
    for b, rng in (("segguided", (0.5, 2.0)), ("pix2pix", (10.0, math.inf)), ("spade", (10.0, math.inf)))
    for k in ("gflops_per_image", "s_per_image"))
ALL_CLAIMS: tuple[Claim, ...] = CLAIMS + EXTENSION_CLAIMS + CONTROL_CLAIMS + COST_CLAIMS


# ---------------------------------------------------------------------------------------------------------------
# cost: the poster's ratios beside ours, no threshold (the poster states none)

COST_RATIOS = (  # (numerator model, denominator model, metric)
    ("difflung", "pix2pix", "gflops_per_image"), ("difflung", "pix2pix", "s_per_image"),
    ("difflung", "segguided", "gflops_per_image"), ("difflung", "segguided", "s_per_image"),
)


def cost_ratio_frame(ours: dict[str, dict[str, float]] | None = None) -> pd.DataFrame:
    """The poster's cost ratios (table "Quantitative evaluation") beside ours, without a verdict.

    Args:
        ours: model -> metric -> our value (gflops_per_image, s_per_image); a missing value gives NaN.
    Returns:
        DataFrame comparison, metric, reported ratio, our ratio.
    """
    ours = ours or {}
    rows = []
    for a, b, k in COST_RATIOS:
        oa, ob = ours.get(a, {}).get(k, float("nan")), ours.get(b, {}).get(k, float("nan"))
        rows.append({"comparison": f"{POSTER_NAMES[a]} / {POSTER_NAMES[b]}", "metric": COST_METRIC_NAMES[k],
                     "reported ratio": IMAGE_QUALITY[a][k] / IMAGE_QUALITY[b][k],
                     "our ratio": oa / ob if ob else float("nan")})
    return pd.DataFrame(rows)


# The poster states neither the image size nor the device of its cost columns. Its parent method
# (Segmentation-Guided Diffusion) trains and samples at 256x256, and 21 s per image for a diffusion model of that
# size is GPU-scale (the parent's DDIM-50 sampling at 256x256 takes about 2 minutes on a 2-core CPU), so cost
# figures mark the reported points as presumably 256x256 on a GPU, apart from ours.
COST_SETTING = "256x256 GPU, presumed: the poster states neither"
COST_LABEL = "reported, 256x256 GPU (presumed)"
