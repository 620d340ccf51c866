"""A toy dataset artifact of geometric 'chest' slices, for tests and for trying the API without CT.

Body ellipse, two lung ellipses, and small disks of emphysema, ground-glass and fibrosis inside the lungs,
with HU values near the literature ranges of `difflung.labels` and Gaussian noise. Not a phantom: use
`difflung.phantom` for anything whose numbers matter.
"""
from __future__ import annotations

import numpy as np

from difflung import labels as L
from difflung.data.dataset import Dataset, Volume, volumes_to_slices, write_dataset

_HU = {L.BACKGROUND: -1000.0, L.BODY: 40.0, L.LUNG: -870.0, L.EMPHYSEMA: -975.0, L.GGO: -520.0, L.FIBROSIS: -250.0}
_LUT = np.zeros(256, np.float32)  # label id -> HU
_LUT[list(_HU)] = list(_HU.values())


def toy_volume(patient: str, rng: np.random.Generator, size: int = 32, n_slices: int = 4) -> Volume:
    """One toy patient: (n_slices, size, size) HU and labels drawn from `rng`."""
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1) * 2 - 1  # (S, S) in [-1, 1]
    hu = np.empty((n_slices, size, size), np.float32)
    lab = np.zeros((n_slices, size, size), np.uint8)
    for k in range(n_slices):
        m = np.zeros((size, size), np.uint8)
        m[(xx / 0.9) ** 2 + (yy / 0.7) ** 2 <= 1] = L.BODY
        for cx in (-0.4, 0.4):
            m[((xx - cx) / 0.3) ** 2 + (yy / 0.5) ** 2 <= 1] = L.LUNG
        for cid in (L.EMPHYSEMA, L.GGO, L.FIBROSIS):
            if rng.random() < 0.8:  # a disk of this pathology inside a lung
                cx, cy = rng.choice([-0.4, 0.4]) + rng.uniform(-0.12, 0.12), rng.uniform(-0.3, 0.3)
                r = rng.uniform(0.1, 0.18)
                m[((xx - cx) ** 2 + (yy - cy) ** 2 <= r * r) & (m != L.BACKGROUND) & (m != L.BODY)] = cid
        lab[k] = m
        hu[k] = _LUT[m] + rng.normal(0, 25, (size, size)) * (m != L.BACKGROUND)
    return Volume(patient, hu.astype(np.float32), lab, (5.0, 1.0, 1.0), source="toy")


def toy_dataset(out_dir, n_patients: int = 5, n_slices: int = 4, size: int = 32, seed: int = 0) -> Dataset:
    """Write a toy dataset artifact (patient split 60/20/20) to `out_dir` and return it."""
    rng = np.random.default_rng(seed)
    vols = [toy_volume(f"toy{i:03d}", rng, size, n_slices) for i in range(n_patients)]
    slices, patients = volumes_to_slices(vols, size)
    return write_dataset(out_dir, slices, source="toy", params={"generator": "difflung.diffusion.toy",
                         "n_patients": n_patients, "n_slices": n_slices, "size": size}, seed=seed, patients=patients)
