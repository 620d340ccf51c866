"""Preprocessing shared by phantom and real CT, and the on-disk dataset artifact.

A dataset artifact is a folder:
    manifest.json    source, parameters, classes, per-split patients, frequencies, sha256 of every file, provenance
    train.npz, val.npz, test.npz
        images   (N, S, S) float32, HU window [-1000, 400] mapped to [-1, 1]
        labels   (N, S, S) uint8, project label ids (difflung.labels)
        patient  (N,) unicode patient id
        z        (N,) float32 slice position in mm (increasing from apex to base)
Files are written into a temporary folder that is renamed into place only when complete.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from difflung import labels as L
from difflung.core.provenance import atomic_dir, provenance, sha256_file, write_json_atomic

FORMAT = "difflung-dataset/1"
SPLITS = ("train", "val", "test")


class DatasetError(ValueError):
    """Raised for bad input data or a malformed dataset artifact; the message names the file."""


@dataclass
class Volume:
    """One patient's CT in HU with its project label map, axial (z, y, x), z from apex to base."""

    patient: str
    hu: np.ndarray  # (Z, Y, X) float32 HU
    labels: np.ndarray  # (Z, Y, X) uint8 project ids
    spacing: tuple[float, float, float]  # (z, y, x) mm
    source: str = ""
    meta: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.hu.ndim != 3:
            raise DatasetError(f"{self.source or self.patient}: expected a 3D volume (z, y, x), got shape {self.hu.shape}")
        if self.hu.shape != self.labels.shape:
            raise DatasetError(f"{self.source or self.patient}: image shape {self.hu.shape} != label shape {self.labels.shape}")


@dataclass
class Slices:
    """One split of a dataset in memory."""

    images: np.ndarray  # (N, S, S) float32 in [-1, 1]
    labels: np.ndarray  # (N, S, S) uint8
    patient: np.ndarray  # (N,) str
    z: np.ndarray  # (N,) float32 mm

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, idx) -> "Slices":
        return Slices(self.images[idx], self.labels[idx], self.patient[idx], self.z[idx])


# ---------------------------------------------------------------------------------------------------------------
# intensity and geometry

def window(hu, window_hu=L.MODEL_WINDOW) -> np.ndarray:
    """HU -> [-1, 1] float32 on the model window, clipped."""
    lo, hi = window_hu
    x = (np.asarray(hu, dtype=np.float32) - lo) / (hi - lo) * 2.0 - 1.0
    return np.clip(x, -1.0, 1.0).astype(np.float32)


def unwindow(x, window_hu=L.MODEL_WINDOW) -> np.ndarray:
    """[-1, 1] -> HU (the inverse of `window` inside the window)."""
    lo, hi = window_hu
    return ((np.asarray(x, dtype=np.float32) + 1.0) / 2.0 * (hi - lo) + lo).astype(np.float32)


def pad_to_square(img: np.ndarray, fill) -> np.ndarray:
    """Pad the last two axes symmetrically to a square."""
    h, w = img.shape[-2:]
    s = max(h, w)
    pads = [(0, 0)] * (img.ndim - 2) + [((s - h) // 2, s - h - (s - h) // 2), ((s - w) // 2, s - w - (s - w) // 2)]
    return np.pad(img, pads, constant_values=fill)


def resize_slice(hu: np.ndarray, lab: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize one axial slice: bilinear (anti-aliased) for the image, nearest for labels; pads to square first."""
    from skimage.transform import resize

    hu = pad_to_square(hu, L.MODEL_WINDOW[0])
    lab = pad_to_square(lab, L.BACKGROUND)
    if hu.shape[-1] == size:
        return hu.astype(np.float32), lab.astype(np.uint8)
    img = resize(hu, (size, size), order=1, anti_aliasing=hu.shape[-1] > size, preserve_range=True)
    lab = resize(lab, (size, size), order=0, anti_aliasing=False, preserve_range=True)
    return img.astype(np.float32), lab.astype(np.uint8)


def lung_fraction(lab: np.ndarray) -> float:
    return float(np.isin(lab, L.LUNG_IDS).mean())


# ---------------------------------------------------------------------------------------------------------------
# splits and frequencies

def split_patients(patients: Iterable[str], fractions=(0.6, 0.2, 0.2), seed: int = 0,
                   strata: dict[str, set] | None = None) -> dict[str, list[str]]:
    """Deterministic patient-level split: sorted ids shuffled by `seed`, cut by `fractions` (train, val, test).

    With three or more patients every split gets at least one. With `strata` (patient -> the rare classes it
    holds), each class held by at least three patients is placed in every split first, rarest class first, so
    that a small cohort's test split does not miss a rare class by chance.
    """
    ids = sorted(set(patients))
    if not ids:
        raise DatasetError("no patients to split")
    order = np.random.default_rng(seed).permutation(len(ids))
    ids = [ids[i] for i in order]
    n = len(ids)
    n_val = max(1, round(fractions[1] * n)) if n >= 3 else 0
    n_test = max(1, round(fractions[2] * n)) if n >= 3 else (1 if n == 2 else 0)
    room = {"test": n_test, "val": n_val, "train": n - n_val - n_test}
    where: dict[str, str] = {}
    if strata:
        counts: dict = {}
        for p in ids:
            for c in strata.get(p, ()):
                counts[c] = counts.get(c, 0) + 1
        for c in sorted(counts, key=lambda c: (counts[c], c)):  # rarest first
            holders = [p for p in ids if c in strata.get(p, ())]
            if len(holders) < 3:
                continue
            for split in ("test", "val", "train"):
                if room[split] == 0 or any(where.get(p) == split for p in holders):
                    continue
                free = [p for p in holders if p not in where]
                if free:
                    where[free[0]] = split
                    room[split] -= 1
    for p in ids:  # the rest in shuffled order: train first, as without strata
        if p not in where:
            split = next(s for s in ("train", "val", "test") if room[s] > 0)
            where[p] = split
            room[split] -= 1
    return {s: sorted(p for p in ids if where[p] == s) for s in ("train", "val", "test")}


def class_frequencies(lab: np.ndarray, class_ids: Iterable[int]) -> dict[str, dict[str, float]]:
    """Per class: fraction of lung-field pixels (`in_lung`, lung classes only) and of all pixels (`all`)."""
    lab = np.asarray(lab)
    lung = np.isin(lab, L.LUNG_IDS)
    n_lung = max(int(lung.sum()), 1)
    out = {"in_lung": {}, "all": {}}
    for i in class_ids:
        c = L.BY_ID[int(i)]
        count = int((lab == c.id).sum())
        out["all"][c.name] = count / max(lab.size, 1)
        if c.in_lung:
            out["in_lung"][c.name] = count / n_lung
    return out


# ---------------------------------------------------------------------------------------------------------------
# writing and reading the artifact

def volumes_to_slices(volumes: Iterable[Volume], size: int, min_lung_fraction: float = 0.01) -> tuple[Slices, list[dict]]:
    """Slice, window and resize volumes; keep slices whose lung field covers at least `min_lung_fraction`."""
    imgs, labs, pats, zs, summary = [], [], [], [], []
    for v in volumes:
        if not np.isfinite(v.hu).all():
            raise DatasetError(f"{v.source or v.patient}: image contains NaN or infinite voxels")
        kept = 0
        for k in range(v.hu.shape[0]):
            if lung_fraction(v.labels[k]) < min_lung_fraction:
                continue
            img, lab = resize_slice(v.hu[k], v.labels[k], size)
            imgs.append(window(img))
            labs.append(lab)
            pats.append(v.patient)
            zs.append(k * float(v.spacing[0]))
            kept += 1
        summary.append({"patient": v.patient, "source": v.source, "slices_total": int(v.hu.shape[0]),
                        "slices_kept": kept, "spacing_mm": [float(s) for s in v.spacing]})
    if not imgs:
        raise DatasetError("no slice with lung was found in the input volumes")
    return Slices(np.stack(imgs), np.stack(labs), np.array(pats), np.array(zs, dtype=np.float32)), summary


def write_dataset(out_dir, slices: Slices, *, source: str, params: dict, seed: int,
                  fractions=(0.6, 0.2, 0.2), split: dict[str, list[str]] | None = None,
                  patients: list[dict] | None = None) -> "Dataset":
    """Split `slices` by patient and write the artifact atomically to `out_dir`; return it opened."""
    out_dir = Path(out_dir)
    if split is None:  # stratified by the pathology classes each patient holds
        strata = {str(p): set(np.unique(slices.labels[slices.patient == p]).tolist()) & set(L.PATHOLOGY_IDS)
                  for p in np.unique(slices.patient)}
        split = split_patients(slices.patient.tolist(), fractions, seed, strata=strata)
    classes = sorted(int(c) for c in np.unique(slices.labels))
    for c in classes:
        if c not in L.BY_ID:
            raise DatasetError(f"{out_dir}: label value {c} is not a project class")
    manifest = {
        "format": FORMAT, "source": source, "params": params, "seed": seed,
        "size": int(slices.images.shape[-1]), "window_hu": list(L.MODEL_WINDOW),
        "classes": classes, "class_names": L.names(classes), "patients": patients or [], "splits": {},
        "provenance": provenance(config=params, seed=seed),
    }
    with atomic_dir(out_dir) as tmp:
        for name in SPLITS:
            idx = np.flatnonzero(np.isin(slices.patient, split[name]))
            part = slices.subset(idx)
            path = tmp / f"{name}.npz"
            _savez_deterministic(path, images=part.images, labels=part.labels, patient=part.patient.astype(str),
                                 z=part.z)
            manifest["splits"][name] = {
                "file": path.name, "sha256": sha256_file(path), "patients": split[name], "n_slices": int(len(idx)),
                "frequencies": class_frequencies(part.labels, classes),
            }
        write_json_atomic(tmp / "manifest.json", manifest)
    return Dataset(out_dir)


def _savez_deterministic(path, **arrays) -> None:
    """Like np.savez_compressed, but with fixed zip timestamps, so the same arrays give the same bytes (and
    sha256): models downstream are reused, not retrained, when a dataset is rebuilt unchanged."""
    import zipfile

    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name, arr in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as f:
                np.lib.format.write_array(f, np.ascontiguousarray(arr), allow_pickle=False)


class Dataset:
    """A dataset artifact opened for reading (`Dataset(path).split("train")`)."""

    def __init__(self, root):
        self.root = Path(root)
        mpath = self.root / "manifest.json"
        if not mpath.is_file():
            raise FileNotFoundError(f"{mpath}: no dataset manifest here; run the data preparation chapter "
                                    f"(01_data_preparation) or `python -m difflung prepare` first")
        try:
            self.manifest = json.loads(mpath.read_text())
        except json.JSONDecodeError as e:
            raise DatasetError(f"{mpath}: not valid JSON ({e})") from e
        if self.manifest.get("format") != FORMAT:
            raise DatasetError(f"{mpath}: format {self.manifest.get('format')!r}, expected {FORMAT!r}")
        self._cache: dict[str, Slices] = {}

    @property
    def classes(self) -> list[int]:
        return list(self.manifest["classes"])

    @property
    def size(self) -> int:
        return int(self.manifest["size"])

    def frequencies(self, split: str = "train", within: str = "in_lung") -> dict[str, float]:
        return dict(self.manifest["splits"][split]["frequencies"][within])

    def split(self, name: str, verify: bool = True) -> Slices:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        if name not in self._cache:
            info = self.manifest["splits"][name]
            path = self.root / info["file"]
            if verify and sha256_file(path) != info["sha256"]:
                raise DatasetError(f"{path}: sha256 differs from the manifest; the file was changed or truncated")
            with np.load(path, allow_pickle=False) as z:
                self._cache[name] = Slices(z["images"], z["labels"], z["patient"], z["z"])
        return self._cache[name]

    def __repr__(self) -> str:
        n = {s: self.manifest["splits"][s]["n_slices"] for s in SPLITS}
        return f"Dataset({str(self.root)!r}, size={self.size}, classes={L.names(self.classes)}, slices={n})"
