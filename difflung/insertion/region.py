"""The edit region: the voxels lesion insertion may change, the lesions grown in-plane within the lung field.

One rule for both insertions: a scan at its own resolution (`insert_lesions`: Euclidean distance in mm over the
slice's pixel spacing) and whole training slices (the `+insert` arm: `metric="chessboard"`, a margin in pixels,
the same pixels as that many 8-connected dilations). Every voxel outside the region is kept bit for bit.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

METRICS = ("euclidean", "chessboard")


def edit_region(lesions: np.ndarray, lung: np.ndarray, spacing, margin: float, *,
                metric: str = "euclidean") -> np.ndarray:
    """(z, y, x) bool: the lesions, plus the lung-field pixels of the same slice within `margin` of them.

    Args:
        lesions: (z, y, x) lesion labels (> 0: lesion).
        lung: (z, y, x) bool lung field; the margin never leaves it (the lesions themselves are always kept).
        spacing: (z, y, x) mm; only the in-plane (y, x) spacing is used, and only by the Euclidean metric
            (None for "chessboard").
        margin: the distance, in mm for "euclidean", in pixels for "chessboard" (max(|dy|, |dx|)).
        metric: "euclidean" (a scan at its own pixel size) or "chessboard" (whole slices: `margin` pixels of
            8-connected growth).
    """
    if metric not in METRICS:
        raise ValueError(f"metric {metric!r}: expected one of {METRICS}")
    if metric == "euclidean" and spacing is None:
        raise ValueError("edit_region: the Euclidean margin is in mm and needs the scan's spacing")
    region = np.asarray(lesions) > 0
    out = region.copy()
    for k in np.flatnonzero(region.any(axis=(1, 2))):
        if metric == "euclidean":
            dist = ndi.distance_transform_edt(~region[k], sampling=spacing[1:])
        else:
            dist = ndi.distance_transform_cdt(~region[k], metric="chessboard")
        out[k] |= (dist <= margin) & lung[k]
    return out
