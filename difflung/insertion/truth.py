"""Ground truth for lesion insertion from the phantom: the same patient rendered with and without its lesions.

    case = phantom_truth_case("T000", np.random.default_rng(7), PhantomConfig(...))   # truth and base renders
    inserted, region = insert_into_case(case, unet, meta, cfg, torch.Generator().manual_seed(0))
    null, _ = insert_into_case(case, unet, meta, cfg, torch.Generator().manual_seed(0), null=True)
    truth_table(case, inserted, null, region, margin_mm=cfg.margin_mm)               # per class, one row

The phantom draws a patient (`sample_patient`: anatomy, trees, lesions, each from its own seeded stream) and
renders each slice from one key (`render_at_key`: lobular texture, micro vessels and CT noise from the slice's
stream, lesion textures from streams of their own). Rendering the same patient with its lesion lists emptied and
the same keys gives the scan that patient would have without lesions: the same anatomy, vessels and noise voxel
for voxel, the lesions' own pixels aside. Inserting the rendered lesion labels into that lesion-free render and
comparing inside the lesions with the render that has them is a comparison against truth, not against a
distribution. A null insertion (the same region repainted with no lesion label) gives the seam score's floor;
the truth render's own seam score is the natural lesion edge.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
from scipy.stats import wasserstein_distance

from difflung import labels as L
from difflung.data.dataset import Volume
from difflung.insertion import checks as C
from difflung.insertion.region import edit_region

LAA_HU = -950.0  # emphysema's clinical cut-off: the low-attenuation area below -950 HU (LAA-950)


@dataclass
class TruthCase:
    truth: Volume  # the patient rendered with its lesions (what `phantom_patient` returns for the same stream)
    base: Volume  # the same patient, the same slice keys, no lesions
    lesions: np.ndarray  # (z, y, x) uint8: the truth render's pathology labels (0 elsewhere)
    lung: np.ndarray  # (z, y, x) bool: the base render's lung field (lung and airway)


def phantom_truth_case(patient_id: str, rng: np.random.Generator, config) -> TruthCase:
    """One phantom patient rendered with and without its lesions (module docstring).

    Args:
        patient_id: stored in both volumes.
        rng: the only source of randomness, drawn exactly as `phantom_patient(patient_id, rng, config)` draws it,
            so `truth` equals that call's volume.
        config: `PhantomConfig` (size, slices, slice thickness, pathology knobs).
    """
    from dataclasses import asdict

    from difflung.phantom.patient import sample_patient
    from difflung.phantom.render import render_at_key, slice_positions

    patient = sample_patient(rng, config)
    zs, dz = slice_positions(patient, config)
    keys = rng.integers(0, 2 ** 62, size=len(zs))
    bare = replace(patient, lesions={k: [] for k in patient.lesions})
    vols = []
    for p in (patient, bare):
        S = int(config.size)
        hu, lab = np.empty((len(zs), S, S), np.float32), np.empty((len(zs), S, S), np.uint8)
        for k, (z, key) in enumerate(zip(zs, keys)):
            hu[k], lab[k] = render_at_key(p, float(z), int(key), config)
        meta = {"z": [round(float(z), 6) for z in zs], "config": asdict(config), **p.summary()}
        vols.append(Volume(patient_id, hu, lab, (float(dz), config.pixel_mm, config.pixel_mm), source="phantom",
                           meta=meta))
    truth, base = vols
    lesions = np.where(np.isin(truth.labels, L.PATHOLOGY_IDS), truth.labels, 0).astype(np.uint8)
    return TruthCase(truth, base, lesions, np.isin(base.labels, L.LUNG_IDS))


def crop_z(case: TruthCase, start: int, stop: int) -> TruthCase:
    """The slices start:stop of a case (both renders, lesions and lung field): a slab of the same patient."""
    def vol(v: Volume) -> Volume:
        meta = {**v.meta, "z": v.meta["z"][start:stop]}
        return Volume(v.patient, v.hu[start:stop], v.labels[start:stop], v.spacing, source=v.source, meta=meta)

    return TruthCase(vol(case.truth), vol(case.base), case.lesions[start:stop], case.lung[start:stop])


def densest_slab(mask: np.ndarray, n: int) -> tuple[int, int]:
    """(start, stop) of the n consecutive slices holding most of `mask` (z, y, x)."""
    per = np.asarray(mask).reshape(len(mask), -1).sum(axis=1)
    n = min(int(n), len(per))
    sums = np.convolve(per, np.ones(n, dtype=np.int64), mode="valid")
    start = int(np.argmax(sums))
    return start, start + n


def insert_into_case(case: TruthCase, unet, meta: dict, cfg, generator, *, null: bool = False,
                     device=None) -> tuple[np.ndarray, np.ndarray]:
    """Paint the truth's lesion labels into the lesion-free render, as `insert_lesions` paints a scan.

    Args:
        case: `phantom_truth_case`; unet, meta: the patch model (its spacing must be `cfg.spacing_mm`).
        cfg: `InsertConfig`; generator: CPU torch.Generator, the sampler's only noise.
        null: repaint the same region with no lesion label (the base labels as condition): the null insertion.
    Returns (float32 HU of the edited base render, the edit region (z, y, x) bool).
    """
    from difflung.insertion.painting import paint

    sp = case.base.spacing
    region = edit_region(case.lesions, case.lung, sp, cfg.margin_mm)
    labels = case.base.labels if null else np.where(case.lesions > 0, case.lesions, case.base.labels)
    hu, _ = paint(case.base.hu, labels, region, sp, unet, meta, cfg, generator, device=device)
    return hu, region


def _seam(case: TruthCase, after: np.ndarray, region: np.ndarray, cls: int, margin_mm: float) -> float:
    ins = C.Insertion(L.BY_ID[cls].name, case.base.hu, after, case.lesions, region, case.lung,
                      tuple(float(s) for s in case.base.spacing), {"config": {"margin_mm": margin_mm}})
    return C.seam_scores(ins, cls)["seam_after"]


def truth_row(case: TruthCase, inserted: np.ndarray, null: np.ndarray, region: np.ndarray, cls: int, *,
              margin_mm: float) -> dict:
    """The comparisons of one class inside its lesions (see `truth_table`)."""
    m, sp, t = case.lesions == cls, case.base.spacing, case.truth.hu
    return {
        "class": L.BY_ID[cls].name, "voxels": int(m.sum()),
        "w1_to_truth": float(wasserstein_distance(inserted[m], t[m])),
        "w1_base_to_truth": float(wasserstein_distance(case.base.hu[m], t[m])),
        "mean_hu_inserted": float(inserted[m].mean()), "mean_hu_truth": float(t[m].mean()),
        "laa950_inserted": float(100.0 * (inserted[m] < LAA_HU).mean()),
        "laa950_truth": float(100.0 * (t[m] < LAA_HU).mean()),
        "spread_inserted": C.texture_spread(inserted, m, sp), "spread_truth": C.texture_spread(t, m, sp),
        "zcont_inserted": C.z_continuity(inserted, m, sp), "zcont_truth": C.z_continuity(t, m, sp),
        "seam_inserted": _seam(case, inserted, region, cls, margin_mm),
        "seam_null": _seam(case, null, region, cls, margin_mm),
        "seam_truth": _seam(case, t, region, cls, margin_mm),
    }


def truth_table(case: TruthCase, inserted: np.ndarray, null: np.ndarray, region: np.ndarray, *,
                margin_mm: float) -> pd.DataFrame:
    """Per lesion class of the case, inserted against rendered truth inside the lesions (index: class name).

    Columns: voxels; HU Wasserstein-1 to truth (and, as the do-nothing reference, of the lesion-free render);
    mean HU and LAA-950 (% of voxels below -950 HU) inserted / truth; texture spread (`checks.texture_spread`)
    and z-continuity (`checks.z_continuity`) inserted / truth; seam scores (`checks.seam_scores`, after) of the
    insertion, of the null insertion (`null`: the reference a lesion edge should rise above) and of the truth
    render (the natural lesion edge).
    Args:
        case: `phantom_truth_case`; inserted, null: `insert_into_case` results (normal and null); region: the
        edit region both used; margin_mm: its margin.
    """
    rows = [truth_row(case, inserted, null, region, int(c), margin_mm=margin_mm)
            for c in np.unique(case.lesions) if c]
    return pd.DataFrame(rows).set_index("class") if rows else pd.DataFrame()
