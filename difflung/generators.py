"""One registry and one loader for every mask-to-CT generator: Diff-Lung, its ablation variants, Seg-Guided
Diffusion, Pix2Pix and SPADE.

    g = load_generator(runs.main_model_dir(runs_root), sampler="dpm", sampler_steps=10)
    x = g.sample(masks, generator=torch.Generator().manual_seed(0))     # (N, S, S) in [-1, 1]
    g.params, g.gflops_per_image()

A generator is chosen by its key (`REGISTRY`); `DISPLAY_NAMES` is the only place where a key becomes the name a
reader sees, so metrics files store keys. Diffusion folders (written by `difflung.diffusion.train_diffusion`,
holding `difflung_config.json`) and GAN folders (written by `difflung.baselines.train_gan`, holding
`generator/config.json`) load the same way; the kind is read from the folder's config file. The sampler and its
step count belong to a generator's sampling settings (GANs have none: one forward per image).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from difflung.diffusion.ablation import STRATEGIES
from difflung.diffusion.model import UNSPECIFIED

DIFFUSION, GAN = "diffusion", "gan"


@dataclass(frozen=True)
class Spec:
    """How a registered generator is trained: its kind and the training settings that define it."""

    kind: str  # DIFFUSION | GAN
    settings: dict  # diffusion: TrainConfig fields (mask_mode, strategy); GAN: {"kind": "pix2pix" | "spade"}


REGISTRY: dict[str, Spec] = {
    "difflung": Spec(DIFFUSION, {"mask_mode": "onehot", "strategy": "cbmat"}),
    # the parent (Segmentation-Guided Diffusion): one k/255 mask channel, every class withheld with p = 0.5
    "segguided": Spec(DIFFUSION, {"mask_mode": "single", "strategy": "uniform"}),
    # chapter 2's ablation variants: Diff-Lung's network and one-hot masks, one ablation strategy each
    **{s: Spec(DIFFUSION, {"mask_mode": "onehot", "strategy": s}) for s in STRATEGIES},
    "pix2pix": Spec(GAN, {"kind": "pix2pix"}),
    "spade": Spec(GAN, {"kind": "spade"}),
}

DISPLAY_NAMES = {
    "difflung": "Diff-Lung (CBMAT)", "segguided": "Seg-Guided", "pix2pix": "Pix2Pix", "spade": "SPADE",
    "none": "no ablation", "uniform": "uniform p=0.5 (the parent's ablation)", "cbmat": "CBMAT (Diff-Lung)",
    "cbmat-constant": "CBMAT, not annealed", "cbmat-inverse": "inverse CBMAT (P=f)",
    "real": "real slices",
}


def display_name(key: str) -> str:
    """The reader's name of a model key (the key itself when it has none)."""
    return DISPLAY_NAMES.get(key, key)


def _spec(key: str) -> Spec:
    if key not in REGISTRY:
        raise ValueError(f"unknown generator {key!r}; registered: {', '.join(REGISTRY)}")
    return REGISTRY[key]


def diffusion_config(key: str, *, recipe: str = "difflung", **fields):
    """The `TrainConfig` of a registered diffusion generator: the training `recipe` (`difflung.diffusion.recipes`;
    every diffusion model of a comparison shares one), then `fields` (budget, preset, seed, ...), then the settings
    that define `key`, which `fields` may not contradict."""
    from difflung.diffusion.recipes import recipe_config

    spec = _spec(key)
    if spec.kind != DIFFUSION:
        raise ValueError(f"{key!r} is a {spec.kind} generator, not a diffusion model")
    clash = {k: v for k, v in fields.items() if k in spec.settings and spec.settings[k] != v}
    if clash:
        raise ValueError(f"{key!r} is defined by {spec.settings}; got {clash}")
    return recipe_config(recipe, **{**fields, **spec.settings})


def gan_config(key: str, size: str, **fields):
    """The `GanTrainConfig` of a registered GAN at registry size `size` (T, S, B or L, a profile value)."""
    from difflung.baselines import GanTrainConfig, baseline_name

    spec = _spec(key)
    if spec.kind != GAN:
        raise ValueError(f"{key!r} is a {spec.kind} generator, not a GAN")
    return GanTrainConfig(model=baseline_name(spec.settings["kind"], size), **fields)


def folder_kind(path) -> str:
    """DIFFUSION or GAN, read from the config file a finished model folder holds."""
    from difflung.diffusion.train import META_FILE

    path = Path(path)
    if (path / META_FILE).is_file():
        return DIFFUSION
    for cfg in (path / "config.json", path / "generator" / "config.json"):
        if cfg.is_file() and str(json.loads(cfg.read_text()).get("format", "")).startswith("difflung-gan"):
            return GAN
    raise FileNotFoundError(f"{path}: not a finished generator folder (no {META_FILE} of a diffusion model, no "
                            f"config.json of a GAN); train it first")


@dataclass
class Generator:
    """A trained generator behind one interface, whatever its kind.

    Attributes:
        key: registry key ("difflung", "segguided", "pix2pix", ...).
        kind: DIFFUSION or GAN.
        folder: where it was loaded from.
        config: the folder's stored config (diffusion: difflung_config.json; GAN: generator/config.json).
        module: the network (UNet2DModel or the GAN generator), in eval mode on `device`.
        sampler, sampler_steps: sampling settings of a diffusion model (unused by GANs).
        device: where it runs.
    """

    key: str
    kind: str
    folder: Path
    config: dict
    module: torch.nn.Module
    sampler: str = "dpm"
    sampler_steps: int | None = None
    device: str = "cpu"

    @property
    def classes(self) -> list[int]:
        return list(self.config["classes"] if self.kind == DIFFUSION else self.config["model"]["classes"])

    @property
    def size(self) -> int:
        return int(self.config["sample_size"] if self.kind == DIFFUSION else self.config["model"]["image_size"])

    @property
    def train_seed(self) -> int:
        return int(self.config["seed"] if self.kind == DIFFUSION else self.config["train"]["seed"])

    @property
    def params(self) -> int:
        return int(sum(p.numel() for p in self.module.parameters()))

    @property
    def display_name(self) -> str:
        return display_name(self.key)

    def with_sampling(self, sampler: str, sampler_steps: int | None) -> "Generator":
        """The same network with other sampling settings."""
        return replace(self, sampler=sampler, sampler_steps=sampler_steps)

    def sample(self, masks, *, generator, batch_size: int = 16, progress: bool = False) -> np.ndarray:
        """One image per mask.

        Args:
            masks: (N, S, S) project-id label maps.
            generator: a CPU torch.Generator, or a list of N (one per mask: image i then depends only on mask i
                and generator i, whatever the other masks, the batch size or the model).
            batch_size: masks per forward batch.
        Returns:
            (N, S, S) float32 in [-1, 1], the model window HU [-1000, 400].
        """
        if self.kind == DIFFUSION:
            from difflung.diffusion import sample

            return sample(self.module, self.config, masks, generator=generator, sampler=self.sampler,
                          steps=self.sampler_steps, batch_size=batch_size, device=self.device, progress=progress)
        from difflung.baselines import generate

        masks = np.asarray(masks)
        if (masks == UNSPECIFIED).any():
            raise ValueError(f"{self.folder}: {self.key} is a GAN and takes full masks only (no unspecified pixels)")
        if not isinstance(generator, (list, tuple)):
            # Pix2Pix draws its test-time noise from dropout (the original); SPADE is deterministic
            return generate(self.module, masks, self.classes, batch_size, self.device, generator=generator)
        if len(generator) != len(masks):
            raise ValueError(f"{len(generator)} generators for {len(masks)} masks: pass one, or one per mask")
        out = [generate(self.module, masks[i:i + 1], self.classes, 1, self.device, generator=g)
               for i, g in enumerate(generator)]  # one mask per forward: its dropout noise is its own generator's
        return np.concatenate(out) if out else np.zeros((0,) + masks.shape[1:], np.float32)

    def gflops_per_image(self, sampler: str | None = None, sampler_steps: int | None = None) -> float:
        """GFLOPs to generate one image: a diffusion model's UNet forward times the solver steps (default: its
        own sampling settings); a GAN's single forward."""
        if self.kind == DIFFUSION:
            from difflung.diffusion import sampling_gflops

            return sampling_gflops(self.module, self.config, sampler or self.sampler,
                                   self.sampler_steps if sampler_steps is None else sampler_steps)
        from difflung.baselines import one_hot
        from difflung.judging.cost import gflops_per_call

        mask = one_hot(np.zeros((1, self.size, self.size), np.uint8), self.classes, self.device)
        return gflops_per_call(self.module, mask)


def _diffusion_key(meta: dict) -> str:
    tc = meta.get("train_config", {})
    found = (tc.get("mask_mode", meta.get("mask_mode")), tc.get("strategy"))
    for key in ("difflung", "segguided"):
        if tuple(REGISTRY[key].settings[k] for k in ("mask_mode", "strategy")) == found:
            return key
    return str(found[1])


def load_generator(path, *, key: str | None = None, device: str = "cpu", sampler: str = "dpm",
                   sampler_steps: int | None = None, dataset=None) -> Generator:
    """Load any trained generator folder.

    Args:
        path: a diffusion model folder or a GAN training (or `generator/`) folder.
        key: its registry key; None: read from the folder (GAN kind; a diffusion model's mask mode and strategy:
            "difflung", "segguided", else the strategy name).
        device: where to run it ("cpu", "cuda"; resolve "auto" with `difflung.core.provenance.resolve_device`).
        sampler, sampler_steps: a diffusion model's sampling settings (`difflung.diffusion.sample`).
        dataset: optional `Dataset`; its classes and image size must match the model's.
    """
    path = Path(path)
    if folder_kind(path) == DIFFUSION:
        from difflung.diffusion import load_model

        module, config = load_model(path, dataset, device=device)
        g = Generator(key or _diffusion_key(config), DIFFUSION, path, config, module, sampler, sampler_steps, device)
    else:
        from difflung.baselines import load_generator as load_gan

        module = load_gan(path, device)
        config = module.difflung_config
        g = Generator(key or config["model"]["kind"], GAN, path, config, module, sampler, sampler_steps, device)
        if dataset is not None and (list(dataset.classes) != g.classes or dataset.size != g.size):
            raise ValueError(f"{path}: model classes {g.classes} at {g.size} px do not fit dataset {dataset.root} "
                             f"(classes {dataset.classes} at {dataset.size} px)")
    if key is not None and _spec(key).kind != g.kind:
        raise ValueError(f"{path}: holds a {g.kind} model, but {key!r} is a {_spec(key).kind} generator")
    return g


def checkpoint_generator(path, *, key: str, dataset, device: str = "cpu", sampler: str = "dpm",
                         sampler_steps: int | None = None) -> Generator:
    """The newest checkpoint of a generator still in training (or its finished model), behind the same interface,
    so training curves score every generator kind the same way. `.config["step"]` is the checkpoint's step.

    Args: as `load_generator`; `key` and `dataset` are required (a checkpoint holds no class list of its own).
    """
    path = Path(path)
    if _spec(key).kind == DIFFUSION:
        from difflung.diffusion.train import checkpoint_model

        module, config = checkpoint_model(path, dataset)
        return Generator(key, DIFFUSION, path, config, module.to(device), sampler, sampler_steps, device)
    from difflung.baselines.gan_train import checkpoint_generator as gan_checkpoint

    module = gan_checkpoint(path, dataset, device)
    config = {**module.difflung_config, "step": module.difflung_config["train"]["step"]}
    return Generator(key, GAN, path, config, module, sampler, sampler_steps, device)
