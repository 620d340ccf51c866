"""Procedural 2D axial chest-CT phantom in HU with project label maps (`difflung.labels`).

A patient is a random 3D anatomy (`sample_patient`): body outline with subcutaneous fat and muscle, ribs, spine,
sternum and scapulae, a mediastinum with heart, aorta, pulmonary trunk and oesophagus, two lungs whose cross
section follows z (small apices, full mid-lung, diaphragm domes at the base), trachea and main bronchi, and
tapering, branching pulmonary artery / vein / bronchus trees grown in 3D inside the lungs. Pathologies are 3D
lesions drawn inside the lung field:

    emphysema  clusters of centrilobular holes, paraseptal subpleural holes and bullae (>= 1 cm), below -950 HU,
               upper-zone predominance;
    ggo        hazy patches of -750..-300 HU, vessels still visible through them;
    fibrosis   subpleural, basal reticulation with honeycomb cysts (3-10 mm, 1-3 mm walls, stacked rows from
               the pleura): a two-peak texture (soft-tissue lines and cyst air).

Axial slices (`phantom_slice`) are rendered at the requested size with physical dimensions (field of view
`fov_mm`), anti-aliased geometry, partial-volume blur and spatially correlated CT noise. Slices are thin
sections (`recon_thickness_mm`) spaced `slice_thickness_mm` apart, so structures smaller than the spacing
(centrilobular holes, honeycomb cysts, reticulation) are drawn afresh on every slice inside 3D lesion extents.

Coordinates: x in mm towards the patient's left (image right), y in mm towards posterior (image down), z from
apex (0) to base (1). Label ids: 0 background (outside the body), 1 body, 2 healthy lung (vessels inside the lung
stay 2), 3 airway lumen, 4 emphysema, 5 ggo, 6 fibrosis.

Class frequencies (`PhantomConfig.emphysema`, `.ggo`, `.fibrosis`) are cohort means of the fraction of
lung-field pixels; each patient draws whether a pathology is present and how severe it is (mean 1 over a cohort),
and the number of lesions is a Poisson draw proportional to lung volume and to the count a Boolean model of
overlapping lesions needs to cover knob x severity of it. A knob of 0 gives no lesion of that class; lesion
draws are nested (inverse-CDF counts from one uniform, one stream per lesion, new lesions avoid earlier ones),
so doubling a knob keeps every lesion and about doubles the class's pixel fraction.

Randomness comes only from the `numpy.random.Generator` passed in; every sub-stream (anatomy, trees, each
pathology, each lesion and slice) is derived from it, so one seed gives byte-identical arrays, and changing a
pathology knob changes neither the anatomy nor the other pathologies.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from statistics import NormalDist

import numpy as np

from . import labels as L
from .dataset import Volume

__all__ = [
    "PhantomConfig", "PatientParams", "HU_BANDS", "HU", "phantom_slice", "sample_patient", "render_slice",
    "phantom_patient", "phantom_cohort", "slice_positions",
]

# Band that the *mean* HU of each class's pixels falls in (checked by tests/test_phantom.py). Literature values
# (DESIGN.md): normal lung -850..-910 (here parenchyma about -885; vessels, which keep the lung label, and partial
# volume at the pleura bring the class mean to about -850), emphysema < -950 (LAA-950; partial volume at the hole
# rims raises the class mean a little), GGO -750..-300, fibrosis mixes soft-tissue lines and cyst air; body mixes
# fat (-100), muscle and organs (40-60) and bone (200-1000); airway lumen (labelled where a pixel is >= 75 % air).
HU_BANDS: dict[str, tuple[float, float]] = {
    "background": (-1024.0, -980.0),
    "body": (-150.0, 150.0),
    "lung": (-910.0, -830.0),
    "airway": (-1024.0, -900.0),
    "emphysema": (-1024.0, -930.0),
    "ggo": (-750.0, -300.0),
    "fibrosis": (-800.0, -350.0),
}

# Tissue values (HU) used by the renderer.
HU: dict[str, float] = {
    "air": -1000.0, "fat": -100.0, "mediastinal_fat": -85.0, "muscle": 40.0, "blood": 40.0, "liver": 58.0,
    "spleen": 45.0, "csf": 15.0, "cartilage": 110.0, "cortical_bone": 750.0, "cancellous_bone": 230.0,
    "airway_wall": 20.0, "emphysema": -1000.0, "cyst": -975.0, "fibrosis_line": -60.0,
}

_N_STREAMS = 8  # anatomy, trees, severity, emphysema, ggo, fibrosis, fields, reserve
_HU_MIN, _HU_MAX = -1024.0, 3071.0

# Effective labelled volume (mm^3) of one lesion, from which lesion counts are drawn: calibrated on 600-patient
# cohorts (64x64, 8 slices; fractions do not depend on the size) so that the cohort mean matches the knob.
# _CROWDING: how densely a class packs into its preferred region (Boolean-model overlap correction).
_LESION_VOLUME = {"emphysema": 4270.0, "ggo": 49100.0, "fibrosis": 30100.0}
_CROWDING = {"emphysema": 1.0, "ggo": 2.0, "fibrosis": 1.5}
_PRESENCE = {"emphysema": 0.55, "ggo": 0.6, "fibrosis": 0.55}  # probability that a patient has the pathology
_SEVERITY_SHAPE = 3.0  # gamma shape of the per-patient severity among patients that have the pathology


@dataclass(frozen=True)
class PhantomConfig:
    """Parameters of the phantom.

    Args:
        size: pixels per side of the axial slices.
        fov_mm: field of view (mm) covered by `size` pixels; physical dimensions do not depend on `size`.
        slices_per_patient: number of axial slices per patient.
        slice_thickness_mm: z spacing between slices; None spreads the slices evenly from apex to base of each
            patient's lungs (spacing = lung height / slices, about 250/16 mm); a number gives that spacing,
            centred on mid-lung (slices beyond apex or base hold no lung).
        recon_thickness_mm: thickness of the thin section in which tubes (vessels, bronchi) are cut.
        emphysema, ggo, fibrosis: target cohort-mean fraction of lung-field pixels for each pathology (0: none).
        noise_hu: standard deviation of the (spatially correlated) CT noise in HU.
        blur_mm: partial-volume blur (Gaussian sigma, mm); it also sets the noise correlation length.
        lung_hu: mean healthy parenchyma attenuation before vessels and noise.
        vessels: draw the pulmonary vessel trees.
    """

    size: int = 256
    fov_mm: float = 350.0
    slices_per_patient: int = 16
    slice_thickness_mm: float | None = None
    recon_thickness_mm: float = 2.0
    emphysema: float = 0.025
    ggo: float = 0.10
    fibrosis: float = 0.05
    noise_hu: float = 20.0
    blur_mm: float = 0.6
    lung_hu: float = -891.0
    vessels: bool = True

    def __post_init__(self):
        if int(self.size) != self.size or self.size < 16:
            raise ValueError(f"PhantomConfig.size must be an integer >= 16, got {self.size!r}")
        if not self.fov_mm > 0:
            raise ValueError(f"PhantomConfig.fov_mm must be positive, got {self.fov_mm!r}")
        if int(self.slices_per_patient) != self.slices_per_patient or self.slices_per_patient < 1:
            raise ValueError(f"PhantomConfig.slices_per_patient must be an integer >= 1, got {self.slices_per_patient!r}")
        if self.slice_thickness_mm is not None and not self.slice_thickness_mm > 0:
            raise ValueError(f"PhantomConfig.slice_thickness_mm must be positive or None, got {self.slice_thickness_mm!r}")
        for name in ("emphysema", "ggo", "fibrosis", "noise_hu", "blur_mm", "recon_thickness_mm"):
            v = getattr(self, name)
            if not (np.isfinite(v) and v >= 0):
                raise ValueError(f"PhantomConfig.{name} must be a finite number >= 0, got {v!r}")

    @property
    def pixel_mm(self) -> float:
        return self.fov_mm / self.size


@dataclass(eq=False)
class PatientParams:
    """Patient-level random anatomy and pathology (from `sample_patient`); arrays are in mm (x, y, z_mm)."""

    anatomy: dict  # scalar anatomy parameters (mm, normalised z)
    vessels: dict  # p0 (n,3), p1 (n,3), r (n,) mm: pulmonary arteries and veins
    airways: dict  # p0, p1, r (lumen), wall (mm): trachea, main and lobar bronchi
    lesions: dict  # class name -> list of lesion dicts
    fields: np.ndarray  # (C, nz, n, n) coefficients of smooth random fields
    severity: dict  # class name -> per-patient severity (0: pathology absent)
    lung_volume_ml: float
    seed: int  # a spare stream derived from the patient rng (reserved for additions that must not shift others)

    def summary(self) -> dict:
        """JSON-able summary (for `Volume.meta` and provenance)."""
        return {
            "lung_height_mm": round(float(self.anatomy["L"]), 2),
            "lung_volume_ml": round(float(self.lung_volume_ml), 1),
            "severity": {k: round(float(v), 4) for k, v in self.severity.items()},
            "lesions": {k: len(v) for k, v in self.lesions.items()},
            "n_vessel_segments": int(len(self.vessels["r"])),
        }


# ---------------------------------------------------------------------------------------------------------------
# small helpers

def _child(seed, *keys) -> np.random.Generator:
    return np.random.default_rng([int(seed)] + [int(k) for k in keys])


def _smoothstep(e0, e1, x):
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3.0 - 2.0 * t)


def _smax(a, b, k):
    """Smooth maximum (rounds the corners of an intersection of signed distance fields)."""
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.maximum(a, b) + h * h * (k * 0.25)


def _ellipse_sdf(x, y, cx, cy, a, b):
    """Approximate signed distance (mm, negative inside) to an axis-aligned ellipse."""
    u = (x - cx) / a
    v = (y - cy) / b
    rho = np.sqrt(u * u + v * v)
    g = np.sqrt((u / a) ** 2 + (v / b) ** 2) + 1e-6
    return (rho - 1.0) * rho / g


def _ellipse_cov(x, y, cx, cy, a, b, px):
    """Anti-aliased coverage of a large ellipse (edge width from the mean radius)."""
    u = (x - cx) * (1.0 / a)
    v = (y - cy) * (1.0 / b)
    rho = np.sqrt(u * u + v * v)
    rho -= 1.0
    rho *= -math.sqrt(a * b) / px
    rho += 0.5
    return np.clip(rho, 0.0, 1.0, out=rho)


def _rot_ellipse_sdf(x, y, cx, cy, a, b, ang):
    c, s = math.cos(ang), math.sin(ang)
    dx, dy = x - cx, y - cy
    return _ellipse_sdf(c * dx + s * dy, -s * dx + c * dy, 0.0, 0.0, a, b)


def _disc_sdf(x, y, cx, cy, r):
    return np.sqrt((x - cx) ** 2 + (y - cy) ** 2) - r


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


@lru_cache(maxsize=16)
def _grid(size: int, fov: float):
    px = fov / size
    c = ((np.arange(size, dtype=np.float32) + 0.5) - size / 2.0) * np.float32(px)
    X = np.broadcast_to(c[None, :], (size, size))
    Y = np.broadcast_to(c[:, None], (size, size))
    return c, X, Y


@lru_cache(maxsize=32)
def _upsampler(size: int, fov: float, n: int, width: float = 1.0) -> np.ndarray:
    """(size, n) matrix mapping n Gaussian-basis coefficients over the FOV to pixels; rows have unit norm, so iid
    N(0, 1) coefficients give a smooth field of unit variance everywhere."""
    c, _, _ = _grid(size, fov)
    h = fov / (n - 3)
    g = (np.arange(n) - (n - 1) / 2.0) * h
    U = np.exp(-0.5 * ((c[:, None] - g[None, :]) / (width * h)) ** 2)
    U /= np.sqrt((U ** 2).sum(1, keepdims=True))
    return U.astype(np.float32)


@lru_cache(maxsize=16)
def _blur_taps(sigma_px: float) -> np.ndarray:
    if sigma_px < 0.05:
        return np.array([1.0], np.float32)
    r = max(1, int(math.ceil(3.0 * sigma_px)))
    t = np.arange(-r, r + 1, dtype=np.float64)
    w = np.exp(-0.5 * (t / sigma_px) ** 2)
    return (w / w.sum()).astype(np.float32)


def _sep_blur(a: np.ndarray, w: np.ndarray) -> np.ndarray:
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


@lru_cache(maxsize=64)
def _stencil(k: int):
    d = np.arange(-k, k + 1)
    dy, dx = np.meshgrid(d, d, indexing="ij")
    keep = dy ** 2 + dx ** 2 <= (k + 0.75) ** 2
    return dy[keep].astype(np.int64), dx[keep].astype(np.int64)


def _splat_discs(size: int, cx, cy, r, w=None) -> np.ndarray:
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


def _capsule_points(p0, p1, r, step):
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


# ---------------------------------------------------------------------------------------------------------------
# anatomy as a function of z

def _geom(an: dict, z):
    """Anatomy at normalised height z (scalar, or an array for points): sizes and positions in mm."""
    z = np.asarray(z, dtype=np.float64)
    zc = np.clip(z, -0.2, 1.3)
    g = {}
    g["ba"] = an["body_a"] * (1.0 - 0.05 * (1.0 - np.clip(zc, 0, 1)) ** 2) * (1.0 + an["belly"] * _smoothstep(0.75, 1.2, zc))
    g["bb"] = an["body_b"] * (0.90 + 0.10 * _smoothstep(0.0, 0.7, zc)) * (1.0 + 1.5 * an["belly"] * _smoothstep(0.7, 1.2, zc))
    g["bcx"] = an["body_cx"]
    g["bcy"] = an["body_cy"] + (g["bb"] - an["body_b"]) * -0.6
    fat = an["fat"] * (1.0 + 0.6 * _smoothstep(0.7, 1.2, zc))
    f_lat, f_ant, f_post = fat, 0.7 * fat, 0.6 * fat
    mus = an["muscle"] * (1.0 + 0.8 * (1.0 - _smoothstep(0.0, 0.35, zc)))  # shoulder girdle at the apex
    rib = an["rib_t"]
    w_lat = f_lat + mus + rib
    w_ant = f_ant + 0.6 * mus + rib
    w_post = f_post + 1.5 * mus + rib
    open_ = _smoothstep(-0.1, 0.45, zc)  # the thoracic cage narrows towards the apex
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


_K_SIDE, _K_CUT, _CUT_MARGIN = 7.0, 5.0, 30.0


def _cut_structures(an, g):
    """Mediastinal structures the lungs wrap around: (kind, cx, cy, a, b, rot) with their margins included."""
    out = [("disc", 0.0, g["y_vb"], g["r_vb"] + 5.0),  # spine + paravertebral soft tissue
           ("disc", an["x_da"], g["y_vb"] - 0.45 * g["r_vb"] - 6.0, an["r_ao"] * 0.85 + 3.0)]  # descending aorta
    return out


def _heart_axes(an, g):
    h = g["heart"]
    hh = np.maximum(h, 1e-3)
    return (an["heart_x"] * g["ca"], g["ccy"] - an["heart_y"] * g["cb"],
            hh * an["heart_a"] * g["ca"] + 4.0, hh * an["heart_b"] * g["cb"] + 4.0)


def _side_sdf(g, s, x, y, cav, bbox_fn=None):
    """Signed distance to one lung before the mediastinal cut-outs."""
    key = "R" if s < 0 else "L"
    yrel = (y - g["ccy"]) * (1.0 / g["cb"])
    med = (g["m"] + g["m_tilt"] * yrel + g["m_bulge"] * (1.0 - yrel * yrel)) - s * x  # medial boundary
    d = _smax(cav, med, _K_SIDE)
    cx = s * 0.5 * (g["m"] + g["ca"])
    hw = 0.5 * (g["ca"] - g["m"])
    if np.any(g["cap"] < 1.0):
        cap_a = np.maximum(g["cap"], 1e-3)
        cap = _ellipse_sdf(x, y, cx, g["ccy"] + 0.18 * g["cb"], cap_a * hw * 1.8, cap_a * g["cb"] * 1.5)
        d = np.maximum(d, np.where(g["cap"] < 1.0, cap, -1e3))
    d = np.maximum(d, g["below"])
    kd = g["dome" + key]
    if np.any(kd > 0):
        kd_ = np.maximum(kd, 1e-3)
        dcx, dcy, da, db = cx + s * 0.08 * hw, g["ccy"] - 0.32 * g["cb"], kd_ * hw * 1.02, kd_ * g["cb"]
        if bbox_fn is None:
            dome = _ellipse_sdf(x, y, dcx, dcy, da, db)
            d = _smax(d, np.where(kd > 0, -dome, -1e3), _K_SIDE)
        else:
            sl = bbox_fn(dcx, dcy, da + _CUT_MARGIN, db + _CUT_MARGIN)
            if sl is not None:
                d[sl] = _smax(d[sl], -_ellipse_sdf(x[sl], y[sl], dcx, dcy, da, db), _K_SIDE)
    return d


def _lung_sdf(an: dict, g: dict, x, y, side: int | None = None, cav=None):
    """Approximate signed distance (mm, negative inside) to the lung field at points (x, y) with geometry g."""
    if cav is None:
        cav = _ellipse_sdf(x, y, 0.0, g["ccy"], g["ca"], g["cb"])
    sides = (-1, 1) if side is None else (side,)
    out = None
    for s in sides:
        d = _side_sdf(g, s, x, y, cav)
        out = d if out is None else np.minimum(out, d)
    for _, cx, cy, r in _cut_structures(an, g):
        out = _smax(out, -_disc_sdf(x, y, cx, cy, r), _K_CUT)
    h = g["heart"]
    if np.any(h > 0):
        hx, hy, ha, hb = _heart_axes(an, g)
        hs = _rot_ellipse_sdf(x, y, hx, hy, ha, hb, an["heart_rot"])
        out = _smax(out, np.where(h > 0, -hs, -1e3), _K_CUT)
    return out


def _lung_sdf_image(an: dict, g: dict, cv, X, Y, cav):
    """`_lung_sdf` on the slice grid, computed only where each term can matter (outside the lungs: >= 0)."""
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
            out[sl] = _smax(out[sl], -_disc_sdf(X[sl], Y[sl], cx, cy, r), _K_CUT)
    if g["heart"] > 0:
        hx, hy, ha, hb = _heart_axes(an, g)
        R = max(ha, hb) + _CUT_MARGIN
        sl = cv.bbox(hx, hy, R, R)
        if sl is not None:
            out[sl] = _smax(out[sl], -_rot_ellipse_sdf(X[sl], Y[sl], hx, hy, ha, hb, an["heart_rot"]), _K_CUT)
    return out


# ---------------------------------------------------------------------------------------------------------------
# patient sampling

def _lung_points_sdf(an, P, side=None):
    z = P[:, 2] / an["L"]
    g = _geom(an, z)
    return _lung_sdf(an, g, P[:, 0], P[:, 1], side)


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
    g55 = _geom(an, 0.55)
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
        okm = (_lung_points_sdf(an, E4.reshape(-1, 3), side).reshape(4, n) < -margin[None])
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


def _sample_anatomy(rng) -> dict:
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
    z = an["z_hil"] + dz
    g = _geom(an, z)
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
    sd = _lung_points_sdf(an, P.reshape(-1, 3), s).reshape(k, len(t))
    ok = (sd < -(margin_k * r[:, None] + 2.0)) & (t[None] >= 14.0)
    has = ok.any(1)
    j = np.argmax(ok, axis=1)
    ends = P[np.arange(k), j]
    p0, p1, rr = _grow_tree(rng, an, s, ends[has], dirs[has], 0.9 * r[has], r_min, length_range, max_segments, margin_k)
    return (np.concatenate([np.repeat(root[None], has.sum(), 0), p0]), np.concatenate([ends[has], p1]),
            np.concatenate([r[has], rr]))


def _sample_trees(rng, an, r_min):
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


def _sample_airways(an, arteries, r_min):
    """Trachea, main bronchi, and lobar to subsegmental bronchi running beside the larger arteries."""
    L_ = an["L"]
    zc = an["z_carina"]
    g = _geom(an, zc)
    car = np.array([0.0, float(g["y_tr"]), zc * L_])
    p0 = [np.array([[0.0, float(_geom(an, -0.3)["y_tr"]), -0.3 * L_]])]
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
            inside = _lung_points_sdf(an, b1, s) < -0.5 * (lum + wall)
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


def _lung_volume_ml(an) -> float:
    """Lung-field volume from the analytic geometry on a fixed 24^3 lattice (no randomness; within 1 %)."""
    n = 24
    zs = (np.arange(n) + 0.5) / n * 1.1
    g0 = _geom(an, 0.6)
    xs = (np.arange(n) + 0.5) / n * 2 - 1
    X, Y, Z = np.meshgrid(xs * float(g0["ca"]) * 1.05, float(g0["ccy"]) + xs * float(g0["cb"]) * 1.1, zs, indexing="ij")
    P = np.stack([X.ravel(), Y.ravel(), Z.ravel() * an["L"]], 1)
    inside = _lung_points_sdf(an, P) < 0
    cell = (2 * float(g0["ca"]) * 1.05 / n) * (2 * float(g0["cb"]) * 1.1 / n) * (1.1 * an["L"] / n)
    return float(inside.sum() * cell / 1000.0)


def _sample_in_lung(rng, an, zdist, depth=(None, None), posterior=None, avoid=None, costal=None, tries=12, batch=64):
    """A point (x, y, z_mm) in the lung field: z from Beta(zdist), depth below the pleura within `depth` (mm),
    optionally fewer of them in front (`posterior`: acceptance anteriorly), and away from earlier lesions
    (`avoid`: (centres (k, 3), xy radii (k,), z radii (k,), own xy radius, own z radius)), within `costal` mm of
    the chest wall (or of a diaphragm dome) when given."""
    for attempt in range(tries):
        z = rng.beta(*zdist, size=batch) * 0.96 + 0.02
        g = _geom(an, z)
        x = rng.uniform(-1, 1, batch) * g["ca"]
        y = g["ccy"] + rng.uniform(-1, 1, batch) * g["cb"]
        sd = _lung_sdf(an, g, x, y)
        ok = sd < 0
        if depth[0] is not None:
            ok &= -sd >= depth[0]
        if depth[1] is not None:
            ok &= -sd <= depth[1]
        if posterior is not None:
            post = (y - g["ccy"]) / g["cb"]
            ok &= rng.random(batch) < np.where(post > -0.2, 1.0, posterior)
        if costal is not None:
            wall = -_ellipse_sdf(x, y, 0.0, g["ccy"], g["ca"], g["cb"])
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
    seeds = rng.integers(0, 2 ** 62, size=_N_STREAMS)
    r_an, r_tree, r_sev, r_fields = (np.random.default_rng(int(seeds[i])) for i in (0, 1, 2, 6))
    an = _sample_anatomy(r_an)
    r_min = max(0.45, 0.3 * config.pixel_mm)
    vessels, arteries = _sample_trees(r_tree, an, r_min)
    airways = _sample_airways(an, arteries, r_min)
    if not config.vessels:
        vessels = {"p0": np.zeros((0, 3)), "p1": np.zeros((0, 3)), "r": np.zeros(0)}
    vol = _lung_volume_ml(an)
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
            les = _sample_lesion(kind, _child(base, j), an, found)
            if les is not None:
                found.append(les)
        lesions[kind] = found
    fields = r_fields.standard_normal((6, 14, 14, 14)).astype(np.float32)
    return PatientParams(an, vessels, airways, lesions, fields, severity, vol, int(seeds[7]))


# ---------------------------------------------------------------------------------------------------------------
# rendering

def _field(patient: PatientParams, z: float, size: int, fov: float, channels) -> np.ndarray:
    """Smooth unit-variance random fields (len(channels), size, size) at height z (coarse scale ~ 27 mm)."""
    F = patient.fields
    nz = F.shape[1]
    t = np.clip((z + 0.15) / 1.3, 0.0, 1.0) * (nz - 1)
    i = min(int(t), nz - 2)
    f = t - i
    A = F[list(channels), i] * (1 - f) + F[list(channels), i + 1] * f
    A /= math.sqrt((1 - f) ** 2 + f ** 2)
    U = _upsampler(size, fov, F.shape[2])
    return np.matmul(np.matmul(U, A), U.T)


class _Canvas:
    """HU image and label map with painting helpers (pixel space)."""

    def __init__(self, size, fov):
        self.S = size
        self.px = fov / size
        self.img = np.full((size, size), HU["air"], np.float32)
        self.lab = np.zeros((size, size), np.uint8)

    def to_px(self, x, y):
        return np.asarray(x) / self.px + self.S / 2.0 - 0.5, np.asarray(y) / self.px + self.S / 2.0 - 0.5

    def bbox(self, cx, cy, rx, ry):
        c0, r0 = self.to_px(cx - rx, cy - ry)
        c1, r1 = self.to_px(cx + rx, cy + ry)
        c0, r0 = max(0, int(math.floor(c0)) - 1), max(0, int(math.floor(r0)) - 1)
        c1, r1 = min(self.S, int(math.ceil(c1)) + 2), min(self.S, int(math.ceil(r1)) + 2)
        if c1 <= c0 or r1 <= r0:
            return None
        return slice(r0, r1), slice(c0, c1)

    def paint(self, cov, value, sl=None, label=None):
        img = self.img if sl is None else self.img[sl]
        img += (np.float32(value) - img) * cov if np.ndim(value) == 0 else (value - img) * cov
        if label is not None:
            lab = self.lab if sl is None else self.lab[sl]
            lab[cov >= 0.5] = label

    def ellipse(self, X, Y, cx, cy, a, b, value, rot=0.0, label=None, cortex=None, inner=None):
        sl = self.bbox(cx, cy, max(a, b), max(a, b))
        if sl is None:
            return
        x, y = X[sl], Y[sl]
        sd = _rot_ellipse_sdf(x, y, cx, cy, a, b, rot) if rot else _ellipse_sdf(x, y, cx, cy, a, b)
        cov = np.clip(0.5 - sd / self.px, 0.0, 1.0)
        self.paint(cov, value, sl, label)
        if cortex is not None:  # inner marrow
            sd2 = sd + cortex
            cov2 = np.clip(0.5 - sd2 / self.px, 0.0, 1.0)
            self.paint(cov2, inner, sl)

    def discs(self, x, y, r, value, label=None, mask=None):
        cx, cy = self.to_px(x, y)
        cov = _splat_discs(self.S, cx, cy, np.asarray(r) / self.px)
        if mask is not None:
            cov *= mask
        self.paint(cov, value, None, label)
        return cov


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
    return _render(patient, float(z), key, config)


def _render(patient: PatientParams, z: float, key: int, cfg: PhantomConfig):
    an = patient.anatomy
    S, fov = int(cfg.size), float(cfg.fov_mm)
    px = fov / S
    c1d, X, Y = _grid(S, fov)
    g = {k: float(v) for k, v in _geom(an, z).items()}
    zmm = z * an["L"]
    cv = _Canvas(S, fov)
    fields = _field(patient, z, S, fov, (0, 3))
    srng = _child(key, 0)

    # body: subcutaneous fat, muscle, thoracic cavity (mediastinal fat)
    cov_body = _ellipse_cov(X, Y, g["bcx"], g["bcy"], g["ba"], g["bb"], px)
    cv.paint(cov_body, an["fat_hu"], label=L.BODY)
    cv.paint(_ellipse_cov(X, Y, g["bcx"], g["mcy"], g["ma"], g["mb"], px), an["muscle_hu"])
    sd_cav = _ellipse_sdf(X, Y, 0.0, g["ccy"], g["ca"], g["cb"])
    cov_cav = np.clip(0.5 - sd_cav / px, 0.0, 1.0)
    cv.paint(cov_cav, HU["mediastinal_fat"])

    _paint_ribs(cv, an, g, X, Y, sd_cav, zmm)
    _paint_bones(cv, an, g, X, Y, z)
    _paint_mediastinum(cv, an, g, X, Y, z, cov_cav)

    # lungs
    sd_lung = _lung_sdf_image(an, g, cv, X, Y, sd_cav)
    sd_lung += fields[1] * 1.2
    cov_lung = np.clip(0.5 - sd_lung / px, 0.0, 1.0)
    field_mask = sd_lung <= 0.0
    depth = -sd_lung
    yrel = (Y - g["ccy"]) / g["cb"]
    paren = (cfg.lung_hu + an["lung_offset"]) + an["lung_grad"] * yrel + 3.0 * fields[0]
    del fields
    tex = _fine_texture(srng, S, fov)
    paren += tex * 5.0

    lab_path = np.zeros((S, S), np.uint8)
    hole_cov = None
    if field_mask.any():
        _apply_ggo(patient, cfg, cv, X, Y, z, zmm, paren, lab_path, field_mask, key)
        _apply_fibrosis(patient, cfg, cv, X, Y, z, zmm, paren, lab_path, field_mask, depth, key)
        hole_cov = _apply_emphysema(patient, cfg, cv, X, Y, zmm, paren, lab_path, field_mask, depth, key)
    cv.paint(cov_lung, paren)
    lungfield = field_mask & (cv.lab == L.BODY)
    cv.lab[lungfield] = L.LUNG
    sel = lungfield & (lab_path > 0)
    cv.lab[sel] = lab_path[sel]

    # vessels (in lung and mediastinum), suppressed inside emphysema holes
    vcov = _tube_coverage(cv, patient.vessels, zmm, cfg.recon_thickness_mm)
    if cfg.vessels:
        micro = _micro_vessels(srng, cv, field_mask, depth)
        if micro is not None:
            vcov = micro if vcov is None else np.maximum(vcov, micro)
    if vcov is not None:
        vcov *= cov_cav
        if hole_cov is not None:
            vcov *= 1.0 - hole_cov
        cv.paint(vcov, HU["blood"])
    # airways: wall then lumen
    aw = patient.airways
    wcov = _tube_coverage(cv, {"p0": aw["p0"], "p1": aw["p1"], "r": aw["r"] + aw["wall"]}, zmm, cfg.recon_thickness_mm)
    if wcov is not None:
        lcov = _tube_coverage(cv, aw, zmm, cfg.recon_thickness_mm)
        cv.paint(wcov * cov_body, HU["airway_wall"])
        if lcov is not None:
            lcov *= cov_body
            cv.paint(lcov, HU["air"])
            # label the lumen where a pixel is mostly air (>= 75 %), for airways the grid resolves (r >= 0.8 px)
            big = aw["r"] >= 0.8 * px
            lab_cov = lcov if big.all() else _tube_coverage(
                cv, {"p0": aw["p0"][big], "p1": aw["p1"][big], "r": aw["r"][big]}, zmm, cfg.recon_thickness_mm)
            if lab_cov is not None:
                cv.lab[(lab_cov >= 0.75) & (cov_body >= 0.5)] = L.AIRWAY

    # partial-volume blur with correlated CT noise (white noise through the same reconstruction kernel)
    taps = _blur_taps(cfg.blur_mm / px)
    gain = float(np.sqrt((taps.astype(np.float64) ** 2).sum()) ** 2)
    img = cv.img
    if cfg.noise_hu > 0:
        img += srng.standard_normal((S, S), dtype=np.float32) * np.float32(cfg.noise_hu / gain)
    img = _sep_blur(img, taps)
    np.clip(img, _HU_MIN, _HU_MAX, out=img)
    return img.astype(np.float32, copy=False), cv.lab


@lru_cache(maxsize=16)
def _fine_sizes(size, fov):
    n = int(min(size, round(fov / 3.5)))
    return n


def _fine_texture(rng, S, fov):
    """Lobular-scale parenchymal texture (unit variance, correlation ~ 3 mm)."""
    n = _fine_sizes(S, fov)
    U = _upsampler(S, fov, n + 3, 0.7)
    W = rng.standard_normal((n + 3, n + 3)).astype(np.float32)
    return U @ W @ U.T


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
    return _splat_discs(cv.S, cx, cy, np.repeat(r, 3), np.repeat(w, 3))


def _paint_ribs(cv, an, g, X, Y, sd_cav, zmm):
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


def _paint_bones(cv, an, g, X, Y, z):
    cb, cr = HU["cortical_bone"], HU["cancellous_bone"]
    rvb = g["r_vb"]
    yvb = g["y_vb"]
    # posterior elements: lamina arch, spinous and transverse processes
    yc = yvb + rvb + 9.0
    cv.ellipse(X, Y, 0.0, yc, 13.0, 11.0, cb * 0.8)
    for s in (-1, 1):
        x, y, r = _capsule_points([[s * 8.0, yc - 2]], [[s * 34.0, yc + 4]], 4.5, 2.0)
        cv.discs(x, y, r, cb * 0.8)
    back = g["bcy"] + g["bb"]
    x, y, r = _capsule_points([[0.0, yc + 8]], [[0.0, max(yc + 10.0, min(yc + 32.0, back - 12.0))]], 4.0, 2.0)
    cv.discs(x, y, r, cb * 0.8)
    cv.ellipse(X, Y, 0.0, yc, 7.5, 7.0, HU["csf"])  # spinal canal
    cv.ellipse(X, Y, 0.0, yvb, rvb * 1.08, rvb, cb, cortex=1.8, inner=cr)
    # sternum
    if -0.05 < z < 0.9:
        w = 13.0 + 10.0 * (1 - _smoothstep(0.05, 0.3, z))
        ys = g["ccy"] - g["cb"] - 0.45 * an["rib_t"]
        cv.ellipse(X, Y, 0.0, ys, w, 6.5, cb, cortex=1.5, inner=cr)
    # scapulae (upper half, posterolateral outside the ribs)
    if z < 0.6:
        fade = 1.0 - _smoothstep(0.4, 0.6, z)
        for s in (-1, 1):
            a, b = g["ca"] + an["rib_t"] + 5.0, g["cb"] + an["rib_t"] + 5.0
            t0, t1 = 0.22 * np.pi, 0.52 * np.pi
            p0 = [s * a * math.sin(t0), g["ccy"] + b * math.cos(t0)]
            p1 = [s * a * math.sin(t1), g["ccy"] + b * math.cos(t1)]
            x, y, r = _capsule_points([p0], [p1], 3.0 * fade + 0.5, 2.0)
            cv.discs(x, y, r, cb * 0.8)


def _paint_mediastinum(cv, an, g, X, Y, z, cov_cav):
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
                sd = _ellipse_sdf(X[sl], Y[sl], cx, g["ccy"] - 0.32 * g["cb"], kd * hw * 1.02 + 8.0, kd * g["cb"] + 8.0)
                cov = np.clip(0.5 - sd / cv.px, 0, 1) * cov_cav[sl]
                cv.paint(cov, hu, sl)
    # oesophagus, trachea region soft tissue
    cv.ellipse(X, Y, 4.0, g["y_es"], 8.0, 6.5, an["muscle_hu"])
    if z > an["z_arch"] - 0.01:
        cv.ellipse(X, Y, xd, yd, rao * 0.85, rao * 0.85, blood)
    if an["z_arch"] - 0.045 < z < an["z_arch"] + 0.005:
        x, y, r = _capsule_points([[xa, ya]], [[xd, yd]], rao * 0.9, 3.0)
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


def _tube_coverage(cv, tubes, zmm, recon):
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
    return _splat_discs(cv.S, cx, cy, r[idx] / cv.px, w)


def _lesions_at(patient, kind, zmm):
    out = []
    for i, les in enumerate(patient.lesions.get(kind, ())):
        Rz = les.get("Rz", les["R"])
        dz = zmm - les["c"][2]
        if abs(dz) < Rz:
            out.append((i, les, dz, Rz))
    return out


@lru_cache(maxsize=16)
def _n_medium(size, fov):
    return int(min(size, round(fov / 6.0))) + 3


def _medium_noise(rng, S, fov):
    """Unit-variance random field with a ~6 mm correlation length (lesion borders, mottling)."""
    n = _n_medium(S, fov)
    U = _upsampler(S, fov, n, 0.8)
    return U @ rng.standard_normal((n, n)).astype(np.float32) @ U.T


def _apply_ggo(patient, cfg, cv, X, Y, z, zmm, paren, lab_path, field_mask, key):
    act = _lesions_at(patient, "ggo", zmm)
    if not act:
        return
    S, fov = cv.S, cv.S * cv.px
    nf = _field(patient, z, S, fov, (1, 4))
    med = _medium_noise(_child(key, 11), S, fov)
    for i, les, dz, Rz in act:
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
        w = _smoothstep(-0.02, 0.22, f)
        T = les["T"] + 45.0 * nf[1][sl] + 35.0 * md
        p = paren[sl]
        p += (T - p) * w
        m = (w >= 0.5) & field_mask[sl]
        lp = lab_path[sl]
        lp[m] = L.GGO


def _apply_fibrosis(patient, cfg, cv, X, Y, z, zmm, paren, lab_path, field_mask, depth, key):
    act = _lesions_at(patient, "fibrosis", zmm)
    if not act:
        return
    S, px = cv.S, cv.px
    fov = S * px
    nf = _field(patient, z, S, fov, (2,))[0]
    Q = np.full((S, S), -1.0, np.float32)
    HC = np.zeros((S, S), np.float32)
    T = np.zeros((S, S), np.float32)
    D = np.ones((S, S), np.float32)
    for i, les, dz, Rz in act:
        R = les["R"]
        f0 = 1.0 - (dz / Rz) ** 2
        Re = R * math.sqrt(f0 + 0.65)
        sl = cv.bbox(les["c"][0], les["c"][1], Re, Re)
        if sl is None:
            continue
        x, y = X[sl], Y[sl]
        f = f0 - ((x - les["c"][0]) ** 2 + (y - les["c"][1]) ** 2) * (1.0 / (R * R)) + 0.3 * np.clip(nf[sl], -2.0, 2.0)
        q = np.minimum(f, (les["D"] - depth[sl]) / les["D"] + 0.15 * nf[sl])
        better = q > Q[sl]
        Q[sl] = np.where(better, q, Q[sl])
        HC[sl] = np.where(better, les["hc"], HC[sl])
        T[sl] = np.where(better, les["T"], T[sl])
        D[sl] = np.where(better, les["D"], D[sl])
    region = (Q > 0) & field_mask
    rows = np.flatnonzero(region.any(1))
    if len(rows) == 0:
        return
    cols = np.flatnonzero(region.any(0))
    r0, r1 = max(0, rows[0] - 2), min(S, rows[-1] + 3)
    c0, c1 = max(0, cols[0] - 2), min(S, cols[-1] + 3)
    sl = (slice(r0, r1), slice(c0, c1))
    rng = _child(key, 12)
    reg, dep, hc = region[sl], depth[sl], HC[sl]
    # reticulation: level set of band-pass noise -> a network of soft-tissue lines, denser near the pleura
    noise = _sep_blur(rng.standard_normal(reg.shape).astype(np.float32), _blur_taps(max(0.6, 1.6 / px)))
    noise /= noise.std() + 1e-6
    rel = np.clip(dep / D[sl], 0.0, 1.0)
    # sharp-edged lines (a band around the zero level), more of them close to the pleura
    width = 0.28 + 0.22 * (1.0 - rel)
    lines = np.clip((width - np.abs(noise)) * (1.0 / 0.12), 0.0, 1.0)
    base = T[sl] + 30.0 * nf[sl]
    fib = base + (HU["fibrosis_line"] - base) * lines
    fib = _honeycomb(rng, cv, X[sl], Y[sl], dep, reg, hc, fib)
    w = _smoothstep(-0.04, 0.04, Q[sl])
    p = paren[sl]
    p += (fib - p) * w
    lab_path[sl][reg] = L.FIBROSIS


def _honeycomb(rng, cv, x, y, dep, region, hc, fib):
    """Honeycomb cysts (r 1.5-5 mm, walls 0.7-1.5 mm) packed in rows from the pleura, where hc > 0."""
    px = cv.px
    zone = region & (dep < 3.0 + 11.0 * hc) & (hc > 0.15)
    iy, ix = np.nonzero(zone)
    if len(iy) == 0:
        return fib
    n = int(rng.poisson(len(iy) * px * px / 14.0))
    if n == 0:
        return fib
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
    # greedy non-overlapping packing, first rows just below the pleura
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
        return fib
    cxr, cyr, rr, ww = px_x[acc], px_y[acc], r[acc], wall[acc]
    r_floor = 0.8 * px
    # sub-pixel cysts keep their area at a resolvable size
    small = rng.random(m) < np.minimum(1.0, (rr / r_floor) ** 2)
    cxr, cyr, rr, ww = cxr[small], cyr[small], np.maximum(rr[small], r_floor), ww[small]
    x0, y0 = float(x[0, 0]), float(y[0, 0])
    cxp, cyp = (cxr - x0) / px, (cyr - y0) / px
    sh = x.shape
    Sb = max(sh)
    outer = _splat_discs(Sb, cxp, cyp, (rr + ww) / px)[:sh[0], :sh[1]]
    inner = _splat_discs(Sb, cxp, cyp, rr / px)[:sh[0], :sh[1]]
    fib = fib + (HU["fibrosis_line"] - fib) * outer
    fib = fib + (HU["cyst"] - fib) * inner
    return fib


_HOLE_R2 = {"centrilobular": (math.log(2.4), 0.4, 1.0, 6.0), "paraseptal": (math.log(3.5), 0.35, 1.5, 7.0)}


def _apply_emphysema(patient, cfg, cv, X, Y, zmm, paren, lab_path, field_mask, depth, key):
    px = cv.px
    S = cv.S
    xs, ys, rs = [], [], []
    bx, by, br = [], [], []
    r_floor = 1.2 * px
    for i, les, dz, Rz in _lesions_at(patient, "emphysema", zmm):
        R = les["R"]
        Re = math.sqrt(max(R * R - dz * dz, 0.0))
        if les["type"] == "bulla":
            bx.append(les["c"][0]); by.append(les["c"][1]); br.append(Re)
            continue
        rng = _child(les["seed"], key, 2)
        mu, sg, lo, hi = _HOLE_R2[les["type"]]
        n = int(rng.poisson(les["fill"] * Re * Re / math.exp(2 * mu + 2 * sg * sg)))
        if n == 0:
            continue
        r = np.clip(rng.lognormal(mu, sg, n), lo, hi)
        rho = Re * np.sqrt(rng.random(n))
        ang = rng.uniform(0, 2 * np.pi, n)
        x = les["c"][0] + rho * np.cos(ang)
        y = les["c"][1] + rho * np.sin(ang)
        keep_u = rng.random(n)
        cxp, cyp = cv.to_px(x, y)
        ix = np.clip(np.round(cxp).astype(np.int64), 0, S - 1)
        iy = np.clip(np.round(cyp).astype(np.int64), 0, S - 1)
        ok = field_mask[iy, ix]
        if les["type"] == "paraseptal":
            ok &= depth[iy, ix] < 2.2 * r + 1.0
        # holes below the resolution keep their area at a resolvable size
        ok &= keep_u < np.minimum(1.0, (r / r_floor) ** 2)
        xs.append(x[ok]); ys.append(y[ok]); rs.append(np.maximum(r[ok], r_floor))
    cov = None
    if xs:
        x, y, r = np.concatenate(xs), np.concatenate(ys), np.concatenate(rs)
        cx, cy = cv.to_px(x, y)
        cov = _splat_discs(S, cx, cy, r / px)
    if bx:
        cx, cy = cv.to_px(np.array(bx), np.array(by))
        rb = np.array(br) / px
        wall = _splat_discs(S, cx, cy, rb + 0.8 / px)
        bcov = _splat_discs(S, cx, cy, rb)
        paren += (np.float32(-250.0) - paren) * (wall - bcov) * 0.6
        cov = bcov if cov is None else np.maximum(cov, bcov)
    if cov is None:
        return None
    cov *= field_mask
    paren += (np.float32(HU["emphysema"]) - paren) * cov
    lab_path[cov >= 0.5] = L.EMPHYSEMA
    return cov


# ---------------------------------------------------------------------------------------------------------------
# public generators

def phantom_slice(z: float, rng: np.random.Generator, config: PhantomConfig = PhantomConfig(),
                  patient: PatientParams | None = None) -> tuple[np.ndarray, np.ndarray]:
    """One axial phantom slice in HU with its label map.

    Args:
        z: normalised height, 0 at the lung apex, 1 at the base.
        rng: the only source of randomness (draws a new patient first when `patient` is None).
        config: phantom parameters.
        patient: a patient from `sample_patient`; None draws one from `rng`.

    Returns:
        (hu float32 (S, S), labels uint8 (S, S)) with project label ids.
    """
    if patient is None:
        patient = sample_patient(rng, config)
    return render_slice(patient, z, rng, config)


def phantom_patient(patient_id: str, rng: np.random.Generator, config: PhantomConfig = PhantomConfig()) -> Volume:
    """A patient as a stack of contiguous axial slices, apex to base.

    Args:
        patient_id: stored as `Volume.patient`.
        rng: the only source of randomness.
        config: phantom parameters (`slices_per_patient`, `slice_thickness_mm`, knobs, size).

    Returns:
        Volume with hu (Z, S, S) float32, labels (Z, S, S) uint8, spacing (z spacing, pixel, pixel) mm,
        source "phantom", meta holding the slices' normalised z and the patient summary.
    """
    patient = sample_patient(rng, config)
    zs, dz = slice_positions(patient, config)
    keys = rng.integers(0, 2 ** 62, size=len(zs))
    S = int(config.size)
    hu = np.empty((len(zs), S, S), np.float32)
    lab = np.empty((len(zs), S, S), np.uint8)
    for k, (z, key) in enumerate(zip(zs, keys)):
        hu[k], lab[k] = _render(patient, float(z), int(key), config)
    meta = {"z": [round(float(z), 6) for z in zs], "config": asdict(config), **patient.summary()}
    return Volume(patient_id, hu, lab, (float(dz), config.pixel_mm, config.pixel_mm), source="phantom", meta=meta)


def phantom_cohort(n_patients: int, rng: np.random.Generator, config: PhantomConfig = PhantomConfig()) -> list[Volume]:
    """`n_patients` independent patients with ids "P000", "P001", ...

    Args:
        n_patients: number of patients.
        rng: the only source of randomness; patient i uses the i-th child stream, so the first patients of a
            larger cohort equal those of a smaller one with the same seed.
        config: phantom parameters.
    """
    if n_patients < 0:
        raise ValueError(f"n_patients must be >= 0, got {n_patients}")
    base = int(rng.integers(0, 2 ** 62))
    return [phantom_patient(f"P{i:03d}", _child(base, i), config) for i in range(n_patients)]
