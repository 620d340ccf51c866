"""Slice rendering: a sampled patient cut at one height, painted in HU with its label map, blurred and noised.

A slice is painted back to front on a `Canvas` (air, label background): body wall, bones and mediastinum
(`body.py`); the lung field with its parenchyma (mean `PhantomConfig.lung_hu`, a gentle anterior-posterior
gradient, smooth and lobular-scale texture) and the lesions painted into it (`lesions.py`); vessels (trees cut in
a thin section of `recon_thickness_mm`, plus per-slice micro vessels), suppressed inside emphysema holes; airway
walls and lumen. Then white noise and the image pass through one Gaussian partial-volume kernel, so the CT noise
is spatially correlated like a reconstructed image's.

Labels: 0 background (outside the body), 1 body, 2 healthy lung (vessels inside the lung keep it), 3 airway lumen
(where a pixel is >= 75 % air), 4 emphysema, 5 ggo, 6 fibrosis (`difflung.labels`).
"""
from __future__ import annotations

import numpy as np

from difflung import labels as L
from difflung.phantom.body import paint_body
from difflung.phantom.canvas import Canvas, grid, splat_discs, tube_coverage
from difflung.phantom.config import HU, HU_MAX, HU_MIN, PatientParams, PhantomConfig, child_rng
from difflung.phantom.geometry import geom_at, lung_sdf_image
from difflung.phantom.lesions import LesionCanvas, paint_emphysema, paint_fibrosis, paint_ggo
from difflung.phantom.noise import blur_taps, fine_texture, sep_blur, smooth_field


def slice_positions(patient: PatientParams, config: PhantomConfig = PhantomConfig()) -> tuple[np.ndarray, float]:
    """Normalised z of a patient's slices and their spacing (mm).

    Args:
        patient: from `sample_patient`.
        config: `slices_per_patient` and `slice_thickness_mm` set the positions.
    """
    n = int(config.slices_per_patient)
    Lh = float(patient.anatomy["L"])
    if config.slice_thickness_mm is None:
        return (np.arange(n) + 0.5) / n, Lh / n
    dz = float(config.slice_thickness_mm)
    return 0.5 + (np.arange(n) - (n - 1) / 2.0) * dz / Lh, dz


def render_slice(patient: PatientParams, z: float, rng: np.random.Generator,
                 config: PhantomConfig = PhantomConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Render one axial slice of a sampled patient.

    Args:
        patient: from `sample_patient` (drawn with the same config's knobs).
        z: normalised height, 0 at the lung apex, 1 at the base (values outside hold no lung).
        rng: source of the slice's randomness (noise, small holes and cysts, reticulation).
        config: size, field of view, noise and blur.

    Returns:
        (hu float32 (S, S), labels uint8 (S, S)).
    """
    key = int(rng.integers(0, 2 ** 62))
    return render_at_key(patient, float(z), key, config)


def render_at_key(patient: PatientParams, z: float, key: int, cfg: PhantomConfig):
    """Render the slice at normalised height z; `key` seeds all of the slice's randomness.

    The slice stream `child_rng(key, 0)` is drawn in a fixed order (lobular texture, micro vessels, CT noise);
    lesions draw their own streams from `key`. Returns (hu float32 (S, S), labels uint8 (S, S)).
    """
    an = patient.anatomy
    S, fov = int(cfg.size), float(cfg.fov_mm)
    _, X, Y = grid(S, fov)
    g = {k: float(v) for k, v in geom_at(an, z).items()}
    zmm = z * an["L"]
    cv = Canvas(S, fov)
    srng = child_rng(key, 0)
    cov_body, sd_cav, cov_cav = paint_body(cv, an, g, X, Y, z, zmm)
    lc, hole_cov = _paint_lungs(cv, patient, cfg, g, X, Y, z, zmm, sd_cav, key, srng)
    _paint_vessels(cv, patient, cfg, zmm, lc, cov_cav, hole_cov, srng)
    _paint_airways(cv, patient.airways, cfg, zmm, cov_body)
    return _reconstruct(cv.img, cfg, srng), cv.lab


def _paint_lungs(cv, patient, cfg, g, X, Y, z, zmm, sd_cav, key, srng):
    """Parenchyma and lesions inside the lung field, blended into the canvas; lung and pathology labels.

    Returns:
        (the slice's `LesionCanvas`, emphysema hole coverage or None).
    """
    an, S, px = patient.anatomy, cv.S, cv.px
    fields = smooth_field(patient, z, S, float(cfg.fov_mm), (0, 3))
    sd_lung = lung_sdf_image(an, g, cv, X, Y, sd_cav)
    sd_lung += fields[1] * 1.2  # a slightly irregular pleural border
    cov_lung = np.clip(0.5 - sd_lung / px, 0.0, 1.0)
    field_mask = sd_lung <= 0.0
    depth = -sd_lung
    yrel = (Y - g["ccy"]) / g["cb"]
    paren = (cfg.lung_hu + an["lung_offset"]) + an["lung_grad"] * yrel + 3.0 * fields[0]
    del fields
    tex = fine_texture(srng, S, float(cfg.fov_mm))
    paren += tex * 5.0

    lc = LesionCanvas(patient, cv, X, Y, z, zmm, key, field_mask, depth, paren, np.zeros((S, S), np.uint8))
    hole_cov = None
    if field_mask.any():
        paint_ggo(lc)
        paint_fibrosis(lc)
        hole_cov = paint_emphysema(lc)
    cv.paint(cov_lung, paren)
    lungfield = field_mask & (cv.lab == L.BODY)
    cv.lab[lungfield] = L.LUNG
    sel = lungfield & (lc.labels > 0)
    cv.lab[sel] = lc.labels[sel]
    return lc, hole_cov


def _paint_vessels(cv, patient, cfg, zmm, lc, cov_cav, hole_cov, srng):
    """Vessel trees and micro vessels (in lung and mediastinum), suppressed inside emphysema holes."""
    vcov = tube_coverage(cv, patient.vessels, zmm, cfg.recon_thickness_mm)
    if cfg.vessels:
        micro = _micro_vessels(srng, cv, lc.field_mask, lc.depth)
        if micro is not None:
            vcov = micro if vcov is None else np.maximum(vcov, micro)
    if vcov is not None:
        vcov *= cov_cav
        if hole_cov is not None:
            vcov *= 1.0 - hole_cov
        cv.paint(vcov, HU["blood"])


def _paint_airways(cv, aw, cfg, zmm, cov_body):
    """Airway walls then lumen; the lumen is labelled where a pixel is mostly air."""
    px = cv.px
    wcov = tube_coverage(cv, {"p0": aw["p0"], "p1": aw["p1"], "r": aw["r"] + aw["wall"]}, zmm, cfg.recon_thickness_mm)
    if wcov is None:
        return
    lcov = tube_coverage(cv, aw, zmm, cfg.recon_thickness_mm)
    cv.paint(wcov * cov_body, HU["airway_wall"])
    if lcov is None:
        return
    lcov *= cov_body
    cv.paint(lcov, HU["air"])
    # label the lumen where a pixel is mostly air (>= 75 %), for airways the grid resolves (r >= 0.8 px)
    big = aw["r"] >= 0.8 * px
    lab_cov = lcov if big.all() else tube_coverage(
        cv, {"p0": aw["p0"][big], "p1": aw["p1"][big], "r": aw["r"][big]}, zmm, cfg.recon_thickness_mm)
    if lab_cov is not None:
        cv.lab[(lab_cov >= 0.75) & (cov_body >= 0.5)] = L.AIRWAY


def _reconstruct(img, cfg, srng):
    """Partial-volume blur with correlated CT noise (white noise through the same reconstruction kernel), with the
    noise gain chosen so the blurred noise has standard deviation `noise_hu`; clipped to the CT range."""
    S = img.shape[0]
    taps = blur_taps(cfg.blur_mm / (float(cfg.fov_mm) / S))
    gain = float(np.sqrt((taps.astype(np.float64) ** 2).sum()) ** 2)
    if cfg.noise_hu > 0:
        img += srng.standard_normal((S, S), dtype=np.float32) * np.float32(cfg.noise_hu / gain)
    img = sep_blur(img, taps)
    np.clip(img, HU_MIN, HU_MAX, out=img)
    return img.astype(np.float32, copy=False)


def _micro_vessels(rng, cv, field_mask, depth):
    """Small peripheral vessels below the trees' resolution: short tubes (r 0.35-0.85 mm) drawn per slice,
    sparser towards the pleura."""
    idx = np.flatnonzero(field_mask)
    px = cv.px
    n = int(rng.poisson(len(idx) * px * px / 700.0))
    if n == 0:
        return None
    k = idx[rng.integers(0, len(idx), n)]
    u = rng.random((7, n))
    keep = depth.ravel()[k] > 2.0 + 8.0 * u[0]
    iy, ix = np.divmod(k[keep], cv.S)
    u = u[:, keep]
    x0 = ix + u[1] - 0.5
    y0 = iy + u[2] - 0.5
    ang = u[3] * 2 * np.pi
    ln = u[4] * 4.0 / px
    r = (0.35 + 0.5 * u[5]) / px
    w = 0.4 + 0.6 * u[6]
    t = np.array([-0.5, 0.0, 0.5])
    cx = (x0[:, None] + np.cos(ang)[:, None] * ln[:, None] * t[None]).ravel()
    cy = (y0[:, None] + np.sin(ang)[:, None] * ln[:, None] * t[None]).ravel()
    return splat_discs(cv.S, cx, cy, np.repeat(r, 3), np.repeat(w, 3))
