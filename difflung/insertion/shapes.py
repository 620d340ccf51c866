"""Lesion shapes for insertion: 3D lesions of the phantom placed in a real scan's healthy lung (`--synthesize`),
and the new lesions a synthesised mask adds to its base slice (the `+insert` arm).

`--synthesize CLASS --target-ml N` draws the 3D extents of the phantom's lesions of that class (centre-free: size,
z extent, type, fill, subpleural depth; `phantom_lesion_extents`, from `difflung.phantom.patient.sample_patient`,
nothing rendered) and builds each as a 3D mask on the scan's own voxel grid (`lesion_mask_3d`), the way the phantom
paints it: GGO an ellipsoid with a noisy border, fibrosis the part of an ellipsoid within its subpleural depth of
the pleura, emphysema the holes of a centrilobular or paraseptal cluster (3D balls of the phantom's hole sizes) or
one bulla. Each lesion is scaled and rotated within `SHAPE_LIMITS` and placed where it lies entirely on healthy
lung (`synthesize_lesions`); so a lesion spans the slices its size implies, at any slice spacing.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from difflung import labels as L
from difflung.data.ctio import read_volume
from difflung.insertion.scan_io import InsertError, lesion_class_id, partial_path

PHANTOM_CLASSES = (L.EMPHYSEMA, L.GGO, L.FIBROSIS)  # classes whose shapes `--synthesize` can draw
TARGET_TOLERANCE = 0.10  # --target-ml: the placed volume lies within 10 % of the target, else an error


@dataclass(frozen=True)
class ShapeLimits:
    """How far a placed lesion may depart from the phantom lesion it was drawn from.

    Args:
        scale: range of the size factor drawn for each lesion (all three semi-axes).
        min_scale: a lesion larger than what is still missing of the target shrinks, down to this factor.
        aspect: range of the in-plane axis ratio (the phantom's lesions are round in-plane).
        max_tilt_deg: largest tilt of the lesion's z axis from the scan's z axis.
        border_noise: amplitude of the smooth 3D field that roughens GGO and fibrosis borders (the phantom's 0.3).
        border_mm: correlation length (Gaussian sigma, mm) of that field.
    """

    scale: tuple[float, float] = (0.7, 1.3)
    min_scale: float = 0.4
    aspect: tuple[float, float] = (0.8, 1.25)
    max_tilt_deg: float = 20.0
    border_noise: float = 0.3
    border_mm: float = 4.0


SHAPE_LIMITS = ShapeLimits()
# emphysema hole radii (mm): (log median, sigma, min, max), the phantom's (`difflung.phantom.lesions._HOLE_R2`)
_HOLE_R = {"centrilobular": (math.log(2.4), 0.4, 1.0, 6.0), "paraseptal": (math.log(3.5), 0.35, 1.5, 7.0)}
# depth below the pleura (mm) of the centres of subpleural lesions, as the phantom places them
_SUBPLEURAL = {"paraseptal": (0.5, 8.0), "fibrosis": (1.0, 12.0)}


def phantom_lesion_extents(cls: int, rng: np.random.Generator, *, min_lesions: int = 30,
                           max_patients: int = 64) -> list[dict]:
    """The 3D extents of the phantom's lesions of class `cls`, drawn from phantom patients (nothing rendered).

    Each is the phantom's lesion dict without its position ("c", "seed") plus "kind" (the class name):
    R (in-plane radius, mm), Rz (z radius; emphysema: R), and per class "type", "fill" (emphysema), "D"
    (fibrosis: subpleural depth, mm), "T" (GGO, fibrosis: base HU, unused here).
    Args:
        cls: a phantom class id (`PHANTOM_CLASSES`); rng: the only source of randomness.
        min_lesions: stop once this many are drawn; max_patients: at most this many patients.
    """
    from difflung.phantom import PhantomConfig
    from difflung.phantom.patient import sample_patient

    name = L.BY_ID[cls].name
    knobs = {L.BY_ID[c].name: (0.15 if c == cls else 0.0) for c in PHANTOM_CLASSES}
    cfg = PhantomConfig(size=64, **knobs)  # size only sets the trees' detail, which the extents do not use
    found = []
    for _ in range(max_patients):
        p = sample_patient(rng, cfg)
        found += [{"kind": name, **{k: v for k, v in les.items() if k not in ("c", "seed")}}
                  for les in p.lesions[name]]
        if len(found) >= min_lesions:
            break
    if not found:
        raise InsertError(f"--synthesize {name}: no phantom lesion of this class in {max_patients} patients")
    return found


def _rotation(tilt: float, phi: float) -> np.ndarray:
    """(3, 3) rotation in (z, y, x): tilt (rad) of the z axis towards y, then a turn phi (rad) about z."""
    ct, st, cp, sp = math.cos(tilt), math.sin(tilt), math.cos(phi), math.sin(phi)
    tilt_m = np.array([[ct, -st, 0.0], [st, ct, 0.0], [0.0, 0.0, 1.0]])
    turn = np.array([[1.0, 0.0, 0.0], [0.0, cp, -sp], [0.0, sp, cp]])
    return turn @ tilt_m


def _smooth_noise(shape, spacing, sigma_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance smooth random field (white noise through a Gaussian of sigma_mm), clipped to +-2; drawn on a
    grid of sigma_mm / 2 (no finer than the voxels) and interpolated, since it holds nothing finer."""
    sp = np.asarray(spacing, dtype=np.float64)
    cell = np.maximum(sp, sigma_mm / 2.0)
    coarse = np.ceil((np.asarray(shape) - 1) * sp / cell).astype(int) + 1
    f = ndi.gaussian_filter(rng.standard_normal(tuple(coarse)), sigma_mm / cell, mode="reflect")
    f /= f.std() + 1e-12
    pos = [np.arange(n) * s / c for n, s, c in zip(shape, sp, cell)]
    f = ndi.map_coordinates(f, np.meshgrid(*pos, indexing="ij"), order=1, mode="nearest")
    return np.clip(f, -2.0, 2.0).astype(np.float32)


def _radii(ext: dict, scale: float, aspect: float) -> np.ndarray:
    """Semi-axes (z, y, x) mm in the lesion's own frame."""
    R, Rz = float(ext["R"]) * scale, float(ext.get("Rz", ext["R"])) * scale
    return np.array([Rz, R * math.sqrt(aspect), R / math.sqrt(aspect)])


def lesion_half(ext: dict, spacing, scale: float = 1.0, aspect: float = 1.0) -> np.ndarray:
    """Half-sides (z, y, x) in voxels of the box `lesion_mask_3d` builds (room for any rotation and border)."""
    return np.ceil(_radii(ext, scale, aspect).max() * 1.3 / np.asarray(spacing, dtype=np.float64)).astype(int) + 1


def lesion_mask_3d(ext: dict, spacing, rng: np.random.Generator, *, scale: float = 1.0, aspect: float = 1.0,
                   tilt_deg: float = 0.0, phi_deg: float = 0.0, depth: np.ndarray | None = None,
                   limits: ShapeLimits = SHAPE_LIMITS) -> np.ndarray:
    """One phantom lesion as a 3D mask on a voxel grid of `spacing` (z, y, x) mm, centred on the middle voxel.

    Args:
        ext: a `phantom_lesion_extents` entry.
        spacing: the scan's voxel spacing (z, y, x) mm: the mask is built there directly (no resampling loss).
        rng: draws the border's noise and emphysema's holes.
        scale, aspect, tilt_deg, phi_deg: size factor, in-plane axis ratio, tilt of the z axis and turn about z.
        depth: fibrosis only, (the mask's shape) mm below the pleura of the host at these voxels (negative or 0
            outside the lung field); the lesion is the part of its ellipsoid within its depth "D" of the pleura.
        limits: the border noise's amplitude and length.
    Returns (Z, Y, X) bool with odd sides; the lesion's centre is the middle voxel.
    """
    sp = np.asarray(spacing, dtype=np.float64)
    radii = _radii(ext, scale, aspect)
    half = lesion_half(ext, sp, scale, aspect)
    if depth is not None and depth.shape != tuple(2 * half + 1):
        raise ValueError(f"depth {depth.shape}: expected {tuple(2 * half + 1)} (lesion_half)")
    axes = [((np.arange(2 * h + 1) - h) * s).astype(np.float32) for h, s in zip(half, sp)]  # offsets, mm
    rot = _rotation(math.radians(tilt_deg), math.radians(phi_deg))
    f = np.ones(tuple(2 * half + 1), np.float32)
    for j in range(3):  # p_j, the lesion-frame coordinate, as a sum of the three axes' terms (no (Z, Y, X, 3))
        p = (axes[0][:, None, None] * rot[0, j] + axes[1][None, :, None] * rot[1, j]
             + axes[2][None, None, :] * rot[2, j])
        f -= (p / np.float32(radii[j])) ** 2
    kind, typ = ext["kind"], ext.get("type")
    if kind == "emphysema" and typ != "bulla":
        mu, sg, lo, hi = _HOLE_R[typ]
        n = int(rng.poisson(float(ext["fill"]) * radii.prod() / math.exp(3 * mu + 4.5 * sg * sg)))
        r = np.clip(rng.lognormal(mu, sg, n), lo, hi)
        u = rng.standard_normal((n, 3))
        u *= (rng.random(n) ** (1 / 3) / np.linalg.norm(u, axis=1))[:, None]
        centres = (u * radii) @ rot.T  # mm from the centre
        mask = np.zeros(f.shape, bool)
        for c, rr in zip(centres, r):
            ci = np.clip(np.rint(c / sp).astype(int) + half, 0, 2 * half)
            reach = np.ceil(rr / sp).astype(int)
            b0, b1 = np.maximum(ci - reach, 0), np.minimum(ci + reach + 1, 2 * half + 1)
            box = tuple(slice(int(a), int(b)) for a, b in zip(b0, b1))
            dd = sum(((ax[bx] - cc) ** 2).reshape([-1 if i == j else 1 for j in range(3)])
                     for i, (ax, bx, cc) in enumerate(zip(axes, box, c)))
            mask[box] |= dd <= rr * rr
            mask[tuple(ci)] = True  # sub-voxel holes stay
        return mask
    if kind == "emphysema":  # a bulla: one hole, its wall the phantom paints as lung
        return f >= 0.0
    f += limits.border_noise * _smooth_noise(f.shape, sp, limits.border_mm, rng)
    if kind == "ggo":
        mask = f >= 0.1  # the phantom's smoothstep(-0.02, 0.22, f) >= 0.5
    elif kind == "fibrosis":
        if depth is None:
            raise ValueError("lesion_mask_3d: fibrosis needs the host's depth below the pleura")
        band = (float(ext["D"]) - depth) / float(ext["D"])
        mask = (np.minimum(f, band) > 0) & (depth > 0)
    else:
        raise ValueError(f"lesion_mask_3d: unknown lesion kind {kind!r}")
    lab, n = ndi.label(mask, structure=np.ones((3, 3, 3), bool))
    if n > 1:  # one lesion: its largest piece
        mask = lab == (1 + int(np.argmax(ndi.sum_labels(mask, lab, range(1, n + 1)))))
    return mask


def _inplane_depth(field: np.ndarray, spacing_yx) -> np.ndarray:
    """mm below the pleura of each lung-field voxel, in-plane as the phantom measures it (0 outside the field)."""
    out = np.zeros(field.shape, np.float32)
    for k in np.flatnonzero(field.any(axis=(1, 2))):
        out[k] = ndi.distance_transform_edt(np.pad(field[k], 1), sampling=spacing_yx)[1:-1, 1:-1]
    return out


class _Host:
    """The scan's healthy lung as `synthesize_lesions` sees it: coarse maps (about 2 mm in-plane) from which
    lesion centres are drawn, and the full-resolution label map on which every placement is checked."""

    def __init__(self, labels: np.ndarray, spacing):
        self.lab = labels
        self.sp = np.asarray(spacing, dtype=np.float64)
        self.step = max(1, int(round(2.0 / min(self.sp[1:]))))
        st = self.step
        healthy = labels[:, ::st, ::st] == L.LUNG
        csp = (self.sp[0], self.sp[1] * st, self.sp[2] * st)
        # clearance (mm) from a healthy voxel to anything else, the scan's edges included
        self.clear = ndi.distance_transform_edt(np.pad(healthy, 1), sampling=csp)[1:-1, 1:-1, 1:-1]
        self.slack = float(np.hypot(csp[1], csp[2]))  # what the coarse grid may misjudge
        self.healthy = healthy
        self._depth_coarse = None
        self._cands = {}
        self._depth = {}  # slice -> full-resolution in-plane depth, computed when a fibrosis lesion needs it

    def depth_coarse(self) -> np.ndarray:
        if self._depth_coarse is None:
            st = self.step
            field = np.isin(self.lab[:, ::st, ::st], L.LUNG_IDS)
            self._depth_coarse = _inplane_depth(field, (self.sp[1] * st, self.sp[2] * st))
        return self._depth_coarse

    def candidates(self, key) -> np.ndarray:
        """Flat coarse indices of healthy voxels: ("clear", mm) at least that far from non-healthy voxels, or
        (type, (lo, hi)) within that depth below the pleura."""
        if key not in self._cands:
            if key[0] == "clear":
                ok = self.healthy & (self.clear >= key[1])
            else:
                dep = self.depth_coarse()
                ok = self.healthy & (dep >= key[1][0]) & (dep <= key[1][1])
            self._cands[key] = np.flatnonzero(ok)
        return self._cands[key]

    def centre(self, idx: int) -> np.ndarray:
        z, y, x = np.unravel_index(idx, self.healthy.shape)
        return np.array([z, y * self.step, x * self.step])

    def window(self, centre, half):
        """The full-resolution box of half-sides `half` around `centre`: (slices into the scan, slices into the
        box) where both overlap, and whether the box lies entirely inside the scan."""
        lo, hi = centre - half, centre + half + 1
        shape = np.array(self.lab.shape)
        a, b = np.maximum(lo, 0), np.minimum(hi, shape)
        inside = bool((lo >= 0).all() and (hi <= shape).all())
        return (tuple(slice(int(i), int(j)) for i, j in zip(a, b)),
                tuple(slice(int(i - l), int(j - l)) for i, j, l in zip(a, b, lo)), inside)

    def local_depth(self, centre, half) -> np.ndarray:
        """In-plane depth below the pleura (mm) on the box around `centre` (0 outside the scan), from whole
        slices computed once each."""
        scan, box, _ = self.window(centre, half)
        out = np.zeros(tuple(2 * half + 1), np.float32)
        for kb, ks in enumerate(range(scan[0].start, scan[0].stop)):
            if ks not in self._depth:
                self._depth[ks] = _inplane_depth(np.isin(self.lab[ks:ks + 1], L.LUNG_IDS), self.sp[1:])[0]
            out[box[0].start + kb][box[1:]] = self._depth[ks][scan[1:]]
        return out


def synthesize_lesions(labels: np.ndarray, cls: int, target_ml: float, spacing, extents: list[dict],
                       rng: np.random.Generator, *, stop: float = 0.02, max_fails: int = 300,
                       limits: ShapeLimits = SHAPE_LIMITS) -> np.ndarray:
    """3D lesions of class `cls` placed on healthy lung (label 2) of `labels` (z, y, x) until `target_ml`.

    One lesion at a time: a phantom extent drawn from `extents`, a size factor, aspect, tilt and turn within
    `limits`, a centre drawn on healthy lung (subpleural lesions, paraseptal emphysema and fibrosis, at the
    phantom's depth below the pleura), the 3D mask built on the scan's voxel grid (`lesion_mask_3d`). It is kept
    when every voxel lies on healthy lung (subpleural lesions are cut by the pleura, as in the phantom; any other
    must lie wholly inside); a lesion larger than what is still missing shrinks (not below `limits.min_scale`),
    so the total never exceeds the target. Stops within `stop` of the target or after `max_fails` lesions in a
    row that do not fit.
    Args:
        labels: (z, y, x) project ids of the scan (its anatomy); spacing: (z, y, x) mm.
        cls, target_ml: the class and its total volume; extents: `phantom_lesion_extents(cls, ...)`.
        rng: the only source of randomness.
    Returns (z, y, x) uint8: `cls` on the new lesions, 0 elsewhere. InsertError when the total ends more than
    TARGET_TOLERANCE below the target.
    """
    if not extents:
        raise InsertError(f"--synthesize {L.BY_ID[cls].name}: no lesion shapes of this class to place")
    sp = np.asarray(spacing, dtype=np.float64)
    voxel_ml = float(sp.prod()) / 1000.0
    lab = labels.copy()
    n_healthy = int((lab == L.LUNG).sum())
    target = target_ml / voxel_ml  # voxels
    if target > 0.5 * n_healthy:
        raise InsertError(f"--target-ml {target_ml:g}: more than half of the healthy lung "
                          f"({n_healthy * voxel_ml:.0f} ml) would become lesion")
    host = _Host(lab, sp)
    remaining, fails = target, 0
    while remaining > stop * target and fails < max_fails:
        ext = extents[int(rng.integers(len(extents)))]
        s = float(rng.uniform(*limits.scale))
        shape_kw = dict(aspect=float(np.exp(rng.uniform(*np.log(limits.aspect)))),
                        tilt_deg=float(rng.uniform(0.0, limits.max_tilt_deg)), phi_deg=float(rng.uniform(0, 360)))
        sub = "fibrosis" if ext["kind"] == "fibrosis" else ext.get("type")
        if sub in _SUBPLEURAL:
            key = (sub, _SUBPLEURAL[sub])
        else:  # wholly inside: centres about its smallest semi-axis (less the grid's slack, in 2 mm bins) clear
            r_min = float(_radii(ext, s, shape_kw["aspect"]).min())
            key = ("clear", 2.0 * math.floor(max(0.0, 0.7 * r_min - host.slack) / 2.0))
        cands = host.candidates(key)
        if not cands.size:
            fails += 1
            continue
        centre = host.centre(int(cands[int(rng.integers(cands.size))]))
        placed = None
        for attempt in range(2):  # the drawn size, then (when too large for what is missing) shrunk once
            mask, scan, box, inside = _build(ext, s, shape_kw, centre, host, rng, limits)
            m = mask[box]
            if sub in _SUBPLEURAL:  # cut by the pleura (and the scan's edge), as the phantom's are; mostly in lung
                m = m & np.isin(lab[scan], L.LUNG_IDS)
                whole = m.sum() >= 0.5 * mask.sum()
            else:  # wholly inside the scan
                whole = inside or m.sum() == mask.sum()
            n = int(m.sum())
            if n > remaining and attempt == 0 and s * 0.97 * (remaining / n) ** (1 / 3) >= limits.min_scale:
                s *= 0.97 * (remaining / n) ** (1 / 3)
                continue
            if 0 < n <= remaining and whole and (lab[scan][m] == L.LUNG).all():
                placed = (scan, m)
            break
        if placed is None:
            fails += 1
            continue
        scan, m = placed
        lab[scan][m] = cls
        remaining -= int(m.sum())
        fails = 0
    placed_ml = (target - remaining) * voxel_ml
    if placed_ml < (1 - TARGET_TOLERANCE) * target_ml:
        raise InsertError(f"--target-ml {target_ml:g}: only {placed_ml:.1f} ml of {L.BY_ID[cls].name} could be "
                          f"placed in the healthy lung ({int((lab == L.LUNG).sum()) * voxel_ml:.0f} ml left)")
    return np.where((lab == cls) & (labels != cls), cls, 0).astype(np.uint8)


def _build(ext, s, shape_kw, centre, host: _Host, rng, limits):
    """The mask of one lesion at `centre`: (mask, scan slices, box slices, box inside the scan)."""
    sp = host.sp
    half = lesion_half(ext, sp, s, shape_kw["aspect"])
    depth = host.local_depth(centre, half) if ext["kind"] == "fibrosis" else None
    mask = lesion_mask_3d(ext, sp, rng, scale=s, depth=depth, limits=limits, **shape_kw)
    scan, box, inside = host.window(centre, np.array(mask.shape) // 2)
    return mask, scan, box, inside


def synthesize_mask_file(ct, out, classes, target_ml: float, *, seed: int = 0) -> dict:
    """Place lesions of several classes in one CT's healthy lung (`--synthesize` for each, one after the other,
    each on the lung the earlier ones left healthy) and write them as a lesion mask with the CT's geometry.

    One mask lets one `insert_lesions(ct, ..., lesion_mask=out)` call paint every class in a single pass.
    Args:
        ct: CT file or DICOM folder; out: the mask file to write (.nii.gz etc.; written atomically).
        classes: class names or ids (phantom classes); target_ml: the volume of each class.
        seed: seeds the phantom extents and the placement (class i uses the i-th child streams).
    Returns {class name: placed ml}.
    """
    import SimpleITK as sitk

    from difflung.data.ct_anatomy import segment
    from difflung.insertion.scan_io import image_like, read_ct, volume_suffix

    vol, _, ref = read_ct(ct)  # ref: the CT as stored, so the mask keeps its voxel order and geometry
    labels = segment(vol.hu, vol.spacing, name=str(ct)).labels()
    lesions, placed = np.zeros(labels.shape, np.uint8), {}
    streams = np.random.SeedSequence(seed).spawn(len(classes))
    for c, ss in zip((lesion_class_id(c, PHANTOM_CLASSES, "--synthesize") for c in classes), streams):
        rng_bank, rng_place = (np.random.default_rng(s) for s in ss.spawn(2))
        extents = phantom_lesion_extents(c, rng_bank)
        new = synthesize_lesions(labels, c, float(target_ml), vol.spacing, extents, rng_place)
        lesions[new > 0], labels[new > 0] = c, c
        placed[L.BY_ID[c].name] = float((new > 0).sum()) * vol.voxel_ml
    out = Path(out)
    tmp = partial_path(out)
    try:
        sitk.WriteImage(image_like(lesions, vol, ref), str(tmp), useCompression=volume_suffix(tmp) != ".nii")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return placed


def new_lesions(base_labels: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Pathology of `masks` that `base_labels` does not have there: (N, S, S) project ids, 0 elsewhere."""
    base_labels, masks = np.asarray(base_labels), np.asarray(masks)
    if base_labels.shape != masks.shape:
        raise ValueError(f"base labels {base_labels.shape} and masks {masks.shape} must have the same shape")
    new = (masks != base_labels) & np.isin(masks, L.PATHOLOGY_IDS)
    return np.where(new, masks, 0).astype(np.uint8)
