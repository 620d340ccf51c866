"""Classical anatomy for unlabelled chest CT: body, left/right lung and airway, in the project's label scheme.

Volumes are (z, y, x) in the LPI orientation of `difflung.data.ctio` (slice 0 superior, x towards the patient's left).
The work is done on an in-plane grid of about `grid_mm` (block-mean downsampling), then the lung boundary is
re-thresholded at full resolution. Steps:
    body    HU > body_hu, in-plane opening (cuts the couch and blankets loose), largest 3D component,
            in-plane hole fill (so lungs and airway are inside it).
    airway  seed: the round midline air region on the highest slices that have one (trachea); 3D region grow
            below `airway_hu` with leak control (the threshold is lowered while the grown volume exceeds
            `airway_max_ml`), then one in-plane voxel of partial-volume rim below lung_hu.
    lungs   air below lung_hu inside the body minus the airway; 3D components, the largest kept and any other
            of at least `min_lung_ratio` of it (excludes stomach and bowel gas); vessels filled slice by slice;
            split into right/left by components (eroding where the lungs touch), by x of their centroids.
    lesions a dataset's own labels mapped to project ids (`difflung.data.classmap`): lung-field classes are kept
            within `lesion_margin_mm` (in-plane) of the lung field, so tumours abutting the pleura stay whole,
            effusion within the body; voxels elsewhere are dropped and counted.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from difflung import labels as L
from difflung.data.dataset import DatasetError

PLANE = np.zeros((3, 3, 3), bool)
PLANE[1] = ndi.generate_binary_structure(2, 1)  # in-plane 4-connectivity: 2D operations on every slice at once
CONN3 = ndi.generate_binary_structure(3, 1)


class AnatomyError(DatasetError):
    """Segmentation failed on a volume (e.g. no lungs); the message names the volume."""


@dataclass
class AnatomyConfig:
    body_hu: float = -500.0
    lung_hu: float = -400.0
    airway_hu: float = -950.0  # strict: parenchyma (~ -850) must not be reached through bronchial walls
    airway_max_ml: float = 250.0  # trachea + main bronchi are ~ 30-100 ml; more means a leak into the lung
    min_lung_ratio: float = 0.25
    lesion_margin_mm: float = 10.0
    grid_mm: float = 1.25  # working in-plane spacing


@dataclass
class Anatomy:
    """Masks (z, y, x) bool at the volume's resolution, plus what the algorithm decided (`info`)."""

    body: np.ndarray  # whole body incl. lungs and airway
    lung_right: np.ndarray
    lung_left: np.ndarray
    airway: np.ndarray
    spacing: tuple[float, float, float]
    info: dict = field(default_factory=dict)

    @property
    def lung(self) -> np.ndarray:
        return self.lung_right | self.lung_left

    def volumes_ml(self) -> dict[str, float]:
        v = float(np.prod(self.spacing)) / 1000.0
        return {"lung_right": float(self.lung_right.sum()) * v, "lung_left": float(self.lung_left.sum()) * v,
                "lung": float(self.lung.sum()) * v, "airway": float(self.airway.sum()) * v,
                "body": float(self.body.sum()) * v}

    def labels(self, lesions: np.ndarray | None = None) -> np.ndarray:
        """Project label map (z, y, x) uint8: body, lung, airway, then lesions (project ids) on top."""
        out = np.zeros(self.body.shape, np.uint8)
        out[self.body] = L.BODY
        out[self.lung] = L.LUNG
        out[self.airway] = L.AIRWAY
        if lesions is not None:
            m = lesions > 0
            out[m] = lesions[m]
        return out


# ---------------------------------------------------------------------------------------------------------------
# grid helpers

def _downsample(hu: np.ndarray, f: int) -> np.ndarray:
    """Block mean over f x f in-plane blocks, padding with air; (Z, Y, X) -> (Z, ceil(Y/f), ceil(X/f))."""
    if f == 1:
        return hu.astype(np.float32, copy=False)
    z, h, w = hu.shape
    ph, pw = -h % f, -w % f
    a = np.pad(hu, ((0, 0), (0, ph), (0, pw)), constant_values=-1000.0) if ph or pw else hu
    return a.reshape(z, (h + ph) // f, f, (w + pw) // f, f).mean(axis=(2, 4), dtype=np.float32)


def _upsample(m: np.ndarray, f: int, shape) -> np.ndarray:
    if f == 1:
        return m
    return np.repeat(np.repeat(m, f, axis=1), f, axis=2)[:, : shape[1], : shape[2]]


def _disk(radius: int) -> np.ndarray:
    r = max(int(radius), 1)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    se = np.zeros((1, 2 * r + 1, 2 * r + 1), bool)
    se[0] = yy ** 2 + xx ** 2 <= r * r
    return se


def _components(mask: np.ndarray, structure=CONN3):
    lab, n = ndi.label(mask, structure=structure)
    sizes = np.bincount(lab.ravel(), minlength=n + 1)
    sizes[0] = 0
    return lab, sizes


# ---------------------------------------------------------------------------------------------------------------
# steps (on the working grid)

def segment_body(hu: np.ndarray, spacing, cfg: AnatomyConfig) -> np.ndarray:
    """Body mask (z, y, x) bool, lungs included."""
    dense = hu > cfg.body_hu
    disk = _disk(round(3.0 / spacing[1]))
    b = ndi.binary_opening(dense, structure=disk)  # ~3 mm: detaches couch and sheets touching the skin
    lab, sizes = _components(b)
    if sizes.max(initial=0) == 0:
        return np.zeros_like(b)
    b = ndi.binary_dilation(lab == int(np.argmax(sizes)), structure=disk) & dense  # give back the skin's detail
    return ndi.binary_fill_holes(b, structure=PLANE)


def trachea_candidates(hu: np.ndarray, body: np.ndarray, spacing, cfg: AnatomyConfig) -> list[tuple[int, int, int]]:
    """Per slice of the upper third of the body, the largest round midline air region of 0.5-6 cm2: (z, y, x)."""
    px_cm2 = spacing[1] * spacing[2] / 100.0
    zs = np.flatnonzero(body.any(axis=(1, 2)))
    seeds = []
    for k in zs[: max(len(zs) // 3, 1)]:
        bx = np.flatnonzero(body[k].any(axis=0))
        cx, half = (bx[0] + bx[-1]) / 2.0, (bx[-1] - bx[0]) / 2.0
        air = (hu[k] < cfg.airway_hu + 50) & body[k]
        lab, n = ndi.label(air)
        best, best_area = None, 0.0
        for i, sl in enumerate(ndi.find_objects(lab)):
            m = lab[sl] == i + 1
            area = m.sum() * px_cm2
            ys, xs = np.nonzero(m)
            if not (0.5 <= area <= 6.0) or abs(xs.mean() + sl[1].start - cx) > 0.2 * half:
                continue
            diam_cm = max(np.ptp(ys) + 1, np.ptp(xs) + 1) * spacing[1] / 10.0
            if area / (np.pi * diam_cm ** 2 / 4) > 0.5 and area > best_area:  # round: fills half its circle
                j = len(ys) // 2
                best, best_area = (int(k), int(ys[j] + sl[0].start), int(xs[j] + sl[1].start)), area
        if best is not None:
            seeds.append(best)
    return seeds


def grow_airway(hu: np.ndarray, body: np.ndarray, seeds, spacing, cfg: AnatomyConfig):
    """Region grow below a threshold from the component holding most trachea candidates.

    Leak control: the threshold is lowered in 25 HU steps while the grown volume exceeds airway_max_ml.
    Returns (mask or None, threshold used).
    """
    vox_ml = float(np.prod(spacing)) / 1000.0
    idx = tuple(np.array(seeds).T)
    for thr in np.arange(cfg.airway_hu, -1000.0 - 1e-6, -25.0):
        lab, _ = ndi.label((hu < thr) & body, structure=CONN3)
        hit = lab[idx]
        hit = hit[hit > 0]
        if hit.size == 0:
            continue
        k = np.bincount(hit).argmax()  # the trachea: the one component most per-slice candidates fall into
        grown = lab == k
        if grown.sum() * vox_ml <= cfg.airway_max_ml:
            return grown, float(thr)
    return None, None


def split_lungs(lung: np.ndarray, cfg: AnatomyConfig, max_erosions: int = 8):
    """(right, left) masks: 3D components by centroid x (x grows towards the patient's left)."""
    work, n_eroded = lung, 0
    while True:
        lab, sizes = _components(work)
        order = np.argsort(sizes)[::-1]
        big = [int(i) for i in order if sizes[i] > 0 and sizes[i] >= cfg.min_lung_ratio * sizes[order[0]]]
        if len(big) >= 2 or n_eroded >= max_erosions or sizes.max(initial=0) == 0:
            break
        work = ndi.binary_erosion(work, structure=PLANE)  # lungs touching at the anterior junction line
        n_eroded += 1
    if len(big) < 2:  # one lung only (or unseparable): sides by the lung's own midline
        xs = np.nonzero(lung)[2]
        mid = (xs.min() + xs.max()) / 2.0 if xs.size else 0
        right = lung.copy()
        right[:, :, int(np.ceil(mid)):] = False
        return right, lung & ~right, {"split": "midline", "erosions": n_eroded}
    a, b = big[:2]
    cx = [np.nonzero(lab == i)[2].mean() for i in (a, b)]
    r_id, l_id = (a, b) if cx[0] < cx[1] else (b, a)
    seeds = np.zeros(lung.shape, np.uint8)
    seeds[lab == r_id] = 1
    seeds[lab == l_id] = 2
    if n_eroded:  # give back eroded voxels to the nearest side
        _, ind = ndi.distance_transform_edt(seeds == 0, return_indices=True)
        seeds = seeds[tuple(ind)]
    side = np.where(lung, seeds, 0)
    return side == 1, side == 2, {"split": "components", "erosions": n_eroded}


# ---------------------------------------------------------------------------------------------------------------
# the whole segmentation

def segment(hu: np.ndarray, spacing, cfg: AnatomyConfig | None = None, *, name: str = "volume") -> Anatomy:
    """Segment body, lungs (right/left) and airway of a CT volume.

    Args:
        hu: (Z, Y, X) HU, LPI orientation (`difflung.data.ctio.read_volume`).
        spacing: (z, y, x) mm.
        cfg: thresholds and sizes (AnatomyConfig()).
        name: used in error messages (the file).
    Raises AnatomyError when no body or no lungs are found.
    """
    cfg = cfg or AnatomyConfig()
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise AnatomyError(f"{name}: expected a 3D volume (z, y, x), got shape {hu.shape}")
    f = max(1, int(round(cfg.grid_mm / min(spacing[1], spacing[2]))))
    g = _downsample(hu, f)
    gs = (float(spacing[0]), float(spacing[1]) * f, float(spacing[2]) * f)
    vox_ml = float(np.prod(gs)) / 1000.0
    info = {"grid_factor": f, "grid_spacing_mm": list(gs), "warnings": []}

    body = segment_body(g, gs, cfg)
    if body.sum() * vox_ml < 500.0:
        raise AnatomyError(f"{name}: no body and so no lungs found (nothing above {cfg.body_hu:.0f} HU larger "
                           "than 0.5 l); is this a chest CT in HU?")

    seeds = trachea_candidates(g, body, gs, cfg)
    airway = np.zeros_like(body)
    if seeds:
        grown, thr = grow_airway(g, body, seeds, gs, cfg)
        if grown is not None:
            rim = ndi.binary_dilation(grown, structure=PLANE) & (g < cfg.lung_hu)  # partial-volume wall, in-plane
            airway = grown | rim
            info.update(airway_candidates=len(seeds), airway_hu=thr)
        else:
            info["warnings"].append("airway region growing leaked at every threshold; no airway labelled")
    else:
        info["warnings"].append("no trachea found on the upper slices; no airway labelled")

    air = (g < cfg.lung_hu) & body & ~airway
    lab, sizes = _components(air)
    if sizes.max(initial=0) * vox_ml < 50.0:
        raise AnatomyError(f"{name}: no lungs found (no air region below {cfg.lung_hu:.0f} HU inside the body "
                           "larger than 50 ml)")
    keep = np.flatnonzero(sizes >= cfg.min_lung_ratio * sizes.max())
    lung = np.isin(lab, keep)
    info["air_components_dropped_ml"] = sorted((float(s) * vox_ml for s in sizes[1:] if s and s * vox_ml >= 1.0
                                                and s < cfg.min_lung_ratio * sizes.max()), reverse=True)[:5]
    lung = ndi.binary_fill_holes(lung, structure=PLANE) & ~airway  # vessels and nodules inside the lung
    right, left, split_info = split_lungs(lung, cfg)
    info.update(split_info)

    # back to full resolution: re-threshold the lung boundary within one working voxel of it
    shape = hu.shape
    up = lambda m: _upsample(m, f, shape)  # noqa: E731
    body_f, airway_f = up(body), up(airway)
    if f > 1:
        core = up(ndi.binary_erosion(lung, structure=PLANE))
        band = up(ndi.binary_dilation(lung, structure=PLANE)) & (hu < cfg.lung_hu) & ~airway_f
        lung_f = core | band
        side = up(np.where(left, 2, np.where(right, 1, 0)).astype(np.uint8))
        side = np.where(side == 0, up(ndi.grey_dilation(np.where(left, 2, np.where(right, 1, 0)).astype(np.uint8),
                                                         footprint=PLANE)), side)
        right_f, left_f = lung_f & (side == 1), lung_f & (side == 2)
    else:
        right_f, left_f = right, left
    body_f = body_f | right_f | left_f | airway_f
    return Anatomy(body=body_f, lung_right=right_f, lung_left=left_f, airway=airway_f,
                   spacing=tuple(float(s) for s in spacing), info=info)


def place_lesions(anatomy: Anatomy, lesions: np.ndarray, cfg: AnatomyConfig | None = None,
                  name: str = "labels") -> tuple[np.ndarray, dict]:
    """Keep lesion labels (project ids, 0 = none) where they can be; whole 3D lesions, not voxels.

    A lesion of a lung-field class (nodule, GGO, ...) is kept whole when any part of it lies within
    `lesion_margin_mm` (in-plane) of the segmented lung field: a tumour abutting the pleura has soft-tissue
    density, so thresholding leaves it outside the aerated lung, yet it belongs to the lung field. Lesions far
    from the lungs (a misaligned or mediastinal label) are dropped; non-lung classes (effusion) must lie in the
    body. Returns (kept (z, y, x) uint8, {"dropped_voxels": {class: n}, "dropped_lesions": {class: n}}).
    """
    cfg = cfg or AnatomyConfig()
    lesions = np.asarray(lesions, dtype=np.uint8)
    if lesions.shape != anatomy.body.shape:
        raise AnatomyError(f"{name}: lesion shape {lesions.shape} != volume shape {anatomy.body.shape}")
    r = max(1, int(round(cfg.lesion_margin_mm / min(anatomy.spacing[1:]))))
    near_lung = _dilate_inplane(anatomy.lung, r, only=lesions.any(axis=(1, 2)))
    out = np.zeros_like(lesions)
    dropped_vox, dropped_les = {}, {}
    for c in np.unique(lesions):
        if c == 0:
            continue
        cls = L.BY_ID[int(c)]
        lab, n = ndi.label(lesions == c, structure=ndi.generate_binary_structure(3, 3))
        allowed = near_lung if cls.in_lung else anatomy.body
        ok = np.zeros(n + 1, bool)
        ok[np.unique(lab[allowed & (lab > 0)])] = True
        ok[0] = False
        out[ok[lab]] = c
        lost = (lab > 0) & ~ok[lab]
        if not cls.in_lung:
            lost |= (lab > 0) & ok[lab] & ~anatomy.body  # effusion voxels outside the body go
            out[(out == c) & ~anatomy.body] = 0
        if lost.any():
            dropped_vox[cls.name] = int(lost.sum())
            dropped_les[cls.name] = int(n - ok[1:].sum())
    return out, {"dropped_voxels": dropped_vox, "dropped_lesions": dropped_les}


def _dilate_inplane(mask: np.ndarray, r: int, only=None) -> np.ndarray:
    """In-plane dilation by a disk of radius r voxels (distance transform), on the slices flagged in `only`."""
    out = np.zeros_like(mask)
    todo = mask.any(axis=(1, 2)) if only is None else mask.any(axis=(1, 2)) & only
    for k in np.flatnonzero(todo):
        out[k] = ndi.distance_transform_edt(~mask[k]) <= r
    return out
