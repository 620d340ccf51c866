"""Public generators: one slice, one patient as a `Volume`, a cohort of patients."""
from __future__ import annotations

from dataclasses import asdict

import numpy as np

from difflung.data.dataset import Volume
from difflung.phantom.config import PatientParams, PhantomConfig, child_rng
from difflung.phantom.patient import sample_patient
from difflung.phantom.render import render_at_key, render_slice, slice_positions


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
        hu[k], lab[k] = render_at_key(patient, float(z), int(key), config)
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
    return [phantom_patient(f"P{i:03d}", child_rng(base, i), config) for i in range(n_patients)]
