"""Numbers reported by the papers this book reproduces: shown as "reported" rows beside ours, never as ours.

Source of every row: the Diff-Lung poster (Khiati, Brillet, Ispas, Fetita, ISBI 2025), tables "Quantitative
evaluation" and "Comparison of data augmentation strategies" (../shared/seeds/000 in the project's notes).
The poster does not say on which data, at which resolution, or with how many seeds these were measured.
"""
from __future__ import annotations

import pandas as pd

SOURCE = "Diff-Lung poster, ISBI 2025"
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

POSTER_NAMES = {"pix2pix": "Pix2Pix", "spade": "SPADE", "segguided": "Seg-Guided-Diffusion",
                "difflung": "DiffLung (CBMAT)", "ref": "ref-UNet", "+segguided": "Seg-Guided-UNet",
                "+difflung": "DiffLung-UNet"}


def image_quality_frame() -> pd.DataFrame:
    """Tidy rows (model, metric, value, source) of the poster's image-quality table."""
    return pd.DataFrame([{"model": m, "metric": k, "value": v, "source": SOURCE}
                         for m, d in IMAGE_QUALITY.items() for k, v in d.items()])


def segmentation_frame() -> pd.DataFrame:
    """Tidy rows (model, class, value, source) of the poster's segmentation table."""
    return pd.DataFrame([{"model": m, "class": c, "metric": "dice", "value": v, "source": SOURCE}
                         for m, d in SEGMENTATION_DICE.items() for c, v in d.items()])
