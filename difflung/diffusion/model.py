"""The mask-conditioned denoiser: a diffusers `UNet2DModel` fed x_t concatenated with the encoded label mask.

Label maps hold project ids (`difflung.labels`) plus one extra value, `UNSPECIFIED` (255), for pixels whose
class is withheld from the model (mask ablation in training, partial masks in sampling). A model is built for
the classes of one dataset (`Dataset.classes`); channel k of the mask encoding belongs to `classes[k]`.

Mask modes:
    onehot  one channel per class; an unspecified pixel is zero in every channel (so it differs from background).
    single  the Segmentation-Guided Diffusion baseline: one channel holding k/255 for the class at channel
            index k (background k = 0), as the parent reads {0, 1, 2, ...} PNG masks through ToTensor; an
            unspecified pixel is 0, i.e. indistinguishable from background, exactly as in the parent.
"""
from __future__ import annotations

from typing import Sequence

import torch

from difflung import labels as L

UNSPECIFIED = 255  # label value of a pixel whose class is withheld from the condition
MASK_MODES = ("onehot", "single")
# Attention sits where the feature map is 16x16 (the parent's choice) and in the mid block.
ATTENTION_RES = 16

# name -> (block_out_channels, layers_per_block, norm_num_groups, attention at 16x16, mid-block attention)
PRESETS: dict[str, tuple[tuple[int, ...], int, int, bool, bool]] = {
    "tiny": ((4, 8), 1, 2, False, False),  # ~1e4 parameters: tests
    # smoke profile: ~0.1 s per training step (batch 8, 32x32) on one CPU core; attention only in the mid
    # block, since diffusers attention at 16x16 doubles the step time on CPU at this size
    "small": ((16, 32, 64), 1, 8, False, True),
    # small at twice the width: the capacity lever of benchmarks/bench_convergence.py at 64x64
    "medium": ((32, 64, 128), 1, 8, False, True),
    # small with twice the channels at full resolution only (1.5x the step cost): the lever for fine texture
    # (CT noise, reticulation), which `small` renders too smooth at 64x64 (benchmarks/bench_convergence.py)
    "fine": ((32, 32, 64), 1, 8, False, True),
    "base": ((64, 128, 256, 256), 2, 32, True, True),  # standard profile, 128x128
    # Segmentation-Guided Diffusion's UNet: 113.7 M parameters, ~496 GFLOP per 256x256 forward.
    "paper": ((128, 128, 256, 256, 512, 512), 2, 32, True, True),
    # difflung's 256x256 design: thin high-resolution levels, ~8 GFLOP per forward at 256x256, so that
    # DPM-Solver++ with 20 steps stays under 200 GFLOP per image (see benchmarks/bench_diffusion.py).
    "efficient": ((16, 16, 32, 64, 128, 256), 1, 8, True, True),
}


def channel_map(classes: Sequence[int]) -> dict[int, int]:
    """Project label id -> mask channel index, in the order of `classes` (a dataset's `classes`)."""
    classes = [int(c) for c in classes]
    if len(set(classes)) != len(classes):
        raise ValueError(f"classes {classes} contain duplicates")
    for c in classes:
        L.class_id(c)  # raises on ids outside the project scheme
    if L.BACKGROUND in classes and classes[0] != L.BACKGROUND:
        raise ValueError(f"classes {classes}: background must come first (channel 0, value 0 in single mode)")
    return {c: k for k, c in enumerate(classes)}


def mask_channels(num_classes: int, mask_mode: str) -> int:
    if mask_mode not in MASK_MODES:
        raise ValueError(f"mask_mode {mask_mode!r}: expected one of {MASK_MODES}")
    return num_classes if mask_mode == "onehot" else 1


def build_unet(num_classes: int, sample_size: int, mask_mode: str = "onehot", preset: str = "small"):
    """Build the denoiser for `num_classes` mask classes (background included) at `sample_size` pixels.

    Args:
        num_classes: number of classes of the dataset (`len(Dataset.classes)`), background included.
        sample_size: image side in pixels; must be divisible by 2**(levels - 1) of the preset.
        mask_mode: "onehot" (one channel per class) or "single" (the parent's k/255 channel).
        preset: "tiny" (tests), "small" (smoke), "base" (standard), "paper" (the parent's UNet) or
            "efficient" (difflung's 256x256 design, ~8 GFLOP per forward).

    Returns:
        A `diffusers.UNet2DModel` with 1 + mask channels in, 1 channel (the predicted noise) out.
    """
    from diffusers import UNet2DModel

    if preset not in PRESETS:
        raise ValueError(f"preset {preset!r}: expected one of {sorted(PRESETS)}")
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes}: need background and at least one other class")
    boc, layers, groups, attn, mid_attn = PRESETS[preset]
    levels = len(boc)
    if sample_size % 2 ** (levels - 1):
        raise ValueError(f"sample_size {sample_size} is not divisible by {2 ** (levels - 1)} "
                         f"(preset {preset!r} has {levels} resolution levels)")
    # res of level i is sample_size / 2**i; attention at the 16x16 level when the preset asks for it
    use_attn = [attn and sample_size // 2 ** i == ATTENTION_RES for i in range(levels)]
    down = tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in use_attn)
    up = tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in reversed(use_attn))
    return UNet2DModel(
        sample_size=sample_size,
        in_channels=1 + mask_channels(num_classes, mask_mode),
        out_channels=1,
        block_out_channels=boc,
        layers_per_block=layers,
        down_block_types=down,
        up_block_types=up,
        norm_num_groups=groups,
        add_attention=mid_attn,
    )


def _lut(classes: Sequence[int], device) -> torch.Tensor:
    """(256,) long: project id -> channel index; UNSPECIFIED -> -2; ids outside `classes` -> -1."""
    lut = torch.full((256,), -1, dtype=torch.long)
    for c, k in channel_map(classes).items():
        lut[c] = k
    lut[UNSPECIFIED] = -2
    return lut.to(device)


def channel_index(labels, classes: Sequence[int]) -> torch.Tensor:
    """Project-id label maps (B, H, W) -> channel indices (B, H, W) long, -2 where unspecified.

    Raises ValueError naming the offending values if a label is neither in `classes` nor UNSPECIFIED.
    """
    labels = torch.as_tensor(labels)
    if labels.is_floating_point():
        raise TypeError(f"label maps must be integer project ids, got {labels.dtype}")
    if labels.ndim != 3:
        raise ValueError(f"label maps must be (B, H, W), got shape {tuple(labels.shape)}")
    lab = labels.long()
    if lab.numel() and (lab.min() < 0 or lab.max() > 255):
        raise ValueError(f"label values must lie in 0..255, got {int(lab.min())}..{int(lab.max())}")
    idx = _lut(classes, lab.device)[lab]
    if (idx == -1).any():
        bad = sorted(set(torch.unique(lab[idx == -1]).tolist()))
        raise ValueError(f"mask holds label ids {bad} outside the model's class map {list(classes)} "
                         f"({', '.join(f'{c}={n}' for c, n in zip(classes, L.names(classes)))}); "
                         f"use {UNSPECIFIED} for pixels whose class is not given")
    return idx


def encode_mask(labels, classes: Sequence[int], mode: str = "onehot") -> torch.Tensor:
    """Encode project-id label maps (B, H, W) as the model's condition channels.

    Args:
        labels: (B, H, W) integer tensor or array of project ids; UNSPECIFIED (255) for withheld pixels.
        classes: the model's classes (project ids, background first); channel k belongs to classes[k].
        mode: "onehot" -> (B, C, H, W) with C = len(classes); "single" -> (B, 1, H, W) holding k/255.

    Returns:
        float32 tensor on the labels' device.
    """
    idx = channel_index(labels, classes)  # (B, H, W), -2 = unspecified
    given = idx >= 0
    if mask_channels(len(classes), mode) == 1:
        return (idx.clamp(min=0).float() / 255.0 * given).unsqueeze(1)  # (B, 1, H, W)
    out = torch.zeros(idx.shape[0], len(classes), *idx.shape[1:], device=idx.device)
    out.scatter_(1, idx.clamp(min=0).unsqueeze(1), given.unsqueeze(1).float())  # (B, C, H, W)
    return out


def check_size(labels_shape, size: int, what: str = "mask") -> None:
    """Raise a clear error if a (B, H, W) mask does not match the model's `size` x `size` images."""
    if tuple(labels_shape[-2:]) != (size, size):
        raise ValueError(f"{what} size {tuple(labels_shape[-2:])} does not match the model's image size "
                         f"({size}, {size}); resample the masks (nearest) or train at this size")


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())
