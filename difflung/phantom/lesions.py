"""Lesion painters: the textures of emphysema, ground-glass opacity (GGO) and fibrosis on one axial slice.

Each painter reads a `LesionCanvas` (the slice grid, the lung field, the slice's random key) and writes only two of
its arrays, in place: `paren` (the parenchyma HU image, before it is blended into the slice) and `labels` (the
pathology label of each pixel, 0 where none). Literature values the textures follow:

    emphysema  holes below -950 HU (LAA-950): clusters of centrilobular holes, paraseptal subpleural holes and
               bullae (>= 1 cm, with a thin wall);
    ggo        hazy patches of -750..-300 HU through which vessels stay visible (vessels are drawn afterwards);
    fibrosis   subpleural reticulation (soft-tissue lines) with honeycomb cysts (3-10 mm across, 1-3 mm walls,
               stacked rows from the pleura): a two-peak texture of soft tissue and cyst air.

Structures smaller than the slice spacing (holes, cysts, reticulation) are drawn afresh on every slice inside the
lesions' 3D extents, from streams derived from the slice key (and, for emphysema, each lesion's own seed).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from difflung import labels as L
from difflung.phantom.canvas import Canvas, splat_discs
from difflung.phantom.config import HU, PatientParams, child_rng
from difflung.phantom.noise import blur_taps, medium_noise, sep_blur, smooth_field
from difflung.phantom.sdf import smoothstep


@dataclass(eq=False)
class LesionCanvas:
    """What a lesion painter needs of one slice. Painters write `paren` and `labels` in place, nothing else.

    Args:
        patient: the patient whose lesions (3D centres and extents, mm) are painted.
        canvas: the slice grid (`S` pixels, pixel size `px` mm, `bbox`, `to_px`); its image is not touched.
        X, Y: (S, S) pixel-centre coordinates in mm.
        z, zmm: the slice height, normalised (0 apex, 1 base) and in mm from the apex.
        key: the slice's random key; each painter derives its own stream from it.
        field_mask: (S, S) bool, the lung field.
        depth: (S, S) mm below the pleura (negative outside the lung field).
        paren: (S, S) float32 parenchyma HU, written in place.
        labels: (S, S) uint8 pathology label ids (0: none), written in place.
    """

    patient: PatientParams
    canvas: Canvas
    X: np.ndarray
    Y: np.ndarray
    z: float
    zmm: float
    key: int
    field_mask: np.ndarray
    depth: np.ndarray
    paren: np.ndarray
    labels: np.ndarray

    @property
    def fov(self) -> float:
        # S * px, not the config's fov_mm: the two differ in the last bit for some sizes (e.g. 77 px), and the
        # painters have always used this one, so the phantom's output stays byte-identical.
        return self.canvas.S * self.canvas.px

    def active(self, kind: str) -> list[tuple[dict, float, float]]:
        """Lesions of `kind` that this slice cuts: (lesion, z offset from its centre mm, its z radius mm)."""
        out = []
        for les in self.patient.lesions.get(kind, ()):
            Rz = les.get("Rz", les["R"])
            dz = self.zmm - les["c"][2]
            if abs(dz) < Rz:
                out.append((les, dz, Rz))
        return out


def paint_ggo(lc: LesionCanvas) -> None:
    """Hazy GGO patches: each lesion an ellipsoid with a noisy border, HU around its own level (writes in place)."""
    act = lc.active("ggo")
    if not act:
        return
    cv, X, Y, paren, lab_path, field_mask = lc.canvas, lc.X, lc.Y, lc.paren, lc.labels, lc.field_mask
    S, fov = cv.S, lc.fov
    nf = smooth_field(lc.patient, lc.z, S, fov, (1, 4))
    med = medium_noise(child_rng(lc.key, 11), S, fov)
    for les, dz, Rz in act:
        R = les["R"]
        f0 = 1.0 - (dz / Rz) ** 2
        Re = R * math.sqrt(f0 + 1.2)
        sl = cv.bbox(les["c"][0], les["c"][1], Re, Re)
        if sl is None:
            continue
        x, y = X[sl], Y[sl]
        md = med[sl]
        f = (f0 - ((x - les["c"][0]) ** 2 + (y - les["c"][1]) ** 2) * (1.0 / (R * R))
             + 0.3 * np.clip(nf[0][sl], -2.0, 2.0) + 0.22 * np.clip(md, -2.5, 2.5))
        w = smoothstep(-0.02, 0.22, f)
        T = les["T"] + 45.0 * nf[1][sl] + 35.0 * md
        p = paren[sl]
        p += (T - p) * w
        m = (w >= 0.5) & field_mask[sl]
        lp = lab_path[sl]
        lp[m] = L.GGO


def _fibrosis_zone(lc: LesionCanvas, act, nf):
    """Per pixel, the strongest fibrosis lesion: Q (> 0 inside; within the lesion's ellipsoid and its subpleural
    depth D), and that lesion's honeycomb weight hc, base HU T and depth D, all (S, S) float32."""
    S = lc.canvas.S
    Q = np.full((S, S), -1.0, np.float32)
    HC = np.zeros((S, S), np.float32)
    T = np.zeros((S, S), np.float32)
    D = np.ones((S, S), np.float32)
    for les, dz, Rz in act:
        R = les["R"]
        f0 = 1.0 - (dz / Rz) ** 2
        Re = R * math.sqrt(f0 + 0.65)
        sl = lc.canvas.bbox(les["c"][0], les["c"][1], Re, Re)
        if sl is None:
            continue
        x, y = lc.X[sl], lc.Y[sl]
        f = f0 - ((x - les["c"][0]) ** 2 + (y - les["c"][1]) ** 2) * (1.0 / (R * R)) + 0.3 * np.clip(nf[sl], -2.0, 2.0)
        q = np.minimum(f, (les["D"] - lc.depth[sl]) / les["D"] + 0.15 * nf[sl])
        better = q > Q[sl]
        Q[sl] = np.where(better, q, Q[sl])
        HC[sl] = np.where(better, les["hc"], HC[sl])
        T[sl] = np.where(better, les["T"], T[sl])
        D[sl] = np.where(better, les["D"], D[sl])
    return Q, HC, T, D


def paint_fibrosis(lc: LesionCanvas) -> None:
    """Subpleural reticulation with honeycombing inside the fibrosis lesions' zone (writes in place)."""
    act = lc.active("fibrosis")
    if not act:
        return
    S, px = lc.canvas.S, lc.canvas.px
    nf = smooth_field(lc.patient, lc.z, S, lc.fov, (2,))[0]
    Q, HC, T, D = _fibrosis_zone(lc, act, nf)
    region = (Q > 0) & lc.field_mask
    rows = np.flatnonzero(region.any(1))
    if len(rows) == 0:
        return
    cols = np.flatnonzero(region.any(0))
    r0, r1 = max(0, rows[0] - 2), min(S, rows[-1] + 3)
    c0, c1 = max(0, cols[0] - 2), min(S, cols[-1] + 3)
    sl = (slice(r0, r1), slice(c0, c1))
    rng = child_rng(lc.key, 12)
    reg, dep, hc = region[sl], lc.depth[sl], HC[sl]
    # reticulation: level set of band-pass noise -> a network of soft-tissue lines, denser near the pleura
    noise = sep_blur(rng.standard_normal(reg.shape).astype(np.float32), blur_taps(max(0.6, 1.6 / px)))
    noise /= noise.std() + 1e-6
    rel = np.clip(dep / D[sl], 0.0, 1.0)
    # sharp-edged lines (a band around the zero level), more of them close to the pleura
    width = 0.28 + 0.22 * (1.0 - rel)
    lines = np.clip((width - np.abs(noise)) * (1.0 / 0.12), 0.0, 1.0)
    base = T[sl] + 30.0 * nf[sl]
    fib = base + (HU["fibrosis_line"] - base) * lines
    fib = _honeycomb(rng, px, lc.X[sl], lc.Y[sl], dep, reg, hc, fib)
    w = smoothstep(-0.04, 0.04, Q[sl])
    p = lc.paren[sl]
    p += (fib - p) * w
    lc.labels[sl][reg] = L.FIBROSIS


def _pack_cysts(rng, px, x, y, dep, hc, zone):
    """Candidate cysts in `zone`, packed greedily without overlap, rows nearest the pleura first.

    Returns (x mm, y mm, radius mm, wall mm) of the accepted cysts, or None.
    """
    iy, ix = np.nonzero(zone)
    if len(iy) == 0:
        return None
    n = int(rng.poisson(len(iy) * px * px / 14.0))
    if n == 0:
        return None
    k = rng.integers(0, len(iy), n)
    cy_, cx_ = iy[k], ix[k]
    keep = rng.random(n) < hc[cy_, cx_]
    r = rng.uniform(1.5, 5.0, n)
    wall = rng.uniform(0.7, 1.5, n)
    jx, jy = rng.uniform(-0.5, 0.5, (2, n)) * px
    order = np.argsort(dep[cy_, cx_] + rng.uniform(0, 3.0, n))
    cy_, cx_, r, wall, jx, jy, keep = (a[order] for a in (cy_, cx_, r, wall, jx, jy, keep))
    d = dep[cy_, cx_]
    ok = keep & (d >= 0.7 * r)
    px_x = x[cy_, cx_] + jx
    px_y = y[cy_, cx_] + jy
    acc = np.zeros(n, bool)
    ax = np.empty(n); ay = np.empty(n); ar = np.empty(n)
    m = 0
    for j in np.flatnonzero(ok):
        if m:
            dd = (ax[:m] - px_x[j]) ** 2 + (ay[:m] - px_y[j]) ** 2
            if np.any(dd < (ar[:m] + r[j] + 0.8 * wall[j]) ** 2):
                continue
        ax[m], ay[m], ar[m] = px_x[j], px_y[j], r[j] + 0.8 * wall[j]
        acc[j] = True
        m += 1
    if m == 0:
        return None
    return px_x[acc], px_y[acc], r[acc], wall[acc]


def _honeycomb(rng, px, x, y, dep, region, hc, fib):
    """Honeycomb cysts (r 1.5-5 mm, walls 0.7-1.5 mm) packed in rows from the pleura, where hc > 0.

    Args:
        rng: the fibrosis stream of the slice (continued from the reticulation noise).
        px: pixel size (mm).
        x, y, dep, region, hc, fib: the fibrosis bounding box's coordinates (mm), depth below the pleura (mm),
            region mask, honeycomb weight and HU texture, all of one shape.

    Returns:
        the texture `fib` with cyst walls and cyst air drawn (a new array).
    """
    zone = region & (dep < 3.0 + 11.0 * hc) & (hc > 0.15)
    cysts = _pack_cysts(rng, px, x, y, dep, hc, zone)
    if cysts is None:
        return fib
    cxr, cyr, rr, ww = cysts
    r_floor = 0.8 * px
    # sub-pixel cysts keep their area at a resolvable size
    small = rng.random(len(rr)) < np.minimum(1.0, (rr / r_floor) ** 2)
    cxr, cyr, rr, ww = cxr[small], cyr[small], np.maximum(rr[small], r_floor), ww[small]
    x0, y0 = float(x[0, 0]), float(y[0, 0])
    cxp, cyp = (cxr - x0) / px, (cyr - y0) / px
    sh = x.shape
    Sb = max(sh)
    outer = splat_discs(Sb, cxp, cyp, (rr + ww) / px)[:sh[0], :sh[1]]
    inner = splat_discs(Sb, cxp, cyp, rr / px)[:sh[0], :sh[1]]
    fib = fib + (HU["fibrosis_line"] - fib) * outer
    fib = fib + (HU["cyst"] - fib) * inner
    return fib


# log-normal hole radii (mm) per emphysema type: (log median, sigma, min, max)
_HOLE_R2 = {"centrilobular": (math.log(2.4), 0.4, 1.0, 6.0), "paraseptal": (math.log(3.5), 0.35, 1.5, 7.0)}


def _emphysema_holes(lc: LesionCanvas, les: dict, Re: float, r_floor: float):
    """Holes of one centrilobular or paraseptal lesion in its cross section of radius Re (mm): (x, y, r) mm, or
    None when it draws none. Paraseptal holes stay subpleural; sub-pixel holes keep their area at `r_floor`."""
    cv = lc.canvas
    S = cv.S
    rng = child_rng(les["seed"], lc.key, 2)
    mu, sg, lo, hi = _HOLE_R2[les["type"]]
    n = int(rng.poisson(les["fill"] * Re * Re / math.exp(2 * mu + 2 * sg * sg)))
    if n == 0:
        return None
    r = np.clip(rng.lognormal(mu, sg, n), lo, hi)
    rho = Re * np.sqrt(rng.random(n))
    ang = rng.uniform(0, 2 * np.pi, n)
    x = les["c"][0] + rho * np.cos(ang)
    y = les["c"][1] + rho * np.sin(ang)
    keep_u = rng.random(n)
    cxp, cyp = cv.to_px(x, y)
    ix = np.clip(np.round(cxp).astype(np.int64), 0, S - 1)
    iy = np.clip(np.round(cyp).astype(np.int64), 0, S - 1)
    ok = lc.field_mask[iy, ix]
    if les["type"] == "paraseptal":
        ok &= lc.depth[iy, ix] < 2.2 * r + 1.0
    ok &= keep_u < np.minimum(1.0, (r / r_floor) ** 2)
    return x[ok], y[ok], np.maximum(r[ok], r_floor)


def paint_emphysema(lc: LesionCanvas) -> np.ndarray | None:
    """Emphysema holes and bullae (writes in place).

    Returns:
        the holes' coverage (S, S) float32 within the lung field, or None when the slice has none (vessels are
        suppressed inside the holes).
    """
    cv, paren = lc.canvas, lc.paren
    px, S = cv.px, cv.S
    xs, ys, rs = [], [], []
    bx, by, br = [], [], []
    r_floor = 1.2 * px
    for les, dz, Rz in lc.active("emphysema"):
        R = les["R"]
        Re = math.sqrt(max(R * R - dz * dz, 0.0))
        if les["type"] == "bulla":
            bx.append(les["c"][0]); by.append(les["c"][1]); br.append(Re)
            continue
        holes = _emphysema_holes(lc, les, Re, r_floor)
        if holes is not None:
            xs.append(holes[0]); ys.append(holes[1]); rs.append(holes[2])
    cov = None
    if xs:
        x, y, r = np.concatenate(xs), np.concatenate(ys), np.concatenate(rs)
        cx, cy = cv.to_px(x, y)
        cov = splat_discs(S, cx, cy, r / px)
    if bx:  # bullae: one large hole with a thin soft wall
        cx, cy = cv.to_px(np.array(bx), np.array(by))
        rb = np.array(br) / px
        wall = splat_discs(S, cx, cy, rb + 0.8 / px)
        bcov = splat_discs(S, cx, cy, rb)
        paren += (np.float32(-250.0) - paren) * (wall - bcov) * 0.6
        cov = bcov if cov is None else np.maximum(cov, bcov)
    if cov is None:
        return None
    cov *= lc.field_mask
    paren += (np.float32(HU["emphysema"]) - paren) * cov
    lc.labels[cov >= 0.5] = L.EMPHYSEMA
    return cov
