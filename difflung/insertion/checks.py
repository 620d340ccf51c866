"""Checks of lesions inserted into a real CT (`difflung.insertion.insert`), computed from the files a run wrote.

    ins = read_insertion(ct, summary)                  # before / after HU, the lesion labels, the edit region
    outside_differences(ins)                           # voxels changed outside the edit region: must be 0
    seam_scores(ins)                                   # |grad HU| on the region's boundary / in healthy lung
    lesion_hu_w1(ins, phantom_hu)                      # inserted lesion HU against the phantom's, Wasserstein-1
    check_table(ins, phantom, seed=0)                  # the three checks per inserted class, one table
    z_continuity(ins.after, ins.lesions == c, ins.spacing)  # texture correlation of adjacent slices in a mask
    z_continuity_of(volumes, cls)                      # the same on the phantom's lesions, or real lung (cls=2)
    coronal_row(ins.lesions, c)                        # the coronal plane through most of a class's lesions
    judge_table(run_dir, ins, steps=..., seed=0)       # a judge at the patch scale on windows around the lesions
    cost_table(summary, train_seconds)                 # what the run cost, per lesion and per UNet call
    write_outputs(run_dir, checks, cost, summary, model="insert-patch", seed=0)  # metrics.csv + cost.json

The edit region is recomputed from the written lesion labels and the CT's own anatomy exactly as insertion
defines it (`difflung.insertion.region.edit_region`), so the first check does not trust the insertion's own count.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from scipy.stats import wasserstein_distance

from difflung import labels as L


@dataclass
class Insertion:
    cls: str  # the inserted class
    before: np.ndarray  # (z, y, x) float32 HU of the input CT (LPI, as difflung reads it)
    after: np.ndarray  # (z, y, x) float32 HU of the edited CT
    lesions: np.ndarray  # (z, y, x) uint8 project ids of the inserted lesions
    region: np.ndarray  # (z, y, x) bool: the voxels insertion may change
    lung: np.ndarray  # (z, y, x) bool: the CT's lung field (classical anatomy of the input)
    spacing: tuple  # (z, y, x) mm
    summary: dict  # what `insert_lesions` returned


def read_insertion(ct, summary: dict, lung: np.ndarray | None = None) -> Insertion:
    """Read the input CT, the edited CT and the lesion labels named in `summary` (an `insert_lesions` result).

    Args:
        ct: the input CT file; summary: its insertion summary (output, lesions_output, config.margin_mm).
        lung: the input's lung field if already segmented (several insertions into one CT share it).
    """
    from difflung.data.ct_anatomy import segment
    from difflung.data.ctio import read_label, read_volume
    from difflung.insertion.region import edit_region

    vol, out = read_volume(ct), read_volume(summary["output"])
    if out.hu.shape != vol.hu.shape:
        raise ValueError(f"{summary['output']}: shape {out.hu.shape} differs from the input's {vol.hu.shape} ({ct})")
    lesions = read_label(summary["lesions_output"], vol).astype(np.uint8)
    lung = segment(vol.hu, vol.spacing, name=str(ct)).lung if lung is None else lung
    region = edit_region(lesions, lung, vol.spacing, float(summary["config"]["margin_mm"]))
    names = sorted(summary["lesion_ml"])
    return Insertion("+".join(names), vol.hu.astype(np.float32), out.hu.astype(np.float32), lesions, region, lung,
                     tuple(float(s) for s in vol.spacing), summary)


def outside_differences(ins: Insertion) -> int:
    """Voxels outside the edit region whose value differs from the input's, bit for bit (must be 0)."""
    a, b = ins.before[~ins.region], ins.after[~ins.region]
    return int(np.count_nonzero(a.view(np.uint32) != b.view(np.uint32)))


def gradient_magnitude(hu2d: np.ndarray, spacing_yx) -> np.ndarray:
    """|grad HU| in HU/mm of one slice (Sobel, normalised to a central difference)."""
    gy = ndi.sobel(hu2d, axis=0, mode="nearest") / (8.0 * spacing_yx[0])
    gx = ndi.sobel(hu2d, axis=1, mode="nearest") / (8.0 * spacing_yx[1])
    return np.hypot(gy, gx)


def seam_scores(ins: Insertion, cls: int | None = None, ring_px: int = 1, clear_px: int = 4) -> dict[str, float]:
    """The seam check: mean |grad HU| on the edit region's boundary over that in healthy lung of the same slices.

    The boundary is the ring of pixels within `ring_px` of the region's edge on either side; healthy lung is
    the lung field minus lesions, further than `clear_px` from the region. Computed on the edited CT ("after")
    and, on the same pixels, on the input ("before"): a seam shows as `after` clearly above `before`.
    `cls`: only the region around that class's lesions (within the margin plus a pixel).
    Returns {"seam_after", "seam_before"} (ratios; 1: the boundary is as rough as healthy lung).
    """
    sp = ins.spacing[1:]
    region = ins.region
    if cls is not None:
        grow = int(np.ceil(float(ins.summary["config"]["margin_mm"]) / min(sp))) + 1
        region = region & ndi.binary_dilation(ins.lesions == cls, structure=np.ones((1, 3, 3), bool),
                                              iterations=grow)
    ring_all, ref_all, g_after, g_before = [], [], [], []
    for k in np.flatnonzero(region.any(axis=(1, 2))):
        reg = region[k]
        ring = ndi.binary_dilation(reg, iterations=ring_px) & ~ndi.binary_erosion(reg, iterations=ring_px)
        ring &= ins.lung[k]
        ref = ins.lung[k] & (ins.lesions[k] == 0) & ~ndi.binary_dilation(reg, iterations=clear_px)
        if ring.any() and ref.any():
            ring_all.append(ring)
            ref_all.append(ref)
            g_after.append(gradient_magnitude(ins.after[k], sp))
            g_before.append(gradient_magnitude(ins.before[k], sp))
    if not ring_all:
        return {"seam_after": float("nan"), "seam_before": float("nan")}

    def ratio(grads):
        on = np.concatenate([g[r] for g, r in zip(grads, ring_all)])
        off = np.concatenate([g[r] for g, r in zip(grads, ref_all)])
        return float(on.mean() / off.mean())

    return {"seam_after": ratio(g_after), "seam_before": ratio(g_before)}


# ---------------------------------------------------------------------------------------------------------------
# texture and its continuity in z

TEXTURE_SIGMA_MM = 3.0  # in-plane local mean removed from HU before texture statistics (Gaussian sigma, mm)


def texture(hu: np.ndarray, spacing, sigma_mm: float = TEXTURE_SIGMA_MM) -> np.ndarray:
    """HU minus its in-plane local mean (each slice on its own, so no correlation in z is made by the filter).

    Args:
        hu: (z, y, x) HU; spacing: (z, y, x) mm; sigma_mm: the local mean's Gaussian sigma.
    """
    hu = np.asarray(hu, dtype=np.float32)
    return hu - ndi.gaussian_filter(hu, (0.0, sigma_mm / spacing[1], sigma_mm / spacing[2]), mode="nearest")


def z_pairs(hu: np.ndarray, mask: np.ndarray, spacing, sigma_mm: float = TEXTURE_SIGMA_MM):
    """Texture values (a, b) of voxel pairs (k, y, x), (k + 1, y, x) that are both in `mask`."""
    tex, mask = texture(hu, spacing, sigma_mm), np.asarray(mask, bool)
    both = mask[:-1] & mask[1:]
    return tex[:-1][both], tex[1:][both]


def _corr(a: np.ndarray, b: np.ndarray, min_pairs: int) -> float:
    if a.size < min_pairs or a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a.astype(np.float64), b.astype(np.float64))[0, 1])


def z_continuity(hu: np.ndarray, mask: np.ndarray, spacing, *, sigma_mm: float = TEXTURE_SIGMA_MM,
                 min_pairs: int = 20) -> float:
    """Continuity in z of the texture inside `mask`: the Pearson correlation of `texture` between adjacent slices
    over voxel pairs both in the mask (1: the same texture on every slice, 0: independent slices). NaN with
    fewer than `min_pairs` pairs. Depends on the slice spacing: compare volumes at the same spacing.

    Args:
        hu: (z, y, x) HU; mask: (z, y, x) bool (e.g. the inserted lesions); spacing: (z, y, x) mm.
    """
    return _corr(*z_pairs(hu, mask, spacing, sigma_mm), min_pairs)


def z_continuity_of(volumes, cls: int, *, sigma_mm: float = TEXTURE_SIGMA_MM, min_pairs: int = 20) -> float:
    """`z_continuity` pooled over the voxel pairs of class `cls` in several volumes (`Volume`: hu, labels,
    spacing): the phantom's own lesions of a class, or real lung (`L.LUNG` of prepared real scans)."""
    pairs = [z_pairs(v.hu, v.labels == cls, v.spacing, sigma_mm) for v in volumes]
    if not pairs:
        return float("nan")
    return _corr(np.concatenate([a for a, _ in pairs]), np.concatenate([b for _, b in pairs]), min_pairs)


def texture_spread(hu: np.ndarray, mask: np.ndarray, spacing, sigma_mm: float = TEXTURE_SIGMA_MM) -> float:
    """Standard deviation (HU) of `texture` inside `mask`: how rough the texture is, whatever its mean."""
    t = texture(hu, spacing, sigma_mm)[np.asarray(mask, bool)]
    return float(t.std()) if t.size else float("nan")


def phantom_lesion_hu(volumes, cls: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """Up to `n` HU values drawn (without replacement) from the phantom volumes' voxels of class `cls`."""
    hu = np.concatenate([v.hu[v.labels == cls].ravel() for v in volumes]).astype(np.float32)
    return hu if hu.size <= n else rng.choice(hu, n, replace=False)


def lesion_hu_w1(ins: Insertion, phantom_hu: dict[int, np.ndarray]) -> list[dict]:
    """Per inserted class: Wasserstein-1 (HU) of its voxels' HU against the phantom's lesions of that class,
    after insertion and, as the reference, before it (the same voxels of the input: healthy lung)."""
    rows = []
    for c in (int(v) for v in np.unique(ins.lesions) if v):
        m, ref = ins.lesions == c, phantom_hu[c]
        rows.append({"class": L.BY_ID[c].name, "w1_after": float(wasserstein_distance(ins.after[m], ref)),
                     "w1_before": float(wasserstein_distance(ins.before[m], ref)),
                     "mean_hu_after": float(ins.after[m].mean()), "mean_hu_before": float(ins.before[m].mean()),
                     "mean_hu_phantom": float(ref.mean()), "voxels": int(m.sum())})
    return rows


def show_slice(ins: Insertion, cls: int) -> int:
    """The slice with the most inserted voxels of class `cls`."""
    return int(np.argmax((ins.lesions == cls).sum(axis=(1, 2))))


def coronal_row(lesions: np.ndarray, cls: int) -> int:
    """The coronal plane (row y of the (z, y, x) volume) through the most voxels of class `cls`: show
    `volume[:, y, :]` (with the z spacing as aspect) to see lesions span slices."""
    return int(np.argmax((np.asarray(lesions) == cls).sum(axis=(0, 2))))


def crop_box(mask2d: np.ndarray, spacing_yx, half_mm: float = 40.0) -> tuple[slice, slice]:
    """A square window of +-half_mm around the centre of `mask2d`'s pixels, clipped to the slice."""
    ys, xs = np.nonzero(mask2d)
    cy, cx = (int(ys.mean()), int(xs.mean())) if ys.size else (mask2d.shape[0] // 2, mask2d.shape[1] // 2)
    hy, hx = int(half_mm / spacing_yx[0]), int(half_mm / spacing_yx[1])
    y0, x0 = max(cy - hy, 0), max(cx - hx, 0)
    return slice(y0, min(y0 + 2 * hy, mask2d.shape[0])), slice(x0, min(x0 + 2 * hx, mask2d.shape[1]))


# ---------------------------------------------------------------------------------------------------------------
# the judge at the patch scale

def lesion_windows(ins: Insertion, size: int, out_mm: float):
    """Windows of the patch grid centred on each inserted lesion (one per connected piece per slice).

    Returns (after (n, S, S), before (n, S, S), both windowed to [-1, 1]; labels (n, S, S) uint8 lesion ids).
    """
    from difflung.data.dataset import window
    from difflung.insertion.patches import sample_plane

    sp, after, before, labs = ins.spacing[1:], [], [], []
    for k in np.flatnonzero(ins.lesions.any(axis=(1, 2))):
        comp, n = ndi.label(ins.lesions[k] > 0, structure=np.ones((3, 3), bool))
        for c in ndi.center_of_mass(comp > 0, comp, range(1, n + 1)):
            after.append(window(sample_plane(ins.after[k], c, sp, size, out_mm)))
            before.append(window(sample_plane(ins.before[k], c, sp, size, out_mm)))
            labs.append(sample_plane(ins.lesions[k], c, sp, size, out_mm, order=0, cval=0))
    return np.stack(after), np.stack(before), np.stack(labs).astype(np.uint8)


def judge_lesion_dice(seg, ins: Insertion, test, size: int, out_mm: float) -> list[dict]:
    """Per inserted class: the patch-scale judge's mean Dice on windows of the edited scan (after) and of the
    input at the same places (before: what it finds without the insertion), and its floor check, its mean Dice
    on the patch dataset's test split (`test`: Slices) for that class."""
    from difflung.judging.metrics import dice_per_class

    after, before, labs = lesion_windows(ins, size, out_mm)
    rows = []
    for c in (int(v) for v in np.unique(ins.lesions) if v):
        has = (labs == c).any(axis=(1, 2))
        d_after = dice_per_class(seg.predict(after[has]), labs[has], [c])["dice"]
        d_before = dice_per_class(seg.predict(before[has]), labs[has], [c])["dice"]
        on_test = dice_per_class(seg.predict(test.images), test.labels, [c])["dice"]
        rows.append({"class": L.BY_ID[c].name, "judge_dice_after": float(np.nanmean(d_after)),
                     "judge_dice_before": float(np.nanmean(d_before)),
                     "judge_dice_phantom_test": float(np.nanmean(on_test)) if on_test.notna().any() else np.nan,
                     "judge_windows": int(has.sum())})
    return rows


def judge_table(run_dir, ins: Insertion, *, steps: int, seed: int, device: str = "auto") -> pd.DataFrame | None:
    """The judge at the patch scale (`scoring.judge` trained on the patch dataset `<run_dir>/patches`, saved to
    `<run_dir>/patch_judge`) on windows around the inserted lesions, after and before insertion, with its own
    Dice on phantom test patches against its floor (`judge_valid`). None when `steps` is 0 (not measured)."""
    from difflung.data.dataset import Dataset
    from difflung.judging.instruments import judge_floor
    from difflung.diffusion.patch_model import dataset_spacing
    from difflung.judging.scoring import judge

    if not steps:
        return None
    ds = Dataset(Path(run_dir) / "patches")
    seg = judge(ds, Path(run_dir) / "patch_judge", steps=steps, seed=seed, device=device)
    df = pd.DataFrame(judge_lesion_dice(seg, ins, ds.split("test"), ds.size, dataset_spacing(ds)))
    df["judge_valid"] = [bool(v >= judge_floor(c)) for c, v in zip(df["class"], df["judge_dice_phantom_test"])]
    return df.set_index("class")


# ---------------------------------------------------------------------------------------------------------------
# one table per run: checks, cost, and the files that keep them

def check_table(ins: Insertion, phantom, *, seed: int, per_class: int = 20000) -> pd.DataFrame:
    """Per inserted class: HU Wasserstein-1 to `per_class` seeded phantom lesion voxels after/before, seam scores,
    and the voxels changed outside the edit region (one count for the scan, repeated per row)."""
    ids = [int(c) for c in np.unique(ins.lesions) if c]
    rng = np.random.default_rng(seed)
    rows = lesion_hu_w1(ins, {c: phantom_lesion_hu(phantom, c, per_class, rng) for c in ids})
    for r, c in zip(rows, ids):
        r.update(seam_scores(ins, c), outside_differences=outside_differences(ins))
    return pd.DataFrame(rows).set_index("class")


def cost_table(summary: dict, train_seconds: float) -> pd.DataFrame:
    """The run's costs from an insertion summary (with `seconds_placement`): training, placement, painting, per
    lesion and per UNet call; one column, `value`."""
    st, n = summary["seconds_by_stage"], max(int(summary["lesions"]), 1)
    rows = {"patch model training (s)": train_seconds, "lesion placement (s)": summary["seconds_placement"],
            "insertion, all stages (s)": summary["seconds"], "painting (s)": st["painting"],
            "lesions inserted": summary["lesions"], "windows painted": summary["windows"],
            "UNet calls per window": summary["network_calls_per_window"],
            "seconds per lesion (insertion + placement)": (summary["seconds"] + summary["seconds_placement"]) / n,
            "seconds per lesion (painting)": st["painting"] / n}
    return pd.DataFrame({"value": rows})


COUNTS = {"lesions": "lesions inserted", "windows": "windows painted",
          "network_calls_per_window": "UNet calls per window"}  # metrics.csv key -> `cost_table` row
TIMINGS = {"seconds_per_lesion": "seconds per lesion (insertion + placement)",
           "seconds_per_lesion_painting": "seconds per lesion (painting)",
           "train_seconds": "patch model training (s)"}  # cost.json only: a seeded re-run writes the same metrics


def write_outputs(run_dir, checks: pd.DataFrame, cost: pd.DataFrame, summary: dict, *, model: str, seed: int,
                  judged: pd.DataFrame | None = None) -> pd.DataFrame:
    """metrics.csv (model, metric, class, seed, value; keys only; no timings, so that a seeded CPU run writes the
    same bytes) and cost.json (the timings) in the run folder; returns the metrics rows."""
    from difflung.core.metrics_csv import write_metrics
    from difflung.core.provenance import write_json_atomic

    rows = [{"model": model, "metric": m, "class": c, "seed": seed, "value": float(v)}
            for t in (checks, judged) if t is not None for c, r in t.iterrows() for m, v in r.items()]
    rows += [{"model": model, "metric": "lesion_ml", "class": c, "seed": seed, "value": v}
             for c, v in summary["lesion_ml"].items()]
    rows += [{"model": model, "metric": k, "class": "all", "seed": seed, "value": float(cost.loc[v, "value"])}
             for k, v in COUNTS.items()]
    write_metrics(run_dir, rows)
    write_json_atomic(Path(run_dir) / "cost.json", {
        **{k: float(cost.loc[v, "value"]) for k, v in {**COUNTS, **TIMINGS}.items()},
        "seconds_by_stage": summary["seconds_by_stage"], "seconds_placement": summary["seconds_placement"],
        "device": summary["device"], "config": summary["config"]})
    return pd.DataFrame(rows)
