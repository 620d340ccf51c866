"""Rasterisation on the slice grid: pixel coordinates, anti-aliased discs, capsules and 3D tubes, the `Canvas`."""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from difflung.phantom.config import HU
from difflung.phantom.sdf import ellipse_sdf, rot_ellipse_sdf


@lru_cache(maxsize=16)
def grid(size: int, fov: float):
    """Pixel-centre coordinates (mm, float32): c (size,), X and Y (size, size) read-only broadcasts."""
    px = fov / size
    c = ((np.arange(size, dtype=np.float32) + 0.5) - size / 2.0) * np.float32(px)
    X = np.broadcast_to(c[None, :], (size, size))
    Y = np.broadcast_to(c[:, None], (size, size))
    return c, X, Y


@lru_cache(maxsize=64)
def _stencil(k: int):
    """Pixel offsets (dy, dx) of a disc of radius k + 0.75 around a centre pixel."""
    d = np.arange(-k, k + 1)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    keep = dy ** 2 + dx ** 2 <= (k + 0.75) ** 2
    return dy[keep].astype(np.int64), dx[keep].astype(np.int64)


def splat_discs(size: int, cx, cy, r, w=None) -> np.ndarray:
    """Anti-aliased coverage (max over discs) of discs with centres (cx, cy) and radii r in pixel units.

    Sub-pixel discs are scaled by their area so that a tiny disc adds its area, not a whole pixel; `w` (0..1)
    scales each disc (partial filling of the slice thickness).
    """
    out = np.zeros(size * size, np.float32)
    cx = np.asarray(cx, np.float64).ravel()
    cy = np.asarray(cy, np.float64).ravel()
    r = np.asarray(r, np.float64).ravel()
    keep = (r > 0.02) & (cx > -r - 1) & (cx < size + r) & (cy > -r - 1) & (cy < size + r)
    cx, cy, r = cx[keep], cy[keep], r[keep]
    if len(r) == 0:
        return out.reshape(size, size)
    area = np.minimum(1.0, math.pi * r * r)
    if w is not None:
        area = area * np.asarray(w, np.float64).ravel()[keep]
    kk = np.ceil(r + 0.5).astype(np.int64)
    for k in np.unique(kk):
        sel = kk == k
        dy, dx = _stencil(int(k))
        icx = np.floor(cx[sel] + 0.5).astype(np.int64)
        icy = np.floor(cy[sel] + 0.5).astype(np.int64)
        X = icx[:, None] + dx[None, :]
        Y = icy[:, None] + dy[None, :]
        d = np.sqrt((X - cx[sel, None]) ** 2 + (Y - cy[sel, None]) ** 2)
        v = np.clip(r[sel, None] - d + 0.5, 0.0, 1.0) * area[sel, None]
        ok = (v > 0) & (X >= 0) & (X < size) & (Y >= 0) & (Y < size)
        np.maximum.at(out, (Y * size + X)[ok], v[ok].astype(np.float32))
    return out.reshape(size, size)


def capsule_points(p0, p1, r, step):
    """Disc centres along 2D segments p0 -> p1 (arrays (n, 2)) with radius r (n,), spaced <= step."""
    p0 = np.atleast_2d(np.asarray(p0, np.float64))
    p1 = np.atleast_2d(np.asarray(p1, np.float64))
    r = np.broadcast_to(np.asarray(r, np.float64), (len(p0),))
    ln = np.sqrt(((p1 - p0) ** 2).sum(1))
    n = np.maximum(2, np.ceil(ln / step).astype(np.int64) + 1)
    idx = np.repeat(np.arange(len(p0)), n)
    start = np.repeat(np.cumsum(n) - n, n)
    t = (np.arange(len(idx)) - start) / np.repeat(n - 1, n)
    pts = p0[idx] + (p1[idx] - p0[idx]) * t[:, None]
    return pts[:, 0], pts[:, 1], r[idx]


class Canvas:
    """HU image and label map with painting helpers (pixel space)."""

    def __init__(self, size, fov):
        self.S = size
        self.px = fov / size
        self.img = np.full((size, size), HU["air"], np.float32)
        self.lab = np.zeros((size, size), np.uint8)

    def to_px(self, x, y):
        """mm -> fractional pixel (column, row) coordinates."""
        return np.asarray(x) / self.px + self.S / 2.0 - 0.5, np.asarray(y) / self.px + self.S / 2.0 - 0.5

    def bbox(self, cx, cy, rx, ry):
        """(rows, cols) slices of the pixels within rx, ry mm of (cx, cy), one pixel padded; None if off-image."""
        c0, r0 = self.to_px(cx - rx, cy - ry)
        c1, r1 = self.to_px(cx + rx, cy + ry)
        c0, r0 = max(0, int(math.floor(c0)) - 1), max(0, int(math.floor(r0)) - 1)
        c1, r1 = min(self.S, int(math.ceil(c1)) + 2), min(self.S, int(math.ceil(r1)) + 2)
        if c1 <= c0 or r1 <= r0:
            return None
        return slice(r0, r1), slice(c0, c1)

    def paint(self, cov, value, sl=None, label=None):
        """Blend `value` into the image (in place) with coverage `cov`; set `label` where cov >= 0.5."""
        img = self.img if sl is None else self.img[sl]
        img += (np.float32(value) - img) * cov if np.ndim(value) == 0 else (value - img) * cov
        if label is not None:
            lab = self.lab if sl is None else self.lab[sl]
            lab[cov >= 0.5] = label

    def ellipse(self, X, Y, cx, cy, a, b, value, rot=0.0, label=None, cortex=None, inner=None):
        """Paint an ellipse (mm); with `cortex` (mm) its interior that far inside gets the value `inner`."""
        sl = self.bbox(cx, cy, max(a, b), max(a, b))
        if sl is None:
            return
        x, y = X[sl], Y[sl]
        sd = rot_ellipse_sdf(x, y, cx, cy, a, b, rot) if rot else ellipse_sdf(x, y, cx, cy, a, b)
        cov = np.clip(0.5 - sd / self.px, 0.0, 1.0)
        self.paint(cov, value, sl, label)
        if cortex is not None:  # inner marrow
            sd2 = sd + cortex
            cov2 = np.clip(0.5 - sd2 / self.px, 0.0, 1.0)
            self.paint(cov2, inner, sl)

    def discs(self, x, y, r, value, label=None, mask=None):
        """Paint discs (centres and radii in mm), optionally masked; returns their coverage."""
        cx, cy = self.to_px(x, y)
        cov = splat_discs(self.S, cx, cy, np.asarray(r) / self.px)
        if mask is not None:
            cov *= mask
        self.paint(cov, value, None, label)
        return cov


def tube_coverage(cv, tubes, zmm, recon):
    """Partial-volume coverage of tubes (segments p0-p1, radius r, 3D mm) in the slab |z - zmm| <= recon / 2.

    Each point of a tube's centreline whose vertical chord through the tube meets the slab is drawn as a disc of
    the tube's radius, weighted by the fraction of the slab thickness the chord fills.
    """
    r_all = tubes["r"]
    if len(r_all) == 0:
        return None
    p0, p1 = tubes["p0"], tubes["p1"]
    h = 0.5 * recon
    vec = p1 - p0
    ln3 = np.sqrt((vec ** 2).sum(1)) + 1e-9
    uz = np.abs(vec[:, 2]) / ln3
    half = r_all / np.sqrt(np.maximum(1.0 - uz * uz, 1e-4))  # half the vertical chord through the tube
    z0, z1 = p0[:, 2], p1[:, 2]
    zlo_all = np.minimum(z0, z1) - r_all  # the capsule's z extent bounds every chord
    zhi_all = np.maximum(z0, z1) + r_all
    cand = (zlo_all - h <= zmm) & (zhi_all + h >= zmm)
    if not cand.any():
        return None
    a, b, r, half = p0[cand], p1[cand], r_all[cand], half[cand]
    zlo, zhi = zlo_all[cand], zhi_all[cand]
    dz = b[:, 2] - a[:, 2]
    rc = half + h
    small = np.abs(dz) < 1e-6
    dzs = np.where(small, 1.0, dz)
    ta = (zmm - rc - a[:, 2]) / dzs
    tb = (zmm + rc - a[:, 2]) / dzs
    tlo = np.where(small, 0.0, np.clip(np.minimum(ta, tb), 0, 1))
    thi = np.where(small, 1.0, np.clip(np.maximum(ta, tb), 0, 1))
    step = np.maximum(0.5 * cv.px, 0.5 * r)
    q0 = a + (b - a) * tlo[:, None]
    q1 = a + (b - a) * thi[:, None]
    ln = np.sqrt(((q1[:, :2] - q0[:, :2]) ** 2).sum(1))
    n = np.maximum(2, np.ceil(ln / step).astype(np.int64) + 1)
    idx = np.repeat(np.arange(len(r)), n)
    start = np.repeat(np.cumsum(n) - n, n)
    t = (np.arange(len(idx)) - start) / np.repeat(n - 1, n)
    pts = q0[idx] + (q1[idx] - q0[idx]) * t[:, None]
    zc, hc = pts[:, 2], half[idx]
    overlap = (np.minimum(np.minimum(zc + hc, zhi[idx]), zmm + h)
               - np.maximum(np.maximum(zc - hc, zlo[idx]), zmm - h))
    w = np.clip(overlap / recon, 0.0, 1.0) if recon > 0 else (np.abs(zc - zmm) <= hc).astype(np.float64)
    cx, cy = cv.to_px(pts[:, 0], pts[:, 1])
    return splat_discs(cv.S, cx, cy, r[idx] / cv.px, w)
