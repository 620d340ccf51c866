"""The segmentation network: a MONAI 2D UNet trained with Dice + cross-entropy and standard MONAI augmentation.

Used twice: to measure mask faithfulness of generated images (a network trained on real slices segments them and
its prediction is compared with the conditioning mask), and as the downstream model of the augmentation chapter.

Training runs a fixed number of optimisation steps (not epochs), so arms with training sets of different sizes get
the same compute. Everything random -- weight init, batch draws, augmentation -- derives from one explicit
`torch.Generator`; on CPU the same seed gives byte-identical weights and predictions.

    seg = train_segmenter(images, labels, classes=[0, 1, 2, 4], config=SegConfig(steps=300), generator=g)
    pred = seg.predict(test_images)          # (N, S, S) uint8 project ids
    seg.save("runs/x/segmenter"); Segmenter.load("runs/x/segmenter")
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from difflung.progress import show_progress
from difflung import labels as L
from difflung.core.provenance import provenance
from difflung.core.training import (BatchOrder, FolderSpec, LossLog, RunFolder, load_state_dict, open_folder, rng_scope, run_key,
                       save_model_folder, state_dict_writer)

FORMAT = "difflung-segmenter/1"
WEIGHTS = "model.safetensors"
META = "segmenter.json"
FOLDER = FolderSpec(FORMAT, META, WEIGHTS, "a trained segmenter")
_EXECUTION_FIELDS = ("log_every",)


@dataclass
class SegConfig:
    """Segmentation model and training settings (defaults: a small UNet for 128x128 slices)."""

    channels: tuple[int, ...] = (16, 32, 64, 128)
    strides: tuple[int, ...] = (2, 2, 2)
    num_res_units: int = 2
    # Batch norm, not MONAI's default instance norm: HU are calibrated and classes are partly defined by absolute
    # attenuation (emphysema < -950 HU); instance norm discards each image's level (tests/test_segmentation.py).
    norm: str = "batch"
    dropout: float = 0.0
    steps: int = 2000  # optimisation steps, the same for every arm of an experiment
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 1e-5
    lambda_dice: float = 1.0
    lambda_ce: float = 1.0
    dice_batch: bool = True  # Dice over the whole batch (as nnU-Net): rare classes absent from one slice don't give 0/0
    augment: bool = True
    flip_prob: float = 0.5  # per axis
    rot90_prob: float = 0.25
    affine_prob: float = 0.5
    rotate_deg: float = 15.0
    scale: float = 0.1
    translate: float = 0.05  # fraction of the image size
    shift_prob: float = 0.5
    shift: float = 0.1  # intensity offset in [-1, 1] units (0.1 = 70 HU)
    noise_prob: float = 0.25
    noise_std: float = 0.02  # in [-1, 1] units (0.02 = 14 HU)
    # "inverse_sqrt_frequency": loss weight of class k = sqrt(f_max / f_k) over the training pixels (capped at
    # CLASS_WEIGHT_CAP), so small lesions are not drowned by background and body; "none": equal weights
    class_weighting: str = "none"
    amp: bool = True  # bf16 autocast, CUDA only
    log_every: int = 10

    @classmethod
    def from_dict(cls, d: dict) -> "SegConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown SegConfig keys {unknown}; known: {sorted(known)}")
        d = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**d)


def build_unet(num_classes: int, config: SegConfig) -> torch.nn.Module:
    from monai.networks.nets import UNet

    if len(config.channels) != len(config.strides) + 1:
        raise ValueError(f"SegConfig: {len(config.channels)} channels need {len(config.channels) - 1} strides, "
                         f"got {len(config.strides)}")
    return UNet(spatial_dims=2, in_channels=1, out_channels=num_classes, channels=tuple(config.channels),
                strides=tuple(config.strides), num_res_units=config.num_res_units, norm=config.norm,
                dropout=config.dropout)


def build_augmentation(config: SegConfig, size: int):
    """Standard MONAI dictionary augmentation on {'image': (1,S,S), 'label': (1,S,S)} for S = `size`."""
    from monai.transforms import (Compose, RandAffined, RandFlipd, RandGaussianNoised, RandRotate90d,
                                  RandShiftIntensityd)

    keys = ("image", "label")
    rot = np.deg2rad(config.rotate_deg)
    return Compose([
        RandFlipd(keys, prob=config.flip_prob, spatial_axis=0),
        RandFlipd(keys, prob=config.flip_prob, spatial_axis=1),
        RandRotate90d(keys, prob=config.rot90_prob, max_k=3),
        # "border" padding: slice edges are air/background, and zero would be -300 HU in the [-1, 1] window
        RandAffined(keys, prob=config.affine_prob, rotate_range=(rot,), scale_range=(config.scale, config.scale),
                    translate_range=(config.translate * size,) * 2, mode=("bilinear", "nearest"),
                    padding_mode=("border", "border")),
        RandShiftIntensityd("image", offsets=config.shift, prob=config.shift_prob),
        RandGaussianNoised("image", prob=config.noise_prob, std=config.noise_std),
    ])


def _lookup(classes: list[int]) -> np.ndarray:
    """Project id -> channel index table; 255 marks ids outside `classes`."""
    lut = np.full(256, 255, dtype=np.uint8)
    lut[np.asarray(classes)] = np.arange(len(classes), dtype=np.uint8)
    return lut


def _check_inputs(images, labels, classes, config: SegConfig):
    images, labels = np.asarray(images), np.asarray(labels)
    if images.ndim != 3 or labels.shape != images.shape:
        raise ValueError(f"images {images.shape} and labels {labels.shape} must both be (N, S, S)")
    if len(images) == 0:
        raise ValueError("no training images")
    if not np.isfinite(images).all():
        raise ValueError("training images contain NaN or infinite values")
    factor = int(np.prod(config.strides))
    if images.shape[1] % factor or images.shape[2] % factor:
        raise ValueError(f"image size {images.shape[1:]} is not divisible by {factor} (the UNet's strides "
                         f"{tuple(config.strides)})")
    classes = sorted(int(c) for c in classes)
    bad = sorted(set(np.unique(labels).tolist()) - set(classes))
    if bad:
        raise ValueError(f"label values {bad} are not in classes {classes} ({L.names(c for c in bad if c in L.BY_ID)})")
    return images.astype(np.float32, copy=False), labels.astype(np.uint8, copy=False), classes


class Segmenter:
    """A trained UNet with its class map. `predict` returns project label ids."""

    def __init__(self, model: torch.nn.Module, classes: list[int], config: SegConfig, device="cpu",
                 info: dict | None = None):
        self.model = model.to(device).eval()
        self.classes = [int(c) for c in classes]
        self.config = config
        self.device = torch.device(device)
        self.info = info or {}  # training summary + provenance

    @torch.no_grad()
    def predict_proba(self, images, batch_size: int = 64) -> np.ndarray:
        """(N, S, S) images in [-1, 1] -> (N, C, S, S) float32 softmax over `classes`."""
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 3:
            raise ValueError(f"expected images (N, S, S), got {images.shape}")
        out = []
        for i in range(0, len(images), batch_size):
            x = torch.from_numpy(images[i:i + batch_size]).unsqueeze(1).to(self.device)  # (B, 1, S, S)
            out.append(torch.softmax(self.model(x).float(), dim=1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes)) + images.shape[1:], np.float32)

    def predict(self, images, batch_size: int = 64) -> np.ndarray:
        """(N, S, S) images in [-1, 1] -> (N, S, S) uint8 project ids (argmax over `classes`)."""
        idx = self.predict_proba(images, batch_size).argmax(1)
        return np.asarray(self.classes, dtype=np.uint8)[idx]

    def _meta(self) -> dict:
        return {"classes": self.classes, "class_names": L.names(self.classes), "config": asdict(self.config),
                "info": self.info}

    def save(self, out_dir) -> Path:
        """Write `model.safetensors`, then `segmenter.json` (classes, config, training info, provenance)."""
        return save_model_folder(out_dir, FOLDER, state_dict_writer(self.model, WEIGHTS), self._meta())

    @classmethod
    def load(cls, path, device="cpu") -> "Segmenter":
        """Open a folder written by `save` (safetensors only; nothing is unpickled)."""
        path = Path(path)
        meta = open_folder(path, FOLDER)
        config = SegConfig.from_dict(meta["config"])
        model = load_state_dict(build_unet(len(meta["classes"]), config), path / WEIGHTS, path / META)
        return cls(model, meta["classes"], config, device=device, info=meta.get("info", {}))


CLASS_WEIGHT_CAP = 20.0
CLASS_WEIGHTINGS = ("none", "inverse_sqrt_frequency")


def class_weights(channel: np.ndarray, n_classes: int, weighting: str) -> torch.Tensor | None:
    """Per-class loss weights from the training pixels' channel indices (None: unweighted)."""
    if weighting not in CLASS_WEIGHTINGS:
        raise ValueError(f"class_weighting {weighting!r}: expected one of {CLASS_WEIGHTINGS}")
    if weighting == "none":
        return None
    f = np.bincount(channel.ravel(), minlength=n_classes)[:n_classes] / channel.size + 1e-6
    return torch.tensor(np.sqrt(f.max() / f), dtype=torch.float32).clamp(max=CLASS_WEIGHT_CAP)


def _seed_from(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator).item())


def train_segmenter(images, labels, classes, config: SegConfig, generator: torch.Generator, device="cpu",
                    log_path=None, sample_weights=None, progress: bool = True) -> Segmenter:
    """Train a MONAI UNet on 2D slices for `config.steps` optimisation steps.

    Args:
        images: (N, S, S) float32 in [-1, 1] (HU window [-1000, 400]).
        labels: (N, S, S) uint8 project ids; every value must be in `classes`.
        classes: project ids to segment (include background 0); channel k of the network is `sorted(classes)[k]`.
        config: model and training settings.
        generator: the only source of randomness (init, batches, augmentation); consumed.
        device: "cpu" or "cuda[:k]"; bf16 autocast on CUDA when `config.amp`.
        log_path: optional CSV (step, loss, lr, seconds) written atomically at the end.
        sample_weights: optional (N,) non-negative weights; batches are drawn with replacement proportionally to
            them. Without weights batches walk through shuffled passes of the data.
        progress: show a tqdm bar.
    Returns:
        the trained `Segmenter` (model in eval mode) with `info` holding wall time, images/s, final loss and
        provenance.
    """
    from monai.data import get_track_meta, set_track_meta
    from monai.losses import DiceCELoss
    from tqdm.auto import tqdm

    images, labels, classes = _check_inputs(images, labels, classes, config)
    device = torch.device(device)
    n = len(images)
    channel = _lookup(classes)[labels]  # (N, S, S) channel index per pixel
    # weighted draws with replacement, or shuffled passes (a batch may straddle two), from `generator`
    order = BatchOrder(n, generator, weights=sample_weights)

    seed = _seed_from(generator)
    # Module init and dropout draw from torch's global RNG: fork it, seed it from the explicit generator, and
    # restore the caller's state afterwards, so training is a function of `generator` alone.
    with rng_scope(seed, device):
        model = build_unet(len(classes), config).to(device)
        aug = (build_augmentation(config, images.shape[-1]).set_random_state(seed=_seed_from(generator))
               if config.augment else None)
        log, t0 = LossLog(log_path), time.perf_counter()
        weight = class_weights(channel, len(classes), config.class_weighting)
        seen, loss_v = _loop(model, aug, order, images, channel, config, device, log, progress, weight)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    wall = time.perf_counter() - t0
    info = {"steps": config.steps, "n_train": n, "images_seen": seen, "wall_s": round(wall, 3),
            "images_per_s": round(seen / wall, 2) if wall > 0 else None, "final_loss": loss_v,
            "provenance": provenance(config=asdict(config), seed=seed, device=device)}
    log.write()
    seg = Segmenter(model, classes, config, device=device, info=info)
    seg.history = log.rows
    return seg


def _loop(model, aug, order: BatchOrder, images, channel, config: SegConfig, device, log: LossLog, progress: bool,
          weight: torch.Tensor | None = None):
    """`config.steps` optimisation steps of Dice + CE; returns (images seen, last logged loss)."""
    from monai.data import get_track_meta, set_track_meta
    from monai.losses import DiceCELoss
    from tqdm.auto import tqdm

    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True, lambda_dice=config.lambda_dice,
                         lambda_ce=config.lambda_ce, batch=config.dice_batch,
                         weight=None if weight is None else weight.to(device))
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(config.steps, 1))
    use_amp = config.amp and device.type == "cuda"
    track = get_track_meta()
    set_track_meta(False)  # plain tensors out of MONAI transforms: no metadata bookkeeping in the loop
    t0, seen, loss_v = time.perf_counter(), 0, float("nan")
    model.train()
    try:
        for step in tqdm(range(1, config.steps + 1), desc="segmenter", disable=not show_progress(progress), leave=False):
            idx = order.next(config.batch_size).numpy()  # (B,)
            x = torch.from_numpy(images[idx]).unsqueeze(1)  # (B, 1, S, S)
            y = torch.from_numpy(channel[idx].astype(np.float32)).unsqueeze(1)  # (B, 1, S, S) channel ids
            if aug is not None:
                out = [aug({"image": x[b], "label": y[b]}) for b in range(len(idx))]
                x = torch.stack([torch.as_tensor(o["image"]) for o in out])
                y = torch.stack([torch.as_tensor(o["label"]) for o in out])
            x, y = x.to(device, non_blocking=True), y.round().to(device, non_blocking=True)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_amp):
                logits = model(x)
            loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(idx)
            if step % config.log_every == 0 or step == config.steps:
                loss_v = float(loss.detach())
                log.append(step, loss=round(loss_v, 6), lr=sched.get_last_lr()[0],
                           seconds=round(time.perf_counter() - t0, 3))
    finally:
        set_track_meta(track)
    return seen, loss_v


def fit_segmenter(out_dir, images, labels, classes, config: SegConfig, seed: int, *, dataset_sha256: str,
                  device="cpu", sample_weights=None, progress: bool = True) -> Segmenter:
    """`train_segmenter` with the training shell's reuse rule: a finished segmenter in `out_dir` trained with the
    same run key (config, classes, seed, the data's sha256) is loaded instead of trained again.

    Args:
        out_dir: the segmenter folder (`model.safetensors` + `segmenter.json`, with its run key).
        images, labels, classes, config, sample_weights, device, progress: as in `train_segmenter`.
        seed: seeds `torch.Generator().manual_seed(seed)`, the only source of randomness.
        dataset_sha256: identifies the training data (e.g. the split's sha256 in the dataset manifest).
    """
    import hashlib

    weights_sha = None if sample_weights is None else \
        hashlib.sha256(np.ascontiguousarray(sample_weights, dtype=np.float64).tobytes()).hexdigest()
    key = run_key(config, dataset_sha256, execution=_EXECUTION_FIELDS, seed=int(seed),
                  classes=sorted(int(c) for c in classes), sample_weights_sha256=weights_sha)
    run = RunFolder(out_dir, key, FOLDER)
    if run.finished() is not None:
        return Segmenter.load(out_dir, device=device)
    seg = train_segmenter(images, labels, classes, config, torch.Generator().manual_seed(int(seed)), device=device,
                          sample_weights=sample_weights, progress=progress)
    run.save(state_dict_writer(seg.model, WEIGHTS), seg._meta())
    return seg
