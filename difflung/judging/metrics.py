"""Image metrics: PSNR and SSIM against the real slice of the same mask, and per-class Dice.

Conventions shared by every chapter:
- Images are compared in the model window: HU [-1000, 400] mapped to [-1, 1], so the data range is 2.0
  (PSNR 20 dB = RMS error of 10% of the window = 140 HU).
- Dice is per image and per class; NaN when a class is absent from both prediction and target (nothing to
  score), 0 when it is predicted but absent from the target (or the reverse). Means skip NaNs.

Intervals and tests live in `difflung.judging.stats`, a model's cost in `difflung.judging.cost`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from difflung import labels as L

DATA_RANGE = 2.0  # [-1, 1] <-> [-1000, 400] HU


# ---------------------------------------------------------------------------------------------------------------
# image quality

def psnr_ssim(generated, real, data_range: float = DATA_RANGE) -> pd.DataFrame:
    """PSNR (dB) and SSIM of each generated slice against the real slice with the same mask.

    Args:
        generated, real: (N, S, S) or (S, S) arrays in [-1, 1], the HU window [-1000, 400] mapped linearly;
            values outside are clipped first (the same as windowing HU to [-1000, 400]).
        data_range: 2.0 for the [-1, 1] window (the default; do not change unless the window changes).
    Returns:
        DataFrame with columns image (index in the batch), psnr, ssim. SSIM uses skimage's default uniform 7x7
        window, so slices must be at least 7x7.
    """
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity

    g = np.clip(np.asarray(generated, dtype=np.float64), -1.0, 1.0)
    r = np.clip(np.asarray(real, dtype=np.float64), -1.0, 1.0)
    if g.ndim == 2:
        g, r = g[None], r[None]
    if g.shape != r.shape or g.ndim != 3:
        raise ValueError(f"generated {g.shape} and real {r.shape} must both be (N, S, S)")
    rows = []
    for i in range(len(g)):
        with np.errstate(divide="ignore"):  # identical images: PSNR is +inf
            p = peak_signal_noise_ratio(r[i], g[i], data_range=data_range)
        s = structural_similarity(r[i], g[i], data_range=data_range)
        rows.append({"image": i, "psnr": float(p), "ssim": float(s)})
    return pd.DataFrame(rows, columns=["image", "psnr", "ssim"])


# ---------------------------------------------------------------------------------------------------------------
# segmentation

def dice_per_class(pred, target, classes: Sequence[int]) -> pd.DataFrame:
    """Per-image, per-class Dice between label maps, with MONAI's DiceMetric.

    Each class in `classes` (project ids) becomes one binary channel; the metric runs with
    `include_background=True` because the channels are exactly the classes asked for -- background (id 0) is
    scored only if it is in `classes` -- and `ignore_empty=False`, so a class predicted where the target has none
    scores 0. Where a class is absent from both prediction and target, Dice is undefined and reported as NaN
    (MONAI would report 1.0); averages must skip NaNs.

    Args:
        pred, target: (N, S, S) or (S, S) integer label maps of project ids.
        classes: project ids to score.
    Returns:
        DataFrame with columns image, class (name), class_id, dice; N * len(classes) rows, image-major.
    """
    from monai.metrics import DiceMetric

    pred, target = np.asarray(pred), np.asarray(target)
    if pred.ndim == 2:
        pred, target = pred[None], target[None]
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f"pred {pred.shape} and target {target.shape} must both be (N, S, S)")
    classes = [int(c) for c in classes]
    if not classes:
        raise ValueError("no classes to score")
    ids = torch.as_tensor(classes).view(1, -1, 1, 1)
    p = torch.from_numpy(pred.astype(np.int64)).unsqueeze(1) == ids  # (N, C, S, S) bool
    t = torch.from_numpy(target.astype(np.int64)).unsqueeze(1) == ids
    metric = DiceMetric(include_background=True, reduction="none", ignore_empty=False)
    d = metric(p.float(), t.float()).numpy().astype(np.float64)  # (N, C)
    d[~(p.flatten(2).any(2) | t.flatten(2).any(2)).numpy()] = np.nan
    n, c = d.shape
    names = [L.BY_ID[i].name if i in L.BY_ID else str(i) for i in classes]
    return pd.DataFrame({"image": np.repeat(np.arange(n), c), "class": np.tile(names, n),
                         "class_id": np.tile(classes, n), "dice": d.ravel()})
