"""A synthetic training set on disk (`python -m difflung generate`): a trained Diff-Lung model paints a dataset's
own masks, or new masks with the rare classes boosted as chapter 5 does, and the pairs are written for other tools.

    <out>/images/syn_00000.nii.gz     HU (float32), one axial slice, the pixel spacing of the slice it came from
    <out>/labels/syn_00000.nii.gz     uint8 project ids (`difflung.labels`), same geometry
    <out>/generated.json              model, dataset (split sha256 from its manifest), masks, sampler, steps, one
                                      seed per image, per-class pixel counts, seconds, provenance

The slices use the one-slice NIfTI layout of the nnU-Net export (`difflung.data.nnunet.write_slice_nifti`), so
`python -m difflung export-nnunet --synthetic <out>` takes the folder as it is. Image i is sampled from mask i
with its own generator seeded `seed + i`: it does not depend on the other masks or the batch size. Everything is
checked and sampled before anything is written; the folder appears atomically.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from difflung import labels as L
from difflung.progress import show_progress
from difflung.core.provenance import atomic_dir, provenance, resolve_device, sha256_file, write_json_atomic
from difflung.data.dataset import Dataset, unwindow
from difflung.data.nnunet import GENERATED_FILE, GENERATED_FORMAT, write_slice_nifti

BOOST_DEFAULT = 0.15  # chapter 5's target share of the lung field per boosted class (the profiles' `boost`)
IMAGES, LABELS = "images", "labels"


class GenerateError(ValueError):
    """Bad input to `generate_set`; the message names the folder, file or argument and the problem."""


def slice_spacing(ds: Dataset) -> dict[str, tuple[float, float]]:
    """In-plane pixel spacing (row, column) in mm of each patient's slices in the artifact.

    A slice of an (h, w) volume at spacing (sy, sx) is padded to max(h, w) pixels square and resized to the
    artifact's size S, so its pixels are (sy, sx) * max(h, w) / S. The volume's in-plane pixel count comes from
    the patient row (`prepare` records `shape_zyx`), the phantom's rendering size, or else is S (the toy data's
    volumes are drawn at the artifact's size).
    """
    fallback = (ds.manifest.get("params", {}).get("phantom_config") or {}).get("size") or ds.size
    out = {}
    for row in ds.manifest.get("patients", []):
        n_px = max(row["shape_zyx"][1:]) if row.get("shape_zyx") else fallback
        if not n_px or not row.get("spacing_mm"):
            raise GenerateError(f"{ds.root / 'manifest.json'}: patient {row.get('patient')!r} lacks the volume "
                                f"size or spacing needed for the slices' pixel spacing; prepare the dataset again")
        sy, sx = (float(s) for s in row["spacing_mm"][1:])
        out[str(row["patient"])] = (sy * n_px / ds.size, sx * n_px / ds.size)
    return out


def boost_targets(classes, boost: float = BOOST_DEFAULT, boost_classes=None) -> dict[str, float]:
    """Class name -> target share of the lung field for mask synthesis: `boost_classes` (names or ids), default
    chapter 5's rare classes (`difflung.augment.experiment.rare_ids`). Refuses unknown classes and classes the
    dataset does not hold."""
    from difflung.augment.arms import rare_ids

    if boost_classes:
        ids = [L.class_id(c) for c in boost_classes]  # ValueError naming an unknown class
        absent = [L.BY_ID[c].name for c in ids if c not in classes]
        if absent:
            raise GenerateError(f"boost classes {absent}: not in the dataset (it holds {', '.join(L.names(classes))})")
    else:
        ids = rare_ids(classes)
        if not ids:
            raise GenerateError(f"the dataset holds no in-lung pathology class to boost "
                                f"({', '.join(L.names(classes))})")
    return {L.BY_ID[c].name: float(boost) for c in ids}


def generate_set(model_dir, dataset, out_dir, *, split: str = "train", synthesize: int | None = None,
                 boost: float = BOOST_DEFAULT, boost_classes=None, sampler: str = "dpm", steps: int | None = None,
                 seed: int = 0, batch_size: int = 16, device: str = "auto", overwrite: bool = False,
                 progress: bool = False) -> dict:
    """Paint masks with a trained Diff-Lung model and write the pairs to `out_dir` (module docstring).

    Args:
        model_dir: a diffusion model folder (`difflung.diffusion.train_diffusion`, `python -m difflung train`).
        dataset: the dataset artifact it was trained on (same classes and size).
        out_dir: the folder to write; refused if it exists unless `overwrite`.
        split: the split whose masks are painted, or (with `synthesize`) whose masks new ones are built on.
        synthesize: None: paint the split's masks; N: paint N new masks from `difflung.data.masksynth`.
        boost, boost_classes: mask synthesis targets (`boost_targets`).
        sampler, steps: the diffusion sampler and its steps (None: the sampler's default).
        seed: mask synthesis draws from `numpy.random.default_rng(seed)`; image i from torch seed `seed + i`.
        batch_size: masks per forward batch.
        device: "auto", "cpu" or "cuda".
        overwrite: replace an existing `out_dir` (atomically).
        progress: a progress bar over the sampling batches.
    Returns the generated.json dict. Nothing is written unless every check passes and every image is sampled.
    """
    import torch

    from difflung.augment.synthetic import synthesize_masks
    from difflung.diffusion.sample import DEFAULT_STEPS
    from difflung.generators import DIFFUSION, folder_kind, load_generator

    t0 = time.perf_counter()
    out_dir, model_dir = Path(out_dir), Path(model_dir)
    if out_dir.exists() and not overwrite:
        raise GenerateError(f"{out_dir}: exists; pass overwrite=True (CLI: --overwrite) to replace it")
    ds = Dataset(dataset)  # FileNotFoundError naming manifest.json
    if folder_kind(model_dir) != DIFFUSION:
        raise GenerateError(f"{model_dir}: holds a GAN; generate takes a Diff-Lung (diffusion) model folder")
    if sampler not in DEFAULT_STEPS:
        raise GenerateError(f"sampler {sampler!r}: expected one of {sorted(DEFAULT_STEPS)}")
    if synthesize is not None and int(synthesize) < 1:
        raise GenerateError(f"synthesize={synthesize}: give at least one mask")
    dev = resolve_device(device)
    # ModelLoadError when the model was trained on another label set or size than the dataset
    painter = load_generator(model_dir, device=dev, sampler=sampler, sampler_steps=steps, dataset=ds)
    part = ds.split(split)
    spacing_of = slice_spacing(ds)
    if synthesize is None:
        masks, source, targets = part.labels, np.arange(len(part)), None
    else:
        targets = boost_targets(ds.classes, boost, boost_classes)
        rare = [L.class_id(c) for c in targets]
        try:
            ms = synthesize_masks(part, ds.classes, rare, int(synthesize), seed, boost)
        except ValueError as e:
            raise GenerateError(f"{ds.root}: cannot synthesise masks from split {split!r} ({e})") from e
        masks, source = ms.labels, ms.source_index
    if len(masks) == 0:
        raise GenerateError(f"{ds.root}: split {split!r} holds no slice to paint")
    seeds = [int(seed) + i for i in range(len(masks))]
    t_sample = time.perf_counter()
    images = painter.sample(masks, generator=[torch.Generator().manual_seed(s) for s in seeds],
                            batch_size=batch_size, progress=show_progress(progress))
    sample_s = time.perf_counter() - t_sample

    rows, counts = [], np.zeros(256, np.int64)
    for i, (lab, src) in enumerate(zip(masks, source)):
        patient = str(part.patient[src])
        c = np.bincount(lab.ravel(), minlength=256)
        counts += c
        rows.append({"case": f"syn_{i:05d}", "image": f"{IMAGES}/syn_{i:05d}.nii.gz",
                     "label": f"{LABELS}/syn_{i:05d}.nii.gz", "seed": seeds[i], "source_slice": int(src),
                     "patient": patient, "spacing_mm": list(spacing_of[patient]),
                     "pixel_counts": {L.BY_ID[k].name: int(c[k]) for k in np.flatnonzero(c)}})
    info = ds.manifest["splits"][split]
    meta = {
        "format": GENERATED_FORMAT,
        "model": {"path": str(model_dir), "key": painter.key, "classes": painter.classes, "size": painter.size,
                  "config_sha256": sha256_file(model_dir / "difflung_config.json")},
        "dataset": {"path": str(ds.root), "split": split, "sha256": info["sha256"], "source": ds.manifest.get("source"),
                    "split_sha256": {s: v["sha256"] for s, v in ds.manifest["splits"].items()}},
        "masks": "dataset" if synthesize is None else "synthesized",
        "boost": targets, "sampler": sampler, "steps": painter.sampler_steps or DEFAULT_STEPS[sampler],
        "seed": int(seed), "seeds": seeds, "n": len(masks), "classes": L.names(ds.classes),
        "pixel_counts": {L.BY_ID[k].name: int(counts[k]) for k in np.flatnonzero(counts)},
        "sampling_seconds": round(sample_s, 3),
        "images": rows,
        "provenance": provenance(config={"model": str(model_dir), "dataset": str(ds.root), "split": split,
                                         "synthesize": synthesize, "boost": targets, "sampler": sampler,
                                         "steps": steps}, seed=seed, device=dev),
    }
    hu = unwindow(images).astype(np.float32)
    with atomic_dir(out_dir) as tmp:
        (tmp / IMAGES).mkdir()
        (tmp / LABELS).mkdir()
        for i, row in enumerate(rows):
            write_slice_nifti(tmp / row["image"], hu[i], tuple(row["spacing_mm"]))
            write_slice_nifti(tmp / row["label"], masks[i].astype(np.uint8), tuple(row["spacing_mm"]))
        meta["seconds"] = round(time.perf_counter() - t0, 3)
        write_json_atomic(tmp / GENERATED_FILE, meta)
    return meta
