"""Mask synthesis (Diff-Lung's mask generation): new label masks with more rare-class lesions.

A new mask starts from a real mask (the *target* slice). Lesion components of the boosted classes (connected
components of that class, taken from any slice or patient in `sources`) are rotated, optionally dilated, and
pasted at random positions where the target slice has healthy lung (label 2), up to each boosted class's target
share of the slice's lung field, never beyond it: a lesion that would carry the share past `target + tolerance`
is not pasted (another, smaller one is tried), and only slices whose share of every boosted class is already at
most its target serve as targets. A mask may end below its target when no lesion fits the remainder. Only
healthy-lung pixels change: body, airway, background and every other label stay identical, and nothing lands in
the airway or outside the lung.

Randomness comes only from the `numpy.random.Generator` passed in: same generator state, same masks.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi
from scipy.signal import correlate

from difflung import labels as L


@dataclass
class Lesion:
    """One connected component of a class, cropped: where it came from and its mask."""

    cls: int
    source: int  # index of the slice in `sources`
    mask: np.ndarray  # (h, w) bool


@dataclass
class MaskSynthesis:
    labels: np.ndarray  # (M, S, S) uint8 new masks
    source_index: np.ndarray  # (M,) int64: the input slice each new mask was built on
    report: "object"  # pandas DataFrame, one row per boosted class
    pastes: list[dict] = field(default_factory=list)  # one dict per pasted lesion (mask, class, donor, angle, ...)


def components(sources: np.ndarray, classes, min_pixels: int = 4):
    """Yield (class, slice index, bounding-box slices, cropped bool mask) for every 8-connected component of
    >= `min_pixels` pixels of each class in `sources` (N, S, S), slice by slice, classes in the given order."""
    eight = np.ones((3, 3), bool)
    for i, lab in enumerate(np.asarray(sources)):
        for c in classes:
            m = lab == c
            if not m.any():
                continue
            comp, _ = ndi.label(m, structure=eight)
            for k, sl in enumerate(ndi.find_objects(comp)):
                piece = comp[sl] == k + 1
                if piece.sum() >= min_pixels:
                    yield int(c), i, sl, piece


def lesion_bank(sources: np.ndarray, classes, min_pixels: int = 4) -> dict[int, list[Lesion]]:
    """Connected components (8-connected, >= min_pixels) of each class in `sources` (N, S, S)."""
    bank: dict[int, list[Lesion]] = {int(c): [] for c in classes}
    for c, i, _, piece in components(sources, list(bank), min_pixels):
        bank[c].append(Lesion(c, i, piece))
    return bank


def _transform(mask: np.ndarray, angle: float, flip: bool, dilation: int) -> np.ndarray:
    m = mask[:, ::-1] if flip else mask
    m = ndi.rotate(m.astype(np.uint8), angle, order=0, reshape=True, prefilter=False) > 0
    if dilation:
        m = ndi.binary_dilation(np.pad(m, dilation), iterations=dilation)
    ys, xs = np.nonzero(m)
    return m[ys.min():ys.max() + 1, xs.min():xs.max() + 1] if ys.size else m


def _place(healthy: np.ndarray, shape: np.ndarray, area: int, min_inside: float, rng, n_quick: int = 16):
    """Top-left (y, x) where at least min_inside of `shape` falls on `healthy`, or None.

    Quick path: centre the shape on random healthy pixels (cheap, O(area) per try); when those all fail, an
    exhaustive search over every offset (FFT correlation) so that tight spots are still found.
    """
    h, w = shape.shape
    H, W = healthy.shape
    if h > H or w > W:
        return None
    need = min_inside * area - 0.5
    ys, xs = np.nonzero(healthy)
    if ys.size == 0:
        return None
    for _ in range(n_quick):
        j = int(rng.integers(ys.size))
        y0, x0 = int(ys[j]) - h // 2, int(xs[j]) - w // 2
        if 0 <= y0 <= H - h and 0 <= x0 <= W - w and healthy[y0:y0 + h, x0:x0 + w][shape].sum() >= need:
            return y0, x0
    inside = correlate(healthy.astype(np.float32), shape.astype(np.float32), mode="valid", method="fft")
    ok = np.flatnonzero(inside.ravel() >= need)
    if ok.size == 0:
        return None
    y0, x0 = np.unravel_index(ok[int(rng.integers(ok.size))], inside.shape)
    return int(y0), int(x0)


def _resolve(boost) -> dict[int, float]:
    out = {}
    for k, v in dict(boost).items():
        c = L.class_id(k)
        cls = L.BY_ID[c]
        if not (cls.in_lung and cls.pathology):
            allowed = ", ".join(x.name for x in L.CLASSES if x.in_lung and x.pathology)
            raise ValueError(f"boost: class {cls.name!r} cannot be synthesised inside the lung; use one of {allowed}")
        if not 0.0 <= float(v) < 1.0:
            raise ValueError(f"boost: target fraction for {cls.name} must be in [0, 1), got {v!r}")
        out[c] = float(v)
    if not out:
        raise ValueError("boost: give at least one class and its target fraction of lung pixels")
    return dict(sorted(out.items()))


def shares(labels: np.ndarray, classes) -> np.ndarray:
    """(N, len(classes)) share of each slice's lung field held by each class (0 where a slice has no lung)."""
    labels = np.asarray(labels)
    field_ = np.isin(labels, L.LUNG_IDS).sum(axis=(-2, -1))  # (N,)
    counts = np.stack([(labels == c).sum(axis=(-2, -1)) for c in classes], axis=-1)  # (N, C)
    return counts / np.maximum(field_, 1)[..., None]


def synthesize_masks(labels: np.ndarray, boost: dict, rng: np.random.Generator, n_masks: int | None = None, *,
                     max_rotation_deg: float = 180.0, max_dilation: int = 2, sources: np.ndarray | None = None,
                     min_lung_pixels: int = 64, min_inside: float = 1.0, max_tries: int = 30,
                     tolerance: float = 0.0) -> MaskSynthesis:
    """Make `n_masks` new masks whose boosted classes cover up to a target share of each mask's lung field.

    Args:
        labels: (N, S, S) uint8 project label masks; new masks are built on these (targets).
        boost: class (name or id) -> target fraction of lung-field pixels in each new mask, e.g.
            {"emphysema": 0.10, "fibrosis": 0.08}; only in-lung pathology classes.
        rng: numpy Generator, the only source of randomness.
        n_masks: number of new masks (default N).
        max_rotation_deg: lesions are rotated by a uniform angle in [-max, max] (and flipped with p = 0.5).
        max_dilation: lesions are dilated by a uniform number of pixels in [0, max_dilation].
        sources: (K, S', S') masks to copy lesions from (default `labels`), e.g. other patients.
        min_lung_pixels: target slices need at least this many healthy-lung pixels.
        min_inside: fraction of a pasted lesion that must fall on healthy lung (1.0: entirely); the part
            outside healthy lung is never written.
        max_tries: failed placements per mask and class after which its target is given up.
        tolerance: a boosted class's share of a new mask never exceeds its target plus this (default 0: never
            above the target).
    Returns MaskSynthesis(labels (M, S, S), source_index (M,), report DataFrame, pastes).
    Raises ValueError when no slice is both below every target and has `min_lung_pixels` healthy lung.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3 or labels.dtype != np.uint8:
        raise ValueError(f"labels: expected (N, S, S) uint8 masks, got {labels.shape} {labels.dtype}")
    if not 0.0 < min_inside <= 1.0:
        raise ValueError(f"min_inside must be in (0, 1], got {min_inside!r}")
    if not 0.0 <= tolerance < 1.0:
        raise ValueError(f"tolerance must be in [0, 1), got {tolerance!r}")
    targets = _resolve(boost)
    sources = labels if sources is None else np.asarray(sources)
    bank = lesion_bank(sources, targets)
    empty = [L.BY_ID[c].name for c, v in bank.items() if not v]
    if empty:
        raise ValueError(f"no lesion of class {', '.join(empty)} in the sources to copy; give sources that have them")
    healthy_count = (labels == L.LUNG).sum(axis=(1, 2))
    below = (shares(labels, list(targets)) <= np.array(list(targets.values()))).all(axis=1)  # (N,)
    eligible = np.flatnonzero((healthy_count >= min_lung_pixels) & below)
    if eligible.size == 0:
        wanted = ", ".join(f"{L.BY_ID[c].name} <= {t:g}" for c, t in targets.items())
        raise ValueError(f"no slice has {min_lung_pixels} healthy-lung pixels and a share of the lung field of "
                         f"{wanted} to build on; raise the targets or give slices with fewer lesions")
    n_masks = len(labels) if n_masks is None else int(n_masks)

    src_idx = rng.choice(eligible, size=n_masks, replace=True)
    out = labels[src_idx].copy()
    pastes = []
    for m in range(n_masks):
        n_field = int(np.isin(out[m], L.LUNG_IDS).sum())
        for c, frac in targets.items():
            need = frac * n_field - int((out[m] == c).sum())
            found = _fill(out[m], c, need, tolerance * n_field, bank[c], rng, max_rotation_deg=max_rotation_deg,
                          max_dilation=max_dilation, min_inside=min_inside, max_tries=max_tries)
            pastes += [{"mask": m, **p} for p in found]
    report = _report(labels, out, targets, bank, tolerance, n_eligible=int(eligible.size))
    return MaskSynthesis(out, src_idx.astype(np.int64), report, pastes)


def _fill(lab: np.ndarray, c: int, need: float, slack: float, lesions: list[Lesion], rng, *, max_rotation_deg: float,
          max_dilation: int, min_inside: float, max_tries: int) -> list[dict]:
    """Paste lesions of class `c` into the healthy lung of `lab` (in place) until `need` pixels are added, never
    more than `need + slack`. Returns one dict per pasted lesion."""
    pastes, fails = [], 0
    while need > 0 and fails < max_tries:
        fails += 1  # given back below when the lesion is pasted
        les = lesions[int(rng.integers(len(lesions)))]
        angle = float(rng.uniform(-max_rotation_deg, max_rotation_deg))
        flip = bool(rng.integers(2))
        dil = int(rng.integers(max_dilation + 1))
        shape = _transform(les.mask, angle, flip, dil)
        area = int(shape.sum())
        if area > need + slack:  # would carry the share past target + tolerance: try another lesion
            continue
        healthy = lab == L.LUNG
        pos = _place(healthy, shape, area, min_inside, rng)
        if pos is None:
            continue
        (y0, x0), (h, w) = pos, shape.shape
        region = np.zeros_like(healthy)
        region[y0:y0 + h, x0:x0 + w] = shape
        region &= healthy  # never outside healthy lung; so added <= area <= need + slack
        lab[region] = c
        added = int(region.sum())
        need -= added
        fails -= added > 0
        pastes.append({"class": L.BY_ID[c].name, "donor": les.source, "angle_deg": angle, "flip": flip,
                       "dilation": dil, "y": int(y0), "x": int(x0), "pixels": added})
    return pastes


def _report(labels, out, targets: dict[int, float], bank, tolerance: float, n_eligible: int):
    """One row per boosted class: target, pooled shares before/after, and the largest share of any new mask."""
    import pandas as pd

    def fractions(arr):
        field_ = np.isin(arr, L.LUNG_IDS).sum()
        return {c: ((arr == c).sum(), (arr == c).sum() / max(field_, 1)) for c in targets}

    before, after = fractions(labels), fractions(out)
    both = fractions(np.concatenate([labels, out]))
    per_mask = shares(out, list(targets))  # (M, C)
    return pd.DataFrame([{
        "class": L.BY_ID[c].name, "target_fraction": t, "tolerance": tolerance, "lesions_in_bank": len(bank[c]),
        "slices_eligible": n_eligible, "slices_total": int(len(labels)),
        "pixels_before": int(before[c][0]), "fraction_before": float(before[c][1]),
        "pixels_synthetic": int(after[c][0]), "fraction_synthetic": float(after[c][1]),
        "fraction_combined": float(both[c][1]), "max_fraction_synthetic": float(per_mask[:, k].max()),
    } for k, (c, t) in enumerate(targets.items())])


def report_table(report):
    """A synthesis report (`MaskSynthesis.report`) for a page: shares of the lung field as percentages, one row
    per boosted class."""
    import pandas as pd

    from difflung.plots import pct

    r = report.set_index("class")
    return pd.DataFrame({
        "target share": r["target_fraction"].map(pct),
        "share in the training masks": r["fraction_before"].map(pct),
        "share in the new masks (pooled)": r["fraction_synthetic"].map(pct),
        "largest share in one new mask": r["max_fraction_synthetic"].map(pct),
        "slices built on": [f"{e} of {t}" for e, t in zip(r["slices_eligible"], r["slices_total"])],
        "lesions to copy": r["lesions_in_bank"],
    })
