"""Painters of everything outside the lungs on one slice: body wall, ribs, spine, sternum, scapulae, mediastinum.

Each takes the `Canvas`, the patient's anatomy `an`, its geometry `g` at the slice height (`geometry.geom_at`) and
the pixel coordinates X, Y (mm), and paints the canvas image (and the body label) in place.
"""
from __future__ import annotations

import math

import numpy as np

from difflung import labels as L
from difflung.phantom.canvas import capsule_points
from difflung.phantom.config import HU
from difflung.phantom.sdf import ellipse_cov, ellipse_sdf, smoothstep


def paint_body(cv, an, g, X, Y, z, zmm):
    """Body outline (subcutaneous fat, labelled body), muscle, the thoracic cavity (mediastinal fat), then the
    bones and mediastinal organs.

    Returns:
        (body coverage, cavity signed distance mm, cavity coverage), each (S, S).
    """
    px = cv.px
    cov_body = ellipse_cov(X, Y, g["bcx"], g["bcy"], g["ba"], g["bb"], px)
    cv.paint(cov_body, an["fat_hu"], label=L.BODY)
    cv.paint(ellipse_cov(X, Y, g["bcx"], g["mcy"], g["ma"], g["mb"], px), an["muscle_hu"])
    sd_cav = ellipse_sdf(X, Y, 0.0, g["ccy"], g["ca"], g["cb"])
    cov_cav = np.clip(0.5 - sd_cav / px, 0.0, 1.0)
    cv.paint(cov_cav, HU["mediastinal_fat"])
    paint_ribs(cv, an, g, X, Y, sd_cav, zmm)
    paint_bones(cv, an, g, X, Y, z)
    paint_mediastinum(cv, an, g, X, Y, z, cov_cav)
    return cov_body, sd_cav, cov_cav


def paint_ribs(cv, an, g, X, Y, sd_cav, zmm):
    """Ribs in the chest-wall band outside the cavity: oblique bands (pitch and drop per patient) with a
    cortical rim, costal cartilage anteriorly."""
    rt = an["rib_t"]
    band = (sd_cav > 0.5) & (sd_cav < rt - 0.5)
    iy, ix = np.nonzero(band)
    if len(iy) == 0:
        return
    x, y = X[iy, ix], Y[iy, ix]
    th = np.arctan2(np.abs(x), y - g["ccy"])  # 0 posterior, pi anterior
    side = np.where(x < 0, an["rib_phaseR"], an["rib_phaseL"])
    n = (zmm - an["rib_drop"] * th / np.pi) / an["rib_pitch"] + side
    q = (n - np.floor(n)) / 0.45
    rr = (sd_cav[iy, ix] - 0.5) / (rt - 1.0)
    e = ((rr - 0.5) / 0.5) ** 2 + ((q - 0.5) / 0.5) ** 2
    bone = (q < 1.0) & (e < 1.0) & (th < 0.93 * np.pi)
    cart = (q < 1.0) & (e < 1.0) & (th >= 0.8 * np.pi) & (th < 0.93 * np.pi)
    val = np.where(e > 0.4, HU["cortical_bone"], HU["cancellous_bone"])
    val = np.where(cart, HU["cartilage"], val)
    ok = bone | cart
    cv.img[iy[ok], ix[ok]] = val[ok]


def paint_bones(cv, an, g, X, Y, z):
    """Vertebra (body, canal, posterior elements), sternum and, in the upper half, the scapulae."""
    cb, cr = HU["cortical_bone"], HU["cancellous_bone"]
    rvb = g["r_vb"]
    yvb = g["y_vb"]
    # posterior elements: lamina arch, spinous and transverse processes
    yc = yvb + rvb + 9.0
    cv.ellipse(X, Y, 0.0, yc, 13.0, 11.0, cb * 0.8)
    for s in (-1, 1):
        x, y, r = capsule_points([[s * 8.0, yc - 2]], [[s * 34.0, yc + 4]], 4.5, 2.0)
        cv.discs(x, y, r, cb * 0.8)
    back = g["bcy"] + g["bb"]
    x, y, r = capsule_points([[0.0, yc + 8]], [[0.0, max(yc + 10.0, min(yc + 32.0, back - 12.0))]], 4.0, 2.0)
    cv.discs(x, y, r, cb * 0.8)
    cv.ellipse(X, Y, 0.0, yc, 7.5, 7.0, HU["csf"])  # spinal canal
    cv.ellipse(X, Y, 0.0, yvb, rvb * 1.08, rvb, cb, cortex=1.8, inner=cr)
    # sternum
    if -0.05 < z < 0.9:
        w = 13.0 + 10.0 * (1 - smoothstep(0.05, 0.3, z))
        ys = g["ccy"] - g["cb"] - 0.45 * an["rib_t"]
        cv.ellipse(X, Y, 0.0, ys, w, 6.5, cb, cortex=1.5, inner=cr)
    # scapulae (upper half, posterolateral outside the ribs)
    if z < 0.6:
        fade = 1.0 - smoothstep(0.4, 0.6, z)
        for s in (-1, 1):
            a, b = g["ca"] + an["rib_t"] + 5.0, g["cb"] + an["rib_t"] + 5.0
            t0, t1 = 0.22 * np.pi, 0.52 * np.pi
            p0 = [s * a * math.sin(t0), g["ccy"] + b * math.cos(t0)]
            p1 = [s * a * math.sin(t1), g["ccy"] + b * math.cos(t1)]
            x, y, r = capsule_points([p0], [p1], 3.0 * fade + 0.5, 2.0)
            cv.discs(x, y, r, cb * 0.8)


def paint_mediastinum(cv, an, g, X, Y, z, cov_cav):
    """Liver and spleen under the domes, oesophagus, aorta and its arch, vena cava, supra-aortic vessels,
    pulmonary trunk and the heart with pericardial fat, each at the heights where it appears."""
    blood = HU["blood"]
    rao = an["r_ao"]
    xa, ya = -0.05 * g["ca"], g["ccy"] - 0.38 * g["cb"]  # ascending aorta
    xd, yd = an["x_da"], g["y_vb"] - 0.45 * g["r_vb"] - 6.0  # descending aorta
    # domes: liver (right), spleen / stomach (left), inside the cavity
    for s, key, hu in ((-1, "R", HU["liver"]), (1, "L", HU["spleen"])):
        kd = g["dome" + key]
        if kd > 0:
            hw = 0.5 * (g["ca"] - g["m"])
            cx = s * 0.5 * (g["m"] + g["ca"]) + s * 0.08 * hw
            sl = cv.bbox(cx, g["ccy"], kd * hw * 1.4 + 20, kd * g["cb"] * 1.4 + 20)
            if sl is not None:
                sd = ellipse_sdf(X[sl], Y[sl], cx, g["ccy"] - 0.32 * g["cb"], kd * hw * 1.02 + 8.0, kd * g["cb"] + 8.0)
                cov = np.clip(0.5 - sd / cv.px, 0, 1) * cov_cav[sl]
                cv.paint(cov, hu, sl)
    # oesophagus, trachea region soft tissue
    cv.ellipse(X, Y, 4.0, g["y_es"], 8.0, 6.5, an["muscle_hu"])
    if z > an["z_arch"] - 0.01:
        cv.ellipse(X, Y, xd, yd, rao * 0.85, rao * 0.85, blood)
    if an["z_arch"] - 0.045 < z < an["z_arch"] + 0.005:
        x, y, r = capsule_points([[xa, ya]], [[xd, yd]], rao * 0.9, 3.0)
        cv.discs(x, y, r, blood)
    if an["z_arch"] < z < an["z_heart"] + 0.06:
        cv.ellipse(X, Y, xa, ya, rao, rao, blood)
        # superior vena cava
        cv.ellipse(X, Y, xa - rao - 9.0, ya + 2.0, 9.0, 8.0, blood)
    if z < an["z_arch"]:  # supra-aortic vessels
        for dx, r in ((-14.0, 6.0), (6.0, 5.0), (18.0, 5.5)):
            cv.ellipse(X, Y, dx, g["y_tr"] - an["r_tr"] - 9.0, r, r, blood)
    zpa = an["z_arch"] + 0.1
    if zpa - 0.05 < z < zpa + 0.06:
        cv.ellipse(X, Y, xa + rao + 12.0, ya - 4.0, 13.0, 13.0, blood)  # pulmonary trunk
    # heart with pericardial fat
    h = g["heart"]
    if h > 0:
        hx, hy = an["heart_x"] * g["ca"], g["ccy"] - an["heart_y"] * g["cb"]
        a, b = h * an["heart_a"] * g["ca"], h * an["heart_b"] * g["cb"]
        cv.ellipse(X, Y, hx, hy, a + 3.5, b + 3.5, HU["fat"], rot=an["heart_rot"])
        cv.ellipse(X, Y, hx, hy, a, b, blood, rot=an["heart_rot"])
