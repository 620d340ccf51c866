"""Distances between real and generated slices in the judge's feature space: a Fréchet distance and precision,
recall, density and coverage. No outside weights: the features are the judge segmenter's own bottleneck.

- Features (`judge_features`): the activations of the judge UNet's deepest block (MONAI `UNet`, the submodule of
  its innermost skip connection: 128 channels at 1/8 of the image size), averaged over the image per slice.
- Fréchet distance (`frechet_distance`): |mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2)) between Gaussians
  fitted to the two feature sets (as in "GANs Trained by a Two Time-Scale Update Rule Converge to a Local Nash
  Equilibrium", Heusel et al. 2017), with scipy's `linalg.sqrtm`. With few slices it is biased upwards: compare
  it across generators and against the positive controls scored on the same slices, not with published FIDs.
- Precision and recall ("Improved Precision and Recall Metric for Assessing Generative Models", Kynkäänniemi et
  al. 2019), density and coverage ("Reliable Fidelity and Diversity Metrics for Generative Models", Naeem et al.
  2020): k-nearest-neighbour balls around real (and, for recall, generated) features. Identical sets give
  density 1 and coverage 1; generated features off the real manifold lower both.
"""
from __future__ import annotations

import math

import numpy as np
import torch

NEAREST_K = 5  # Naeem et al.'s default k


def _bottleneck(model: torch.nn.Module) -> torch.nn.Module:
    from monai.networks.layers.simplelayers import SkipConnection

    skips = [m for m in model.modules() if isinstance(m, SkipConnection)]  # pre-order: the last is innermost
    if not skips:
        raise ValueError(f"{type(model).__name__} has no skip connection: not a MONAI UNet")
    return skips[-1].submodule


@torch.no_grad()
def judge_features(seg, images, batch_size: int = 64) -> np.ndarray:
    """Per-slice features of the judge segmenter: its bottleneck activations averaged over the image.

    Args:
        seg: a `segmentation.Segmenter` (the judge, `scoring.judge`).
        images: (N, S, S) slices in [-1, 1].
        batch_size: slices per forward pass.
    Returns:
        (N, C) float64, C the bottleneck's channels.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 3:
        raise ValueError(f"expected images (N, S, S), got {images.shape}")
    seen = []
    hook = _bottleneck(seg.model).register_forward_hook(lambda _m, _i, out: seen.append(out.float().mean((2, 3))))
    try:
        seg.model.eval()
        for i in range(0, len(images), batch_size):
            seg.model(torch.from_numpy(images[i:i + batch_size]).unsqueeze(1).to(seg.device))
    finally:
        hook.remove()
    return torch.cat(seen).double().cpu().numpy() if seen else np.zeros((0, 0))


def _two_sets(real, generated) -> tuple[np.ndarray, np.ndarray]:
    r, g = np.asarray(real, dtype=np.float64), np.asarray(generated, dtype=np.float64)
    if r.ndim != 2 or g.ndim != 2 or r.shape[1] != g.shape[1]:
        raise ValueError(f"features must be (N, D) and (M, D) with the same D, got {r.shape} and {g.shape}")
    return r, g


def frechet_distance(real, generated) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (N, D) and (M, D); NaN with fewer than 2 rows.

    The covariances use ddof 1. sqrtm of a singular product (fewer slices than dimensions) is computed as is;
    if it comes back non-finite, both covariances get 1e-6 on the diagonal (as pytorch-fid does).
    """
    from scipy import linalg

    r, g = _two_sets(real, generated)
    if len(r) < 2 or len(g) < 2:
        return math.nan
    mu_r, mu_g = r.mean(0), g.mean(0)
    s_r, s_g = np.atleast_2d(np.cov(r, rowvar=False)), np.atleast_2d(np.cov(g, rowvar=False))
    root = linalg.sqrtm(s_r @ s_g)
    if not np.isfinite(root).all():
        eps = 1e-6 * np.eye(len(s_r))
        root = linalg.sqrtm((s_r + eps) @ (s_g + eps))
    root = np.real(root)  # rounding leaves tiny imaginary parts
    return float(((mu_r - mu_g) ** 2).sum() + np.trace(s_r) + np.trace(s_g) - 2.0 * np.trace(root))


def _distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    # exact pairwise Euclidean distances (no matrix-product shortcut: identical rows are at distance 0)
    return torch.cdist(torch.from_numpy(a), torch.from_numpy(b), compute_mode="donot_use_mm_for_euclid_dist").numpy()


def _radii(x: np.ndarray, k: int) -> np.ndarray:
    # distance of each row to its k-th nearest other row (column 0 of the sorted distances is the row itself)
    return np.sort(_distances(x, x), axis=1)[:, k]


def fidelity_diversity(real, generated, k: int = NEAREST_K) -> dict[str, float]:
    """Precision, recall, density and coverage of generated against real features (k-NN balls, strict "<").

    - precision: share of generated rows inside some real row's ball (radius: its k-th nearest real neighbour);
    - recall: share of real rows inside some generated row's ball (generated k-NN radii);
    - density: (1 / kM) * sum over generated rows of the number of real balls containing it (about 1 when the
      generated set is distributed like the real one; exactly 1 for an identical set without ties);
    - coverage: share of real rows whose ball holds at least one generated row.

    Args:
        real, generated: (N, D) and (M, D) features. k: nearest neighbour defining the balls (N and M > k).
    Returns:
        dict precision, recall, density, coverage, k.
    """
    r, g = _two_sets(real, generated)
    if len(r) <= k or len(g) <= k:
        raise ValueError(f"k = {k} nearest neighbours need more than {k} real and generated rows, got {len(r)} "
                         f"and {len(g)}")
    r_rad, g_rad = _radii(r, k), _radii(g, k)
    d = _distances(r, g)  # (N, M)
    inside = d < r_rad[:, None]  # generated j inside real i's ball
    return {"precision": float(inside.any(0).mean()), "recall": float((d < g_rad[None, :]).any(1).mean()),
            "density": float(inside.sum() / (k * len(g))), "coverage": float((d.min(1) < r_rad).mean()), "k": k}


def feature_distances(real, generated, k: int = NEAREST_K) -> dict[str, float]:
    """`frechet_distance` and `fidelity_diversity` of two feature sets in one dict (with n_real, n_generated);
    precision .. coverage are NaN when either set has k rows or fewer."""
    r, g = _two_sets(real, generated)
    out = {"frechet": frechet_distance(r, g), "n_real": len(r), "n_generated": len(g)}
    if len(r) > k and len(g) > k:
        return {**out, **fidelity_diversity(r, g, k)}
    return {**out, **dict.fromkeys(("precision", "recall", "density", "coverage"), math.nan), "k": k}
