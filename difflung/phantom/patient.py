"""Patient sampling: anatomy, trees, per-patient severity and the 3D pathology lesions (`sample_patient`).

Class frequencies (`PhantomConfig.emphysema`, `.ggo`, `.fibrosis`) are cohort means of the fraction of
lung-field pixels; each patient draws whether a pathology is present and how severe it is (mean 1 over a cohort),
and the number of lesions is a Poisson draw proportional to lung volume and to the count a Boolean model of
overlapping lesions needs to cover knob x severity of it. A knob of 0 gives no lesion of that class; lesion
draws are nested (inverse-CDF counts from one uniform, one stream per lesion, new lesions avoid earlier ones),
so doubling a knob keeps every lesion and about doubles the class's pixel fraction.

Lesion placement follows each pathology's zonal distribution: emphysema upper-zone (centrilobular clusters,
paraseptal subpleural holes, bullae), GGO diffuse with a posterior tilt, fibrosis basal, posterior and
subpleural (within 12 mm of the chest wall or a diaphragm dome).
"""
from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np

from difflung.phantom.anatomy import lung_volume_ml, sample_airways, sample_anatomy, sample_trees
from difflung.phantom.config import N_STREAMS, PatientParams, PhantomConfig, child_rng
from difflung.phantom.geometry import geom_at, lung_sdf
from difflung.phantom.sdf import ellipse_sdf

# Effective labelled volume (mm^3) of one lesion, from which lesion counts are drawn: calibrated on 600-patient
# cohorts (64x64, 8 slices; fractions do not depend on the size) so that the cohort mean matches the knob.
# _CROWDING: how densely a class packs into its preferred region (Boolean-model overlap correction).
_LESION_VOLUME = {"emphysema": 4270.0, "ggo": 49100.0, "fibrosis": 30100.0}
_CROWDING = {"emphysema": 1.0, "ggo": 2.0, "fibrosis": 1.5}
_PRESENCE = {"emphysema": 0.55, "ggo": 0.6, "fibrosis": 0.55}  # probability that a patient has the pathology
_SEVERITY_SHAPE = 3.0  # gamma shape of the per-patient severity among patients that have the pathology


def _poisson_inv(u: float, lam: float) -> int:
    """Inverse Poisson CDF: monotone in `lam` for a fixed `u`, so lesion draws nest when a knob grows."""
    if lam <= 0:
        return 0
    if lam > 400:
        return max(0, int(round(lam + math.sqrt(lam) * NormalDist().inv_cdf(min(max(u, 1e-12), 1 - 1e-12)))))
    k, p = 0, math.exp(-lam)
    c = p
    while u > c and k < 100000:
        k += 1
        p *= lam / k
        c += p
    return k


def _sample_in_lung(rng, an, zdist, depth=(None, None), posterior=None, avoid=None, costal=None, tries=12, batch=64):
    """A point (x, y, z_mm) in the lung field: z from Beta(zdist), depth below the pleura within `depth` (mm),
    optionally fewer of them in front (`posterior`: acceptance anteriorly), and away from earlier lesions
    (`avoid`: (centres (k, 3), xy radii (k,), z radii (k,), own xy radius, own z radius)), within `costal` mm of
    the chest wall (or of a diaphragm dome) when given."""
    for attempt in range(tries):
        z = rng.beta(*zdist, size=batch) * 0.96 + 0.02
        g = geom_at(an, z)
        x = rng.uniform(-1, 1, batch) * g["ca"]
        y = g["ccy"] + rng.uniform(-1, 1, batch) * g["cb"]
        sd = lung_sdf(an, g, x, y)
        ok = sd < 0
        if depth[0] is not None:
            ok &= -sd >= depth[0]
        if depth[1] is not None:
            ok &= -sd <= depth[1]
        if posterior is not None:
            post = (y - g["ccy"]) / g["cb"]
            ok &= rng.random(batch) < np.where(post > -0.2, 1.0, posterior)
        if costal is not None:
            wall = -ellipse_sdf(x, y, 0.0, g["ccy"], g["ca"], g["cb"])
            basal = np.where(np.maximum(g["domeR"], g["domeL"]) > 0, -sd, 1e3)  # any pleura at dome levels
            ok &= np.minimum(wall, basal) <= costal
        if avoid is not None and len(avoid[0]) and attempt < tries - 2:
            C, Rxy, Rz, rxy, rz = avoid
            P = np.stack([x, y, z * an["L"]], 1)
            dxy = np.sqrt(((P[:, None, :2] - C[None, :, :2]) ** 2).sum(-1)) / (Rxy[None] + rxy)
            dz = np.abs(P[:, None, 2] - C[None, :, 2]) / (Rz[None] + rz)
            ok &= (np.maximum(dxy, dz) > 0.75).all(1)
        i = np.flatnonzero(ok)
        if len(i):
            j = i[0]
            return np.array([x[j], y[j], z[j] * an["L"]])
    return None


def _avoid(found, R, Rz):
    """The `avoid` argument of `_sample_in_lung` for a new lesion of radii R, Rz among `found`."""
    if not found:
        return None
    C = np.array([f["c"] for f in found])
    return (C, np.array([f["R"] for f in found]), np.array([f.get("Rz", f["R"]) for f in found]), R, Rz)


def _sample_lesion(kind: str, rng, an, found=()) -> dict | None:
    """One lesion of a class; `found` are the class's earlier lesions, which new ones avoid (less overlap, so
    the pixel fraction grows linearly with the number of lesions)."""
    u = rng.uniform
    seed = int(rng.integers(2 ** 62))
    if kind == "emphysema":
        t = rng.random()
        if t < 0.62:
            R = u(8.0, 20.0)
            c = _sample_in_lung(rng, an, (1.3, 2.6), depth=(3.0, None), avoid=_avoid(found, R, R))
            return None if c is None else {"type": "centrilobular", "c": c, "R": R, "fill": u(0.25, 0.5), "seed": seed}
        if t < 0.82:
            R = u(12.0, 28.0)
            c = _sample_in_lung(rng, an, (1.3, 2.0), depth=(0.5, 8.0), avoid=_avoid(found, R, R))
            return None if c is None else {"type": "paraseptal", "c": c, "R": R, "fill": u(0.35, 0.6), "seed": seed}
        R = u(6.0, 18.0)
        c = _sample_in_lung(rng, an, (1.2, 2.6), depth=(1.0, 10.0), avoid=_avoid(found, R, R))
        return None if c is None else {"type": "bulla", "c": c, "R": R, "seed": seed}
    if kind == "ggo":
        R = u(12.0, 34.0)
        Rz = R * u(0.7, 1.3)
        c = _sample_in_lung(rng, an, (1.6, 1.4), depth=(4.0, None), posterior=0.6, avoid=_avoid(found, R, Rz))
        if c is None:
            return None
        return {"c": c, "R": R, "Rz": Rz, "T": u(-690.0, -470.0), "seed": seed}
    if kind == "fibrosis":
        R, Rz = u(18.0, 38.0), u(16.0, 32.0)
        c = _sample_in_lung(rng, an, (2.6, 1.2), depth=(1.0, 12.0), posterior=0.4, avoid=_avoid(found, R, Rz),
                            costal=12.0)
        if c is None:
            return None
        zn = c[2] / an["L"]
        return {"c": c, "R": R, "Rz": Rz, "D": u(8.0, 16.0) * (0.8 + 0.5 * zn), "hc": u(0.0, 1.0),
                "T": u(-870.0, -800.0), "seed": seed}
    raise ValueError(kind)


def sample_patient(rng: np.random.Generator, config: PhantomConfig = PhantomConfig()) -> PatientParams:
    """Draw one patient's anatomy, vessel and airway trees, and pathology lesions.

    Args:
        rng: the only source of randomness; this call consumes a fixed amount of it whatever the config.
        config: phantom parameters (pathology knobs, size: tree detail stops at about a third of a pixel).

    Returns:
        PatientParams; render slices of it with `render_slice` / `phantom_slice(..., patient=...)`.
    """
    seeds = rng.integers(0, 2 ** 62, size=N_STREAMS)
    r_an, r_tree, r_sev, r_fields = (np.random.default_rng(int(seeds[i])) for i in (0, 1, 2, 6))
    an = sample_anatomy(r_an)
    r_min = max(0.45, 0.3 * config.pixel_mm)
    vessels, arteries = sample_trees(r_tree, an, r_min)
    airways = sample_airways(an, arteries, r_min)
    if not config.vessels:
        vessels = {"p0": np.zeros((0, 3)), "p1": np.zeros((0, 3)), "r": np.zeros(0)}
    vol = lung_volume_ml(an)
    # presence and severity: fixed draws per class, independent of the knobs
    severity, lesions = {}, {}
    for i, kind in enumerate(("emphysema", "ggo", "fibrosis")):
        present = r_sev.random() < _PRESENCE[kind]
        sev = r_sev.gamma(_SEVERITY_SHAPE, 1.0 / _SEVERITY_SHAPE) / _PRESENCE[kind]
        u_count = r_sev.random()
        severity[kind] = float(sev if present else 0.0)
        knob = float(getattr(config, kind))
        # Boolean-model count: lesions overlap, so reaching a covered fraction f takes -log(1 - c f) / c times
        # the lung volume in lesion volumes (c: how much a class crowds into its preferred region)
        f = knob * severity[kind]
        c = _CROWDING[kind]
        lam = -math.log(1.0 - min(c * f, 0.95)) / c * vol * 1000.0 / _LESION_VOLUME[kind]
        n = _poisson_inv(u_count, lam)
        base = int(seeds[3 + i])
        found = []
        for j in range(n):
            les = _sample_lesion(kind, child_rng(base, j), an, found)
            if les is not None:
                found.append(les)
        lesions[kind] = found
    fields = r_fields.standard_normal((6, 14, 14, 14)).astype(np.float32)
    return PatientParams(an, vessels, airways, lesions, fields, severity, vol, int(seeds[7]))
