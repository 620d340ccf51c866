"""Patient geometry as a function of height: body, chest wall, mediastinum and the lungs' signed distance.

Coordinates: x in mm towards the patient's left (image right), y in mm towards posterior (image down), z
normalised from the lung apex (0) to the base (1). `geom_at` turns a patient's scalar anatomy (from
`anatomy.sample_anatomy`) into sizes and positions at height z; the lung field is the thoracic cavity split by
the mediastinum, capped at the apex, cut by the diaphragm domes, and wrapped around the spine, descending aorta
and heart (smooth maxima of signed distance fields, so the lungs' borders stay rounded).
"""
from __future__ import annotations

import numpy as np

from difflung.phantom.sdf import disc_sdf, ellipse_sdf, rot_ellipse_sdf, smax, smoothstep


def geom_at(an: dict, z):
    """Anatomy at normalised height z (scalar, or an array for points): sizes and positions in mm."""
    z = np.asarray(z, dtype=np.float64)
    zc = np.clip(z, -0.2, 1.3)
    g = {}
    g["ba"] = an["body_a"] * (1.0 - 0.05 * (1.0 - np.clip(zc, 0, 1)) ** 2) * (1.0 + an["belly"] * smoothstep(0.75, 1.2, zc))
    g["bb"] = an["body_b"] * (0.90 + 0.10 * smoothstep(0.0, 0.7, zc)) * (1.0 + 1.5 * an["belly"] * smoothstep(0.7, 1.2, zc))
    g["bcx"] = an["body_cx"]
    g["bcy"] = an["body_cy"] + (g["bb"] - an["body_b"]) * -0.6
    fat = an["fat"] * (1.0 + 0.6 * smoothstep(0.7, 1.2, zc))
    f_lat, f_ant, f_post = fat, 0.7 * fat, 0.6 * fat
    mus = an["muscle"] * (1.0 + 0.8 * (1.0 - smoothstep(0.0, 0.35, zc)))  # shoulder girdle at the apex
    rib = an["rib_t"]
    w_lat = f_lat + mus + rib
    w_ant = f_ant + 0.6 * mus + rib
    w_post = f_post + 1.5 * mus + rib
    open_ = smoothstep(-0.1, 0.45, zc)  # the thoracic cage narrows towards the apex
    ca_full = g["ba"] - w_lat
    cb_full = g["bb"] - 0.5 * (w_ant + w_post)
    g["ca"] = ca_full * (0.55 + 0.45 * open_)
    g["cb"] = cb_full * (0.62 + 0.38 * open_)
    g["ccy"] = g["bcy"] + 0.5 * (w_ant - w_post) + 0.55 * (cb_full - g["cb"])
    g["f_lat"], g["f_ant"], g["f_post"], g["mus"] = f_lat, f_ant, f_post, mus
    g["ma"] = g["ba"] - f_lat  # muscle ellipse
    g["mb"] = g["bb"] - 0.5 * (f_ant + f_post)
    g["mcy"] = g["bcy"] + 0.5 * (f_ant - f_post)
    # mediastinum half width, wider around the hila and the aortic arch
    g["m"] = an["med_w"] * (1.0 + 0.35 * np.exp(-((zc - an["z_hil"]) / 0.12) ** 2))
    g["m_tilt"] = an["med_tilt"]
    g["m_bulge"] = an["med_bulge"] * np.exp(-((zc - an["z_hil"]) / 0.2) ** 2)
    # spine: vertebral body centre protrudes into the posterior cavity
    g["r_vb"] = an["r_vb"] * (0.85 + 0.25 * np.clip(zc, 0, 1.2))
    g["y_vb"] = g["ccy"] + g["cb"] - 0.55 * g["r_vb"]
    # trachea / oesophagus in front of the spine
    g["y_es"] = g["y_vb"] - g["r_vb"] - 7.0
    g["y_tr"] = g["y_es"] - 6.0 - an["r_tr"]
    g["y_tr"] = np.maximum(g["y_tr"], g["ccy"] - 0.6 * g["cb"])
    # lung apices (caps) and diaphragm domes per side
    g["cap"] = np.sqrt(np.clip(zc / 0.2, 0.0, 1.0))
    g["below"] = (zc - 1.0) * an["L"]  # no lung below the base (z > 1)
    for s, key in ((-1, "R"), (1, "L")):
        zd = an["z_dome" + key]
        k = np.sqrt(np.clip((zc - zd) / (1.0 - zd), 0.0, 2.0))
        g["dome" + key] = k
    # heart
    hz = np.clip((zc - an["z_heart"]) / (1.02 - an["z_heart"]), 0.0, 1.0)
    h = np.sin(np.pi * (0.12 + 0.88 * hz)) ** 0.7
    g["heart"] = np.where((hz > 0) & (h > 0.05), h, 0.0)
    return g


# smooth-maximum radii (mm) of the lung-to-mediastinum and lung-to-cut-out corners, and the margin (mm) beyond
# a cut-out within which its term can still change the lung sdf on the slice grid
_K_SIDE, _K_CUT, _CUT_MARGIN = 7.0, 5.0, 30.0


def _cut_structures(an, g):
    """Mediastinal structures the lungs wrap around: (kind, cx, cy, r) mm, with their margins included."""
    out = [("disc", 0.0, g["y_vb"], g["r_vb"] + 5.0),  # spine + paravertebral soft tissue
           ("disc", an["x_da"], g["y_vb"] - 0.45 * g["r_vb"] - 6.0, an["r_ao"] * 0.85 + 3.0)]  # descending aorta
    return out


def _heart_axes(an, g):
    """Heart ellipse (cx, cy, a, b) in mm, pericardial margin included."""
    h = g["heart"]
    hh = np.maximum(h, 1e-3)
    return (an["heart_x"] * g["ca"], g["ccy"] - an["heart_y"] * g["cb"],
            hh * an["heart_a"] * g["ca"] + 4.0, hh * an["heart_b"] * g["cb"] + 4.0)


def _side_sdf(g, s, x, y, cav, bbox_fn=None):
    """Signed distance to one lung before the mediastinal cut-outs."""
    key = "R" if s < 0 else "L"
    yrel = (y - g["ccy"]) * (1.0 / g["cb"])
    med = (g["m"] + g["m_tilt"] * yrel + g["m_bulge"] * (1.0 - yrel * yrel)) - s * x  # medial boundary
    d = smax(cav, med, _K_SIDE)
    cx = s * 0.5 * (g["m"] + g["ca"])
    hw = 0.5 * (g["ca"] - g["m"])
    if np.any(g["cap"] < 1.0):
        cap_a = np.maximum(g["cap"], 1e-3)
        cap = ellipse_sdf(x, y, cx, g["ccy"] + 0.18 * g["cb"], cap_a * hw * 1.8, cap_a * g["cb"] * 1.5)
        d = np.maximum(d, np.where(g["cap"] < 1.0, cap, -1e3))
    d = np.maximum(d, g["below"])
    kd = g["dome" + key]
    if np.any(kd > 0):
        kd_ = np.maximum(kd, 1e-3)
        dcx, dcy, da, db = cx + s * 0.08 * hw, g["ccy"] - 0.32 * g["cb"], kd_ * hw * 1.02, kd_ * g["cb"]
        if bbox_fn is None:
            dome = ellipse_sdf(x, y, dcx, dcy, da, db)
            d = smax(d, np.where(kd > 0, -dome, -1e3), _K_SIDE)
        else:
            sl = bbox_fn(dcx, dcy, da + _CUT_MARGIN, db + _CUT_MARGIN)
            if sl is not None:
                d[sl] = smax(d[sl], -ellipse_sdf(x[sl], y[sl], dcx, dcy, da, db), _K_SIDE)
    return d


def lung_sdf(an: dict, g: dict, x, y, side: int | None = None, cav=None):
    """Approximate signed distance (mm, negative inside) to the lung field at points (x, y) with geometry g."""
    if cav is None:
        cav = ellipse_sdf(x, y, 0.0, g["ccy"], g["ca"], g["cb"])
    sides = (-1, 1) if side is None else (side,)
    out = None
    for s in sides:
        d = _side_sdf(g, s, x, y, cav)
        out = d if out is None else np.minimum(out, d)
    for _, cx, cy, r in _cut_structures(an, g):
        out = smax(out, -disc_sdf(x, y, cx, cy, r), _K_CUT)
    h = g["heart"]
    if np.any(h > 0):
        hx, hy, ha, hb = _heart_axes(an, g)
        hs = rot_ellipse_sdf(x, y, hx, hy, ha, hb, an["heart_rot"])
        out = smax(out, np.where(h > 0, -hs, -1e3), _K_CUT)
    return out


def lung_sdf_image(an: dict, g: dict, cv, X, Y, cav):
    """`lung_sdf` on the slice grid, computed only where each term can matter (outside the lungs: >= 0)."""
    S, px = cv.S, cv.px
    out = np.full((S, S), 60.0, np.float32)
    xs = X[0]
    mmin = g["m"] - abs(g["m_tilt"]) * 1.6 - _K_SIDE - 2 * px - max(0.0, -g["m_bulge"])
    for s in (-1, 1):
        cols = np.flatnonzero(s * xs > mmin)
        if len(cols) == 0:
            continue
        cs = (slice(None), slice(int(cols[0]), int(cols[-1]) + 1))
        x, y = X[cs], Y[cs]

        def bbox_fn(cx, cy, rx, ry, _c0=int(cols[0]), _c1=int(cols[-1]) + 1):
            sl = cv.bbox(cx, cy, rx, ry)
            if sl is None:
                return None
            a, b = max(sl[1].start, _c0) - _c0, min(sl[1].stop, _c1) - _c0
            return None if b <= a else (sl[0], slice(a, b))

        d = _side_sdf(g, s, x, y, cav[cs], bbox_fn)
        o = out[cs]
        np.minimum(o, d, out=o)
    for _, cx, cy, r in _cut_structures(an, g):
        sl = cv.bbox(cx, cy, r + _CUT_MARGIN, r + _CUT_MARGIN)
        if sl is not None:
            out[sl] = smax(out[sl], -disc_sdf(X[sl], Y[sl], cx, cy, r), _K_CUT)
    if g["heart"] > 0:
        hx, hy, ha, hb = _heart_axes(an, g)
        R = max(ha, hb) + _CUT_MARGIN
        sl = cv.bbox(hx, hy, R, R)
        if sl is not None:
            out[sl] = smax(out[sl], -rot_ellipse_sdf(X[sl], Y[sl], hx, hy, ha, hb, an["heart_rot"]), _K_CUT)
    return out


def lung_points_sdf(an, P, side=None):
    """`lung_sdf` at 3D points P (n, 3) in mm (x, y, z_mm), each at its own height."""
    z = P[:, 2] / an["L"]
    g = geom_at(an, z)
    return lung_sdf(an, g, P[:, 0], P[:, 1], side)
