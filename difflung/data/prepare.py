"""`python -m difflung prepare INPUT --out DIR`: CT volumes -> the dataset artifact (same as the phantom's).

INPUT is one of
    a volume file            case.nii.gz | .nii | .nrrd | .mha | .mhd    (+ --labels LABELFILE)
    a DICOM series folder    holding the files of exactly one series      (+ --labels LABELFILE)
    a folder of cases, either
        flat files           <case>_image.<ext> with <case>_label.<ext> (also _labels, _seg, _mask), or plain
                             volume files without labels (anatomy only); once any volume in the folder has a
                             label file, every image must have one
        one folder per case  <case>/image.<ext> (or <case>/ct.<ext>, or DICOM files) with optional
                             <case>/label.<ext> (or labels/seg/mask); the folder name is the patient id
Labels are the dataset's own values, mapped to project classes by `--classes` (a YAML class map, see
`difflung.data.classmap`, or one class name for every non-zero value). Body, lungs and airway come from
`difflung.data.ct_anatomy`, or, for a single input volume, the lungs (and airway) come from a segmentation tool's
mask (--lung-mask FILE, its values mapped by --lung-mask-classes MAP, e.g. examples/classmaps/lungmask_r231.yml or
totalsegmentator_total_lungs.yml; without a map every non-zero value is lung), checked against the image like a
label file. All cases are read and checked before anything is written; the artifact is written atomically. The
JSON summary goes to stdout, errors to stderr as one line naming the file.
"""
from __future__ import annotations

import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from difflung.progress import show_progress
from difflung import labels as L
from difflung.data.ct_anatomy import Anatomy, AnatomyConfig, AnatomyError, place_lesions, segment, segment_body, \
    split_lungs
from difflung.data.classmap import ClassMap, load_classmap, load_lung_mask_map
from difflung.data.ctio import CTReadError, read_label, read_volume, stem, volume_suffix
from difflung.data.dataset import Dataset, DatasetError, Volume, volumes_to_slices, write_dataset

IMAGE_TAGS = ("_image", "_img", "_ct")
LABEL_TAGS = ("_label", "_labels", "_seg", "_mask")
CASE_IMAGE_NAMES = ("image", "img", "ct")
CASE_LABEL_NAMES = ("label", "labels", "seg", "mask")


@dataclass
class Case:
    image: Path  # volume file or DICOM folder
    label: Path | None
    patient: str | None  # None: from the file (DICOM PatientID or stem)
    lung_mask: Path | None = None  # lungs (+ airway) from a segmentation tool instead of ct_anatomy's


# ---------------------------------------------------------------------------------------------------------------
# finding cases

def _is_dicom_folder(folder: Path) -> bool:
    """True when the folder itself holds files that start with the DICOM magic (not only subfolders)."""
    for f in folder.iterdir():
        if f.is_file() and volume_suffix(f) is None:
            try:
                with open(f, "rb") as fh:
                    head = fh.read(132)
            except OSError:
                continue
            if head[128:132] == b"DICM":
                return True
    return False


def _strip(name: str, tags) -> tuple[str, str | None]:
    for t in tags:
        if name.lower().endswith(t):
            return name[: -len(t)], t
    return name, None


def find_cases(input_path, labels=None) -> list[Case]:
    """Resolve INPUT (+ optional label file) into cases; raise DatasetError naming the path when none fit."""
    p = Path(input_path)
    if not p.exists():
        raise CTReadError(f"{p}: no such file or folder")
    if p.is_file():
        if volume_suffix(p) is None:
            raise CTReadError(f"{p}: unsupported file type {''.join(p.suffixes) or '(no extension)'}; expected "
                              ".nii, .nii.gz, .nrrd, .mha, .mhd, a DICOM series folder or a folder of cases")
        base, tag = _strip(stem(p), IMAGE_TAGS)
        return [Case(p, Path(labels) if labels else None, base if tag else None)]
    if _is_dicom_folder(p):
        return [Case(p, Path(labels) if labels else None, None)]
    if labels:
        raise DatasetError(f"{p}: --labels applies to a single volume or DICOM series; in a folder of cases put "
                           "each label file beside its image (<case>_label.<ext> or <case>/label.<ext>)")
    cases = _flat_cases(p) + _folder_cases(p)
    if not cases:
        raise DatasetError(f"{p}: no CT found here (empty folder, or no .nii/.nii.gz/.nrrd/.mha/.mhd volumes, "
                           "DICOM series or case folders)")
    names = {}
    for c in cases:
        key = c.patient or stem(c.image)
        if key in names:
            raise DatasetError(f"{c.image}: patient id {key!r} is used twice (also {names[key]})")
        names[key] = c.image
    return cases


def _flat_cases(folder: Path) -> list[Case]:
    files = sorted(f for f in folder.iterdir() if f.is_file() and volume_suffix(f))
    label_files = {}
    for f in files:
        base, tag = _strip(stem(f), LABEL_TAGS)
        if tag:
            label_files[base] = f
    images = [f for f in files if _strip(stem(f), LABEL_TAGS)[1] is None]
    cases, used = [], set()
    for f in images:
        base, tag = _strip(stem(f), IMAGE_TAGS)
        key = base if base in label_files else stem(f)
        lab = label_files.get(key)
        if lab is None and label_files:
            raise DatasetError(f"{f}: no label file for this image (expected {base}_label{volume_suffix(f)}, or "
                               "_labels/_seg/_mask, beside it); other images in this folder have one")
        used.add(key)
        cases.append(Case(f, lab, base if tag else None))
    for base in sorted(set(label_files) - used):
        raise DatasetError(f"{label_files[base]}: label file without an image (expected {base}_image"
                           f"{volume_suffix(label_files[base])} beside it)")
    return cases


def _folder_cases(folder: Path) -> list[Case]:
    cases = []
    for d in sorted(x for x in folder.iterdir() if x.is_dir() and not x.name.startswith(".")):
        vols = sorted(f for f in d.iterdir() if f.is_file() and volume_suffix(f))
        img = next((f for f in vols if stem(f).lower() in CASE_IMAGE_NAMES), None)
        lab = next((f for f in vols if stem(f).lower() in CASE_LABEL_NAMES), None)
        if img is None and _is_dicom_folder(d):
            img = d
        if img is None:
            if vols or any(d.iterdir()):
                raise DatasetError(f"{d}: case folder without an image (expected image.<ext>, ct.<ext> or DICOM "
                                   f"files; found {', '.join(f.name for f in list(d.iterdir())[:5])})")
            continue
        cases.append(Case(img, lab, d.name))
    return cases


# ---------------------------------------------------------------------------------------------------------------
# one case

def mask_anatomy(hu: np.ndarray, spacing, mask: np.ndarray, lung_map: ClassMap, cfg: AnatomyConfig, *,
                 name: str) -> Anatomy:
    """Anatomy whose lungs and airway come from a tool's mask (values mapped by `lung_map`, a lung-mask map of
    `difflung.data.classmap.load_lung_mask_map`); the body is still segmented classically (`segment_body`).

    Sides: from the map when it gives every lung value one (lungmask's 1 = right, 2 = left; TotalSegmentator's
    lobes), else split like the classical segmentation (`split_lungs`). Raises AnatomyError naming `name` when
    the mask holds no lung.
    """
    ids = lung_map.apply(mask, name)
    lung, airway = ids == L.LUNG, ids == L.AIRWAY
    if not lung.any():
        raise AnatomyError(f"{name}: no lung voxels (values {[int(v) for v in np.unique(mask)][:10]}; class map "
                           f"{lung_map.source} maps {sorted(k for k, v in lung_map.labels.items() if v == L.LUNG)} "
                           f"to lung)")
    info = {"lung_mask": name, "warnings": []}
    sided = lung_map.sides
    lung_values = [k for k, v in lung_map.labels.items() if v == L.LUNG]
    if sided and set(lung_values) <= set(sided) and lung_map.extra.get("default") != L.LUNG:
        right = lung & np.isin(mask, [k for k, s in sided.items() if s == "right"])
        left = lung & ~right
        info["split"] = "mask"
    else:
        right, left, split_info = split_lungs(lung, cfg)
        info.update(split_info)
    if not airway.any():
        info["warnings"].append(f"{name}: the lung mask labels no airway; no airway labelled")
    body = segment_body(hu, spacing, cfg) | lung | airway
    return Anatomy(body=body, lung_right=right, lung_left=left, airway=airway,
                   spacing=tuple(float(s) for s in spacing), info=info)


def prepare_volume(case: Case, classmap: ClassMap | None, cfg: AnatomyConfig,
                   lung_map: ClassMap | None = None) -> tuple[Volume, dict]:
    """Read, segment and label one case; returns the project Volume and its summary row (full resolution).
    `lung_map` maps the values of `case.lung_mask` (default: every non-zero value is lung)."""
    vol = read_volume(case.image, patient=case.patient)
    if case.lung_mask is not None:
        anat = mask_anatomy(vol.hu, vol.spacing, read_label(case.lung_mask, vol), lung_map or load_lung_mask_map(),
                            cfg, name=str(case.lung_mask))
    else:
        anat = segment(vol.hu, vol.spacing, cfg, name=str(case.image))
    lesions, placed = None, {}
    if case.label is not None:
        raw = read_label(case.label, vol)
        if classmap is None:
            values = [int(v) for v in np.unique(raw) if v]
            raise DatasetError(f"{case.label}: label values {values} need a class map; pass --classes MAP.yml "
                               "(see examples/classmaps/) or --classes CLASSNAME for one lesion class")
        lesions, placed = place_lesions(anat, classmap.apply(raw, case.label), cfg, name=str(case.label))
    lab = anat.labels(lesions)
    counts = np.bincount(lab.ravel(), minlength=L.NUM_IDS)
    vml = vol.voxel_ml
    lung_slices = np.flatnonzero(np.isin(lab, L.LUNG_IDS).any(axis=(1, 2)))
    vols = anat.volumes_ml()
    row = {
        "patient": vol.patient, "image": str(case.image), "labels": str(case.label) if case.label else None,
        "shape_zyx": list(vol.hu.shape), "spacing_mm": [round(s, 6) for s in vol.spacing],
        "lung_volume_ml": round(float(sum(counts[i] for i in L.LUNG_IDS)) * vml, 1),
        "lung_right_ml": round(vols["lung_right"], 1), "lung_left_ml": round(vols["lung_left"], 1),
        "airway_ml": round(vols["airway"], 1),
        "lung_slices": [int(lung_slices[0]), int(lung_slices[-1])] if lung_slices.size else None,
        "voxel_counts": {L.BY_ID[i].name: int(counts[i]) for i in range(L.NUM_IDS) if counts[i]},
        "warnings": list(anat.info.get("warnings", [])),
    }
    if case.lung_mask is not None:
        row["lung_mask"] = str(case.lung_mask)
    if placed.get("dropped_voxels"):
        row["warnings"].append(f"lesion voxels dropped (far from lung / outside body): {placed['dropped_voxels']}")
    return Volume(patient=vol.patient, hu=vol.hu, labels=lab, spacing=vol.spacing, source=str(case.image)), row


# ---------------------------------------------------------------------------------------------------------------
# the command

def prepare(inputs, out_dir, labels=None, classes=None, size: int = 128, seed: int = 0, *,
            min_lung_fraction: float = 0.01, fractions=(0.6, 0.2, 0.2), anatomy: AnatomyConfig | None = None,
            lung_mask=None, lung_classes=None, progress: bool = False) -> tuple[Dataset, dict]:
    """Prepare CT volumes into a dataset artifact at `out_dir`.

    Args:
        inputs: a volume file, a DICOM series folder, a folder of cases (module docstring), or a list of those.
        out_dir: artifact folder (replaced atomically if it exists).
        labels: label file for a single-volume input.
        classes: class map: YAML path, dict, ClassMap, or a project class name for all non-zero values.
        size: slice size S of the artifact (S x S).
        seed: patient split seed.
        min_lung_fraction: keep slices whose lung field covers at least this fraction.
        fractions: train/val/test patient fractions.
        anatomy: AnatomyConfig for the classical segmentation.
        lung_mask: a segmentation tool's lung mask of a single input volume, used instead of the classical lungs
            and airway (`mask_anatomy`); its shape, spacing and origin must match the image's.
        lung_classes: its class map (YAML path or dict; `difflung.data.classmap.load_lung_mask_map`); None:
            every non-zero value is lung.
    Returns (Dataset, summary dict). Nothing is written unless every case reads, segments and maps cleanly.
    """
    t0 = time.perf_counter()
    cfg = anatomy or AnatomyConfig()
    if int(size) < 8:
        raise DatasetError(f"--size {size}: slices must be at least 8 pixels")
    inputs = inputs if isinstance(inputs, (list, tuple)) else [inputs]
    if labels is not None and len(inputs) != 1:
        raise DatasetError("--labels applies to a single input volume")
    if lung_classes is not None and lung_mask is None:
        raise DatasetError("--lung-mask-classes maps the values of a --lung-mask FILE; give the file")
    cases = [c for i in inputs for c in find_cases(i, labels)]
    if lung_mask is not None:
        if len(cases) != 1:
            raise DatasetError(f"--lung-mask {lung_mask} applies to a single input volume; got {len(cases)} cases")
        cases[0].lung_mask = Path(lung_mask)
    classmap = load_classmap(classes) if classes is not None else None
    lung_map = load_lung_mask_map(lung_classes) if lung_mask is not None else None
    for c in cases:  # cheap checks first: a missing label file fails before minutes of work
        if c.label is not None and not c.label.exists():
            raise CTReadError(f"{c.label}: label file not found (for image {c.image})")
        if c.lung_mask is not None and not c.lung_mask.exists():
            raise CTReadError(f"{c.lung_mask}: lung mask file not found (for image {c.image})")
    rows = []

    def volumes():
        it = cases
        if progress and len(cases) > 1:
            from tqdm import tqdm
            it = tqdm(cases, desc="prepare", unit="case", file=sys.stderr, disable=not show_progress())
        for c in it:
            vol, row = prepare_volume(c, classmap, cfg, lung_map)
            rows.append(row)
            yield vol

    slices, per_patient = volumes_to_slices(volumes(), int(size), min_lung_fraction=min_lung_fraction)
    seen = {}
    for row in rows:  # ids must be unique across inputs: the split is by patient
        if row["patient"] in seen:
            raise DatasetError(f"{row['image']}: patient id {row['patient']!r} is used twice (also {seen[row['patient']]})")
        seen[row["patient"]] = row["image"]
    for row, s in zip(rows, per_patient):
        row["slices_total"], row["slices_kept"] = s["slices_total"], s["slices_kept"]
        if s["slices_kept"] == 0:
            raise DatasetError(f"{row['image']}: no slice with at least {min_lung_fraction:.0%} lung field")
    params = {"inputs": [str(i) for i in inputs], "labels": str(labels) if labels else None, "size": int(size),
              **({"lung_mask": str(lung_mask), "lung_classes": lung_map.as_dict()} if lung_mask is not None else {}),
              "classes": classmap.as_dict() if classmap else None, "anatomy": asdict(cfg),
              "min_lung_fraction": min_lung_fraction, "fractions": list(fractions)}
    ds = write_dataset(out_dir, slices, source="prepare", params=params, seed=seed, fractions=fractions,
                       patients=rows)
    summary = {"out": str(out_dir), "size": int(size), "seed": seed, "classes": L.names(ds.classes),
               "slices": {s: ds.manifest["splits"][s]["n_slices"] for s in ("train", "val", "test")},
               "splits": {s: ds.manifest["splits"][s]["patients"] for s in ("train", "val", "test")},
               "patients": rows, "seconds": round(time.perf_counter() - t0, 2)}
    return ds, summary
