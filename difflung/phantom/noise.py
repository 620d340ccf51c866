"""Smooth random fields, parenchymal textures and the separable Gaussian blur (slice grid, float32).

A field is a Gaussian-basis expansion: iid N(0, 1) coefficients on a coarse lattice mapped to pixels by an
`upsampler` matrix with unit-norm rows, so every pixel has unit variance and the lattice spacing sets the
correlation length.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from difflung.phantom.canvas import grid
from difflung.phantom.config import PatientParams


def _expand(U: np.ndarray, A: np.ndarray) -> np.ndarray:
    """U @ A @ U.T in float64, returned as float32. BLAS picks its float32 kernel by CPU (AVX2 and AVX-512 round
    differently in the last bit); in float64 those differences vanish in the cast, so a seed gives the same
    phantom on every x86 CPU."""
    U = U.astype(np.float64)
    return (U @ A.astype(np.float64) @ U.T).astype(np.float32)


@lru_cache(maxsize=32)
def upsampler(size: int, fov: float, n: int, width: float = 1.0) -> np.ndarray:
    """(size, n) matrix mapping n Gaussian-basis coefficients over the FOV to pixels; rows have unit norm, so iid
    N(0, 1) coefficients give a smooth field of unit variance everywhere."""
    c, _, _ = grid(size, fov)
    h = fov / (n - 3)
    g = (np.arange(n) - (n - 1) / 2.0) * h
    U = np.exp(-0.5 * ((c[:, None] - g[None, :]) / (width * h)) ** 2)
    U /= np.sqrt((U ** 2).sum(1, keepdims=True))
    return U.astype(np.float32)


@lru_cache(maxsize=16)
def blur_taps(sigma_px: float) -> np.ndarray:
    """Normalised 1D Gaussian kernel (radius 3 sigma); a single tap below 0.05 px."""
    if sigma_px < 0.05:
        return np.array([1.0], np.float32)
    r = max(1, int(math.ceil(3.0 * sigma_px)))
    t = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-0.5 * (t / sigma_px) ** 2)
    return (w / w.sum()).astype(np.float32)


def sep_blur(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Separable convolution with a short symmetric kernel (edge values repeated)."""
    k = len(w) // 2
    if k == 0:
        return a.copy()
    S0, S1 = a.shape
    p = np.pad(a, ((0, 0), (k, k)), mode="edge")
    o = p[:, k:k + S1] * w[k]
    for i in range(k):
        o += (p[:, i:i + S1] + p[:, 2 * k - i:2 * k - i + S1]) * w[i]
    p = np.pad(o, ((k, k), (0, 0)), mode="edge")
    o = p[k:k + S0] * w[k]
    for i in range(k):
        o += (p[i:i + S0] + p[2 * k - i:2 * k - i + S0]) * w[i]
    return o


def smooth_field(patient: PatientParams, z: float, size: int, fov: float, channels) -> np.ndarray:
    """Smooth unit-variance random fields (len(channels), size, size) at height z (coarse scale ~ 27 mm)."""
    F = patient.fields
    nz = F.shape[1]
    t = np.clip((z + 0.15) / 1.3, 0.0, 1.0) * (nz - 1)
    i = min(int(t), nz - 2)
    f = t - i
    A = F[list(channels), i] * (1 - f) + F[list(channels), i + 1] * f
    A /= math.sqrt((1 - f) ** 2 + f ** 2)
    U = upsampler(size, fov, F.shape[2])
    return _expand(U, A)


@lru_cache(maxsize=16)
def _fine_sizes(size, fov):
    n = int(min(size, round(fov / 3.5)))  # one basis function per 3.5 mm, at most one per pixel
    return n


def fine_texture(rng, S, fov):
    """Lobular-scale parenchymal texture (unit variance, correlation ~ 3 mm)."""
    n = _fine_sizes(S, fov)
    U = upsampler(S, fov, n + 3, 0.7)
    W = rng.standard_normal((n + 3, n + 3)).astype(np.float32)
    return _expand(U, W)


@lru_cache(maxsize=16)
def _n_medium(size, fov):
    return int(min(size, round(fov / 6.0))) + 3


def medium_noise(rng, S, fov):
    """Unit-variance random field with a ~6 mm correlation length (lesion borders, mottling)."""
    n = _n_medium(S, fov)
    U = upsampler(S, fov, n, 0.8)
    return _expand(U, rng.standard_normal((n, n)).astype(np.float32))
