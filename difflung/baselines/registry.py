"""Registry of the GAN baselines by name and size (as DiT's `DiT_models`).

A name is `<kind>-<size>`: kind `pix2pix` or `spade`, size T (tests), S, B or L (the original widths); each
profile names its size (`gan_size` in profiles/*.yml). Widths come from the name; depths come from the image size (see `pix2pix.py` and
`spade.py`). `model_config(name, image_size, classes)` gives the full JSON-able config that `build_models`
turns into (generator, discriminator) and that is stored beside the weights.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch.nn as nn

from difflung.baselines import pix2pix, spade


@dataclass(frozen=True)
class BaselineSpec:
    kind: str  # "pix2pix" | "spade"
    width: int  # generator width: ngf (Pix2Pix first level) / nf (SPADE last block)
    disc_width: int  # discriminator ndf
    hidden: int = 0  # SPADE modulation MLP channels (128 in the original)


BASELINES: dict[str, BaselineSpec] = {
    "pix2pix-T": BaselineSpec("pix2pix", 4, 4),
    "pix2pix-S": BaselineSpec("pix2pix", 8, 8),
    "pix2pix-B": BaselineSpec("pix2pix", 32, 32),
    "pix2pix-L": BaselineSpec("pix2pix", 64, 64),
    "spade-T": BaselineSpec("spade", 2, 4, 4),
    "spade-S": BaselineSpec("spade", 4, 8, 16),
    "spade-B": BaselineSpec("spade", 32, 32, 64),
    "spade-L": BaselineSpec("spade", 64, 64, 128),
}
KINDS = ("pix2pix", "spade")


def baseline_name(kind: str, size: str) -> str:
    """Registry name for a kind and a size, e.g. ('spade', 'S') -> 'spade-S'."""
    if kind not in KINDS:
        raise ValueError(f"unknown baseline kind {kind!r}; known: {', '.join(KINDS)}")
    name = f"{kind}-{size}"
    get_spec(name)  # a clear error for an unknown size
    return name


def get_spec(name: str) -> BaselineSpec:
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; registered: {', '.join(BASELINES)}")
    return BASELINES[name]


def model_config(name: str, image_size: int, classes) -> dict:
    """Full config of a registered baseline for an image size and the dataset's classes (one-hot channels).

    Holds the derived depths (so the stored config says exactly what was built), the optimiser and loss
    settings of the original.
    """
    spec = get_spec(name)
    classes = [int(c) for c in classes]
    if len(classes) < 1:
        raise ValueError(f"{name}: need at least one mask class")
    k = len(classes)
    cfg = {"name": name, **asdict(spec), "image_size": int(image_size), "classes": classes, "out_channels": 1}
    if spec.kind == "pix2pix":
        depth = pix2pix.unet_depth(image_size)
        cfg.update(depth=depth, n_dropout=min(3, depth - 2), disc_layers=pix2pix.patch_layers(image_size),
                   loss="bce", lambda_l1=100.0, lr_g=2e-4, lr_d=2e-4, betas=[0.5, 0.999])
        cfg["receptive_field"] = pix2pix.receptive_field(pix2pix.PatchDiscriminator(k + 1, 1, cfg["disc_layers"]))
    else:
        cfg.update(start_size=spade.start_size(image_size), disc_layers=spade.disc_layers(image_size), num_d=2,
                   loss="hinge", lambda_feat=10.0, lambda_vgg=10.0, lr_g=1e-4, lr_d=4e-4, betas=[0.0, 0.9])
    return cfg


def build_generator(cfg: dict) -> nn.Module:
    """The generator of a `model_config` (weights initialised from the global RNG: use `rng_scope`)."""
    k = len(cfg["classes"])
    if cfg["kind"] == "pix2pix":
        G = pix2pix.Pix2PixGenerator(k, cfg["out_channels"], cfg["image_size"], cfg["width"], cfg["n_dropout"])
        pix2pix.init_weights(G)
        return G
    if cfg["kind"] == "spade":
        return spade.SPADEGenerator(k, cfg["out_channels"], cfg["image_size"], cfg["width"], cfg["hidden"])
    raise ValueError(f"unknown baseline kind {cfg['kind']!r} in config {cfg.get('name')!r}")


def build_discriminator(cfg: dict) -> nn.Module:
    k = len(cfg["classes"])
    if cfg["kind"] == "pix2pix":
        D = pix2pix.PatchDiscriminator(k + cfg["out_channels"], cfg["disc_width"], cfg["disc_layers"])
        pix2pix.init_weights(D)
        return D
    return spade.MultiscaleDiscriminator(k + cfg["out_channels"], cfg["disc_width"], cfg["disc_layers"], cfg["num_d"])


def build_models(cfg: dict) -> tuple[nn.Module, nn.Module]:
    return build_generator(cfg), build_discriminator(cfg)
