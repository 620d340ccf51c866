"""Signed-distance and coverage primitives (mm, negative inside) from which the phantom's shapes are built."""
from __future__ import annotations

import math

import numpy as np


def smoothstep(e0, e1, x):
    """Hermite step from 0 at e0 to 1 at e1."""
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def smax(a, b, k):
    """Smooth maximum (rounds the corners of an intersection of signed distance fields)."""
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.maximum(a, b) + h * h * (k * 0.25)


def ellipse_sdf(x, y, cx, cy, a, b):
    """Approximate signed distance (mm, negative inside) to an axis-aligned ellipse."""
    u = (x - cx) / a
    v = (y - cy) / b
    rho = np.sqrt(u * u + v * v)
    g = np.sqrt((u / a) ** 2 + (v / b) ** 2) + 1e-6
    return (rho - 1.0) * rho / g


def ellipse_cov(x, y, cx, cy, a, b, px):
    """Anti-aliased coverage of a large ellipse (edge width from the mean radius)."""
    u = (x - cx) * (1.0 / a)
    v = (y - cy) * (1.0 / b)
    rho = np.sqrt(u * u + v * v)
    rho -= 1.0
    rho *= -math.sqrt(a * b) / px
    rho += 0.5
    return np.clip(rho, 0.0, 1.0, out=rho)


def rot_ellipse_sdf(x, y, cx, cy, a, b, ang):
    """`ellipse_sdf` of an ellipse rotated by `ang` radians about its centre."""
    c, s = math.cos(ang), math.sin(ang)
    dx, dy = x - cx, y - cy
    return ellipse_sdf(c * dx + s * dy, -s * dx + c * dy, 0.0, 0.0, a, b)


def disc_sdf(x, y, cx, cy, r):
    """Exact signed distance (mm, negative inside) to a disc."""
    return np.sqrt((x - cx) ** 2 + (y - cy) ** 2) - r
