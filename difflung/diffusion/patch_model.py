"""The lesion-insertion model: a mask-conditioned UNet trained on patches at a fixed physical pixel spacing.

The patches themselves (cutting, datasets) live in `difflung.insertion.patches`; this module trains and saves
the model on them. A patch dataset records its spacing in the manifest's params (`SPACING_KEY`), and
`train_patch_model` copies it into the model's `difflung_config.json`, so that insertion refuses a model trained
at another spacing.
"""
from __future__ import annotations

import json
from dataclasses import fields, replace
from pathlib import Path
from typing import Iterable

from difflung import labels as L
from difflung.core.provenance import write_json_atomic
from difflung.data.dataset import Dataset, DatasetError

PATCH_SPACING_MM = 1.0  # in-plane pixel spacing of every patch and of the insertion model
SPACING_KEY = "pixel_spacing_mm"  # where datasets (params) and models (meta) record it


def dataset_spacing(ds: Dataset) -> float:
    """The patch spacing a dataset artifact records; DatasetError for a whole-slice dataset."""
    sp = ds.manifest.get("params", {}).get(SPACING_KEY)
    if sp is None:
        raise DatasetError(f"{ds.root / 'manifest.json'}: not a patch dataset (no params.{SPACING_KEY}); "
                           f"build it with difflung.insertion.patches.build_patch_dataset")
    return float(sp)


def lesion_focused(config, weight: float, classes: Iterable[int]):
    """`config` with LeFusion's lesion-focused loss: lesion pixels of `classes` weighted by `weight`.

    Needs `TrainConfig.lesion_weight` / `lesion_classes` (difflung.diffusion.train); raises NotImplementedError
    naming what is missing when the training shell does not have them.
    """
    have = {f.name for f in fields(config)}
    if "lesion_weight" not in have:
        raise NotImplementedError("TrainConfig has no lesion_weight field: the lesion-focused loss is not "
                                  "available in difflung.diffusion.train yet")
    kw = {"lesion_weight": float(weight)}
    if "lesion_classes" in have:
        kw["lesion_classes"] = tuple(int(c) for c in classes)
    return replace(config, **kw)


def train_patch_model(data, config, out_dir, device: str = "auto", **kwargs):
    """Train the insertion model on a patch dataset with the ordinary training shell, then record its spacing.

    Args:
        data: a patch `Dataset` or its path (`difflung.insertion.patches.build_patch_dataset`).
        config: `TrainConfig` (use `lesion_focused` for the lesion-focused loss).
        out_dir: the model folder; device, **kwargs: as `train_diffusion`.
    Returns the `TrainResult`; a finished model's difflung_config.json gains `pixel_spacing_mm`.
    """
    from difflung.diffusion.train import META_FILE, train_diffusion

    ds = data if isinstance(data, Dataset) else Dataset(data)
    spacing = dataset_spacing(ds)
    result = train_diffusion(ds, config, out_dir, device, **kwargs)
    mpath = Path(out_dir) / META_FILE
    if result.finished and mpath.is_file():
        meta = json.loads(mpath.read_text())
        if meta.get(SPACING_KEY) != spacing:
            meta[SPACING_KEY] = spacing
            write_json_atomic(mpath, meta)
    return result


def save_untrained_model(out_dir, classes, size: int, *, preset: str = "tiny", spacing_mm: float = PATCH_SPACING_MM,
                         seed: int = 0, mask_mode: str = "onehot") -> Path:
    """A randomly initialised patch model in the trained models' folder format (safetensors + metadata).

    For tests and cost benchmarks: what insertion does outside the lesions, and what it costs, does not depend
    on the weights. The weights come from `seed` (the global RNG is left as it was).
    Args:
        out_dir: the model folder; classes: project ids it is conditioned on; size: its patch side in pixels.
        preset, mask_mode: as `build_unet`; spacing_mm: the patch spacing it records.
    """
    import torch

    from difflung.diffusion.model import build_unet, channel_map
    from difflung.diffusion.train import FORMAT, META_FILE, NOISE_SCHEDULE

    out_dir = Path(out_dir)
    classes = [int(c) for c in classes]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        unet = build_unet(len(classes), int(size), mask_mode, preset)
    out_dir.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(out_dir, safe_serialization=True)
    write_json_atomic(out_dir / META_FILE, {
        "format": FORMAT, "classes": classes, "class_names": L.names(classes),
        "channel_map": {str(k): v for k, v in channel_map(classes).items()}, "mask_mode": mask_mode,
        "preset": preset, "sample_size": int(size), "window_hu": list(L.MODEL_WINDOW),
        "noise_schedule": NOISE_SCHEDULE, "weights": "untrained", "seed": int(seed), SPACING_KEY: float(spacing_mm)})
    return out_dir
