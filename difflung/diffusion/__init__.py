"""Mask-guided diffusion (Diff-Lung): the conditioned UNet, mask ablation / CBMAT, training and sampling.

    from difflung.diffusion import TrainConfig, train_diffusion, load_model, sample, to_hu
"""
from difflung.diffusion.ablation import STRATEGIES, AblationSchedule, ablation_frequencies
from difflung.diffusion.model import MASK_MODES, PRESETS, UNSPECIFIED, build_unet, channel_map, encode_mask
from difflung.diffusion.sample import DEFAULT_STEPS, remove_classes, sample, sampling_gflops, to_hu
from difflung.diffusion.train import ModelLoadError, TrainConfig, TrainResult, load_model, train_diffusion

__all__ = [
    "STRATEGIES", "AblationSchedule", "ablation_frequencies", "MASK_MODES", "PRESETS", "UNSPECIFIED",
    "build_unet", "channel_map", "encode_mask", "DEFAULT_STEPS", "remove_classes", "sample", "sampling_gflops",
    "to_hu", "ModelLoadError", "TrainConfig", "TrainResult", "load_model", "train_diffusion",
]
