"""Phantom configuration, per-patient parameters, tissue HU values and random-stream derivation."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Band that the *mean* HU of each class's pixels falls in (checked by tests/test_phantom.py). Literature values:
# normal lung -850..-910 (here parenchyma about -885; vessels, which keep the lung label, and partial
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


# Clip range of the rendered HU (12-bit CT range).
HU_MIN, HU_MAX = -1024.0, 3071.0

# Independent streams drawn from each patient's rng: anatomy, trees, severity, emphysema, ggo, fibrosis, fields,
# reserve. Adding a stream must not shift the others, so the count is fixed.
N_STREAMS = 8


def child_rng(seed, *keys) -> np.random.Generator:
    """A generator seeded by `seed` and integer `keys` (one independent stream per key tuple)."""
    return np.random.default_rng([int(seed)] + [int(k) for k in keys])
