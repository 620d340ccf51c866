"""The oversampling control: real slices with rare classes repeated until the extra set has the rare-class balance
of the synthetic masks, so that `oversample` adds as many rare-class pixels as the synthetic arms, without new
images.
"""
from __future__ import annotations

import numpy as np

from difflung import labels as L


def balance_weights(a: np.ndarray, t: np.ndarray, rel_tol: float = 0.02) -> np.ndarray:
    """Weights w on the simplex with a.T @ w ~= t, as spread out as the tolerance allows.

    a: (J, K) per-slice pixel fraction of each of K classes; t: (K,) target fractions. Ridge-regularised
    non-negative least squares on relative errors (sum(w) = 1 enforced by a heavily weighted row), with the
    largest ridge whose worst relative error stays within `rel_tol` -- a large ridge spreads weight over many
    slices, none piles it on the few that match exactly. If no weighting reaches the tolerance, the closest.
    """
    from scipy.optimize import nnls

    J, K = a.shape
    scale = np.maximum(t, np.maximum(a.mean(0), 1e-6))
    A, b = (a / scale).T, t / scale  # (K, J), (K,): relative errors
    w = np.full(J, 1.0 / J)
    for mu in (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4, 0.0):
        M = np.vstack([A, np.sqrt(mu) * np.eye(J), 1e3 * np.ones((1, J))])
        w, _ = nnls(M, np.r_[b, np.zeros(J), 1e3], maxiter=50 * J)
        w = w / w.sum()
        if np.abs(A @ w - b).max() <= rel_tol:
            break
    return w


def oversample_indices(labels: np.ndarray, target: np.ndarray | None, rare: list[int], n: int,
                       rng: np.random.Generator) -> np.ndarray:
    """Indices of `n` real slices (with repeats) whose rare-class pixel fractions match those of `target`.

    Candidates are the slices holding any rare class, weighted by `balance_weights` to the target masks'
    mean per-class fractions, and drawn by systematic sampling (one uniform offset from `rng`), so the drawn
    set follows the weights closely even for small n. `class_balance_table` shows what was achieved. With no
    target (no synthetic masks), candidates are drawn uniformly.
    """
    cand = np.flatnonzero(np.isin(labels, rare).any((1, 2)))
    if len(cand) == 0:
        raise ValueError(f"no training slice holds any of {L.names(rare)}: nothing to oversample")
    if target is None:
        return cand[rng.choice(len(cand), size=n, replace=True)]
    a = np.stack([(labels[cand] == c).mean((1, 2)) for c in rare], 1)  # (J, K) per-slice fractions
    t = np.array([(target == c).mean() for c in rare])  # (K,)
    w = balance_weights(a, t)
    pos = (rng.random() + np.arange(n)) / n  # systematic sampling
    pick = np.minimum(np.searchsorted(np.cumsum(w), pos, side="right"), len(cand) - 1)
    return cand[pick]
