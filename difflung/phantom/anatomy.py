"""Patient anatomy: the scalar body parameters, pulmonary artery and vein trees, bronchi, and the lung volume.

Trees grow in 3D inside each lung (`geometry.lung_points_sdf`) from hilar roots: lobar trunks, then tapering
binary branching by Murray's law (r^3 = r1^3 + r2^3) with minimum-work branching angles. Bronchi run beside, and
posterior to, the larger arteries, joined to the trachea by the main bronchi.
"""
from __future__ import annotations

import numpy as np

from difflung.phantom.geometry import geom_at, lung_points_sdf


def _grow_tree(rng, an, side, p, d, r, r_min, length_range, max_segments=6000, margin_k=1.2):
    """Grow a tapering binary tree from roots (p (k,3), d (k,3), r (k,)) inside one lung.

    Children follow Murray's law (r^3 = r1^3 + r2^3) with minimum-work branching angles, a random branching plane
    and a pull away from the root; a branch whose end would leave the lung (with a radius-dependent margin) is
    shortened once, then dropped.
    """
    p = np.asarray(p, np.float64)
    d = np.asarray(d, np.float64)
    d = d / np.linalg.norm(d, axis=1, keepdims=True)
    r = np.asarray(r, np.float64)
    root = p.copy()
    segs0, segs1, radii = [], [], []
    total = 0
    g55 = geom_at(an, 0.55)
    cin = np.array([side * 0.5 * (float(g55["m"]) + float(g55["ca"])), float(g55["ccy"] + 0.1 * g55["cb"])])
    for gen in range(24):
        n = len(p)
        if n == 0 or total >= max_segments:
            break
        lo, hi = length_range
        ln = r * rng.uniform(lo, hi, n) + 2.0
        margin = margin_k * r + 1.0
        # candidates: full length, half length, then turned towards the lung's centre (one sdf call)
        tin = np.zeros((n, 3))
        tin[:, :2] = cin[None] - p[:, :2]
        tin /= np.linalg.norm(tin, axis=1, keepdims=True) + 1e-9
        turn = rng.standard_normal((n, 3)) * 0.3
        da = d + 0.6 * tin + turn
        db = d + 1.2 * tin + 2.0 * turn
        da /= np.linalg.norm(da, axis=1, keepdims=True)
        db /= np.linalg.norm(db, axis=1, keepdims=True)
        D4 = np.stack([d, d, da, db])
        L4 = np.stack([ln, 0.5 * ln, 0.8 * ln, 0.5 * ln])
        E4 = p[None] + D4 * L4[..., None]
        okm = (lung_points_sdf(an, E4.reshape(-1, 3), side).reshape(4, n) < -margin[None])
        first = np.argmax(okm, axis=0)
        ar_ = np.arange(n)
        e = E4[first, ar_]
        d = D4[first, ar_]
        keep = okm.any(0)
        u_asym = rng.uniform(0.45, 1.0, n)
        v = rng.standard_normal((n, 3))
        jit = rng.standard_normal((n, 3)) * 0.08
        if not keep.any():
            break
        p, e, d, r, root = p[keep], e[keep], d[keep], r[keep], root[keep]
        u_asym, v, jit = u_asym[keep], v[keep], jit[keep]
        segs0.append(p)
        segs1.append(e)
        radii.append(r)
        total += len(r)
        # children (Murray's law, minimum-work angles)
        r1 = r / (1.0 + u_asym ** 3) ** (1.0 / 3.0)
        r2 = u_asym * r1
        c1 = np.clip((r ** 4 + r1 ** 4 - r2 ** 4) / (2 * r ** 2 * r1 ** 2), -1, 1)
        c2 = np.clip((r ** 4 + r2 ** 4 - r1 ** 4) / (2 * r ** 2 * r2 ** 2), -1, 1)
        nrm = v - (v * d).sum(1, keepdims=True) * d
        nrm /= np.linalg.norm(nrm, axis=1, keepdims=True) + 1e-9
        s1, s2 = np.sqrt(1 - c1 ** 2), np.sqrt(1 - c2 ** 2)
        out = e - root
        out /= np.linalg.norm(out, axis=1, keepdims=True) + 1e-9
        d1 = c1[:, None] * d + s1[:, None] * nrm + 0.25 * out + jit
        d2 = c2[:, None] * d - s2[:, None] * nrm + 0.25 * out - jit
        d1 /= np.linalg.norm(d1, axis=1, keepdims=True)
        d2 /= np.linalg.norm(d2, axis=1, keepdims=True)
        p = np.concatenate([e, e])
        d = np.concatenate([d1, d2])
        r = np.concatenate([r1, r2])
        root = np.concatenate([root, root])
        alive = r >= r_min
        p, d, r, root = p[alive], d[alive], r[alive], root[alive]
    if not radii:
        return np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0)
    return np.concatenate(segs0), np.concatenate(segs1), np.concatenate(radii)


def sample_anatomy(rng) -> dict:
    """Scalar anatomy of one patient: sizes in mm, heights as normalised z, tissue HU (uniform draws)."""
    u = rng.uniform
    an = {
        "L": u(225.0, 275.0),
        "body_a": u(138.0, 160.0),
        "body_b": u(98.0, 118.0),
        "body_cx": u(-4.0, 4.0),
        "body_cy": u(2.0, 12.0),
        "belly": u(0.0, 0.08),
        "fat": u(6.0, 22.0),
        "muscle": u(7.0, 12.0),
        "rib_t": u(8.0, 10.0),
        "med_w": u(14.0, 20.0),
        "med_tilt": u(6.0, 12.0),
        "med_bulge": u(4.0, 12.0),
        "z_hil": u(0.05, 0.09),  # below the carina
        "r_vb": u(15.0, 19.0),
        "r_tr": u(8.0, 10.5),
        "z_carina": u(0.28, 0.34),
        "z_domeR": u(0.66, 0.74),
        "z_heart": u(0.06, 0.10),  # below the hila
        "heart_x": u(0.12, 0.22),
        "heart_y": u(0.12, 0.25),
        "heart_a": u(0.40, 0.48),
        "heart_b": u(0.50, 0.60),
        "heart_rot": u(-0.75, -0.45),
        "r_ao": u(12.0, 15.5),
        "x_da": u(16.0, 24.0),
        "z_arch": u(0.26, 0.32),
        "rib_pitch": u(19.0, 24.0),
        "rib_drop": u(95.0, 130.0),
        "rib_phaseR": u(0.0, 1.0),
        "rib_phaseL": u(0.0, 1.0),
        "lung_offset": u(-4.0, 4.0),
        "lung_grad": u(2.0, 6.0),
        "fat_hu": u(-110.0, -85.0),
        "muscle_hu": u(35.0, 55.0),
    }
    an["z_domeL"] = an["z_domeR"] + u(0.02, 0.06)
    an["z_hil"] += an["z_carina"]
    an["z_heart"] += an["z_hil"]
    return an


def _hilum(an, s, dz=0.0):
    """Hilar root (x, y, z_mm) of side s (-1 right, 1 left), dz below the hilum level."""
    z = an["z_hil"] + dz
    g = geom_at(an, z)
    return np.array([s * (float(g["m"]) + 3.0), float(g["ccy"] - 0.12 * g["cb"]), z * an["L"]])


_LOBES = {  # initial directions (x * side, y, z) of the lobar branches
    "artery": [(0.45, 0.15, -0.9), (0.55, -0.55, 0.45), (0.4, 0.45, 0.85), (0.8, 0.35, 0.1), (0.3, 0.8, 0.55)],
    "vein": [(0.5, -0.3, -0.8), (0.6, -0.45, 0.3), (0.45, 0.35, 0.8), (0.7, 0.25, 0.65)],
}


def _grow_from_hilum(rng, an, s, root, dirs, r, r_min, length_range, max_segments=6000, margin_k=1.2):
    """Lobar trunks from a hilar root straight into the lung (past the mediastinal cut-outs), then a tree."""
    dirs = dirs / np.linalg.norm(dirs, axis=1, keepdims=True)
    t = np.arange(6.0, 90.0, 2.0)
    k = len(dirs)
    P = root[None, None, :] + dirs[:, None, :] * t[None, :, None]
    sd = lung_points_sdf(an, P.reshape(-1, 3), s).reshape(k, len(t))
    ok = (sd < -(margin_k * r[:, None] + 2.0)) & (t[None] >= 14.0)
    has = ok.any(1)
    j = np.argmax(ok, axis=1)
    ends = P[np.arange(k), j]
    p0, p1, rr = _grow_tree(rng, an, s, ends[has], dirs[has], 0.9 * r[has], r_min, length_range, max_segments, margin_k)
    return (np.concatenate([np.repeat(root[None], has.sum(), 0), p0]), np.concatenate([ends[has], p1]),
            np.concatenate([r[has], rr]))


def sample_trees(rng, an, r_min):
    """Pulmonary artery and vein trees of both lungs; also returns each side's artery tree (for the bronchi)."""
    segs, arteries = [], {}
    for s in (-1, 1):
        for kind, dz, r0 in (("artery", 0.0, 3.1), ("vein", 0.10, 2.9)):
            root = _hilum(an, s, dz)
            dirs = np.array([(s * a, b, c) for a, b, c in _LOBES[kind]], np.float64)
            dirs += rng.normal(0, 0.12, dirs.shape)
            r = r0 * rng.uniform(0.85, 1.1, len(dirs))
            tree = _grow_from_hilum(rng, an, s, root, dirs, r, r_min, (3.5, 6.0))
            segs.append(tree)
            if kind == "artery":
                arteries[s] = tree
    vessels = {"p0": np.concatenate([a for a, _, _ in segs]), "p1": np.concatenate([b for _, b, _ in segs]),
               "r": np.concatenate([c for _, _, c in segs])}
    return vessels, arteries


def sample_airways(an, arteries, r_min):
    """Trachea, main bronchi, and lobar to subsegmental bronchi running beside the larger arteries."""
    L_ = an["L"]
    zc = an["z_carina"]
    g = geom_at(an, zc)
    car = np.array([0.0, float(g["y_tr"]), zc * L_])
    p0 = [np.array([[0.0, float(geom_at(an, -0.3)["y_tr"]), -0.3 * L_]])]
    p1 = [car[None]]
    r = [np.array([an["r_tr"]])]
    w = [np.array([2.0])]
    r_lo = max(1.6, 2.5 * r_min)
    for s, rb in ((-1, 0.8), (1, 0.7)):
        a0, a1, ar = arteries.get(s, (np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0)))
        sel = ar >= r_lo  # the larger arteries form a rooted subtree
        a0, a1, ar = a0[sel], a1[sel], ar[sel]
        if len(ar):
            u = a1 - a0
            u /= np.linalg.norm(u, axis=1, keepdims=True) + 1e-9
            ref = np.where(np.abs(u[:, 2:3]) > 0.9, np.array([[0.0, 1.0, 0.0]]), np.array([[0.0, 0.0, 1.0]]))
            o = np.cross(u, ref)
            o /= np.linalg.norm(o, axis=1, keepdims=True) + 1e-9
            o *= np.where(o[:, 1:2] < 0, -1.0, 1.0)  # bronchus posterior to its artery
            lum = 0.8 * ar
            wall = 0.5 + 0.15 * lum
            off = (ar + lum + wall + 0.4)[:, None] * o
            b0, b1 = a0 + off, a1 + off
            inside = lung_points_sdf(an, b1, s) < -0.5 * (lum + wall)
            b0, b1, lum, wall = b0[inside], b1[inside], lum[inside], wall[inside]
        else:
            b0 = b1 = np.zeros((0, 3)); lum = wall = np.zeros(0)
        hil = _hilum(an, s)
        hil[1] += 6.0
        # main bronchus: carina -> hilum, then short connectors to the lobar bronchi
        roots = b0[np.linalg.norm(b0 - _hilum(an, s)[None], axis=1) < 25.0] if len(b0) else np.zeros((0, 3))
        p0 += [car[None], np.repeat(hil[None], len(roots), 0), b0]
        p1 += [hil[None], roots, b1]
        r += [np.array([rb * an["r_tr"]]), np.full(len(roots), 0.6 * rb * an["r_tr"]), lum]
        w += [np.array([1.6]), np.full(len(roots), 1.3), wall]
    return {"p0": np.concatenate(p0), "p1": np.concatenate(p1), "r": np.concatenate(r), "wall": np.concatenate(w)}


def lung_volume_ml(an) -> float:
    """Lung-field volume from the analytic geometry on a fixed 24^3 lattice (no randomness; within 1 %)."""
    n = 24
    zs = (np.arange(n) + 0.5) / n * 1.1
    g0 = geom_at(an, 0.6)
    xs = (np.arange(n) + 0.5) / n * 2 - 1
    X, Y, Z = np.meshgrid(xs * float(g0["ca"]) * 1.05, float(g0["ccy"]) + xs * float(g0["cb"]) * 1.1, zs, indexing="ij")
    P = np.stack([X.ravel(), Y.ravel(), Z.ravel() * an["L"]], 1)
    inside = lung_points_sdf(an, P) < 0
    cell = (2 * float(g0["ca"]) * 1.05 / n) * (2 * float(g0["cb"]) * 1.1 / n) * (1.1 * an["L"] / n)
    return float(inside.sum() * cell / 1000.0)
