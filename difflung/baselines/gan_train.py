"""Training, saving and sampling of the GAN baselines (Pix2Pix, SPADE), shared by both.

Training folder layout (`train_gan(dataset, config, out_dir)`):
    checkpoints/step_XXXXXXXX.pt  training state (both nets, optimisers, LR schedules, generators, loss log)
    losses.csv                    one row every `log_every` steps
    generator/model.safetensors   final generator weights
    generator/config.json         model config, training config, classes, provenance (written last)

Determinism: data order comes from a torch.Generator seeded per epoch by (seed, epoch); everything that uses
torch's global RNG (weight init, spectral-norm vectors, dropout) runs inside `rng_scope`, which forks the
global RNG and seeds it from an explicit, checkpointed torch.Generator. Same seed on CPU -> identical weights,
and a run killed and resumed from a checkpoint ends with the same weights as an uninterrupted one.

The budget is counted as the diffusion models' is: `steps` optimisation steps of `batch_size` slices.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..progress import show_progress
from ..checkpoint import latest_checkpoint, load_training_state, save_training_state
from ..provenance import atomic_path, provenance, write_json_atomic, write_text_atomic
from . import pix2pix, spade
from .registry import build_generator, build_models, model_config

FORMAT = "difflung-gan/1"


# ---------------------------------------------------------------------------------------------------------------
# randomness and inputs

@contextlib.contextmanager
def rng_scope(generator: torch.Generator, device="cpu"):
    """Run a block with torch's global RNG forked and seeded from `generator` (advancing it by one draw).

    torch draws dropout masks, default weight init and spectral-norm vectors from the global RNG; inside this
    scope they are a function of the explicit generator, and the caller's global RNG is left untouched.
    """
    seed = int(torch.randint(0, 2 ** 62, (1,), generator=generator))
    device = torch.device(device)
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def one_hot(labels, classes, device="cpu") -> torch.Tensor:
    """Label maps (N, S, S) of project ids -> one-hot (N, K, S, S) float32, channels in `classes` order.

    Raises ValueError if a label value is not one of `classes`.
    """
    labels = torch.as_tensor(np.asarray(labels), device=device).long()
    lut = torch.full((256,), -1, dtype=torch.long, device=device)
    lut[torch.as_tensor(list(classes), device=device).long()] = torch.arange(len(classes), device=device)
    idx = lut[labels]
    if (idx < 0).any():
        bad = sorted(set(torch.unique(labels[idx < 0]).tolist()))
        raise ValueError(f"label values {bad} are not among the model's classes {list(classes)}")
    return torch.nn.functional.one_hot(idx, len(classes)).permute(0, 3, 1, 2).float()  # (N, K, S, S)


def batch_indices(step: int, batch_size: int, n: int, seed: int, _cache: dict | None = None) -> torch.Tensor:
    """Indices of the slices of optimisation step `step`: a stream of per-epoch permutations, each drawn from a
    torch.Generator seeded by (seed, epoch), cut into batches. Depends only on its arguments (resume-safe)."""
    cache = {} if _cache is None else _cache
    out = []
    for i in range(step * batch_size, (step + 1) * batch_size):
        epoch = i // n
        if epoch not in cache:
            cache.clear()
            cache[epoch] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        out.append(cache[epoch][i % n])
    return torch.stack(out)


# ---------------------------------------------------------------------------------------------------------------
# training

@dataclass
class GanTrainConfig:
    """Training settings. Args:
        model: registry name (`difflung.baselines.registry.BASELINES`), e.g. "pix2pix-S", "spade-B".
        steps, batch_size: the budget (as the diffusion models': steps x batch slices seen).
        seed: seeds init, data order and dropout/spectral-norm noise.
        lr_decay_from: fraction of `steps` after which both LRs decay linearly to 0 (the originals train
            n epochs at constant LR, then n epochs of linear decay: 0.5).
        checkpoint_every, keep_checkpoints, log_every: checkpoint and loss-log cadence.
        vgg_weights: SPADE only: path to VGG19 weights for the perceptual loss; None (default) = off.
        device: "cpu", "cuda", ...
    """

    model: str = "pix2pix-S"
    steps: int = 300
    batch_size: int = 8
    seed: int = 0
    lr_decay_from: float = 0.5
    checkpoint_every: int = 100
    keep_checkpoints: int = 2
    log_every: int = 10
    vgg_weights: str | None = None
    device: str = "cpu"

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1 (got {self.steps}, {self.batch_size})")

    def fingerprint(self) -> dict:
        """What must match for a checkpoint to be resumed (not the cadence or device)."""
        d = asdict(self)
        for k in ("checkpoint_every", "keep_checkpoints", "log_every", "device"):
            d.pop(k)
        return d


def _lr_lambda(steps: int, decay_from: float):
    start = int(steps * decay_from)
    return lambda s: 1.0 if s < start else max(0.0, 1.0 - (s - start) / max(1, steps - start))


def train_gan(dataset, config: GanTrainConfig, out_dir, *, resume: bool = True, stop_after: int | None = None,
              progress: bool = True) -> Path:
    """Train a baseline on `dataset.split("train")`; return the generator folder (`out_dir/generator`).

    Args:
        dataset: a `difflung.dataset.Dataset` (its `classes` define the one-hot channels).
        config: `GanTrainConfig`.
        out_dir: training folder (layout in the module docstring). If it already holds a finished generator
            with the same configuration, that is returned without training.
        resume: continue from the latest checkpoint in `out_dir/checkpoints` (its config must match).
        stop_after: stop (without final weights) after this many steps; for tests that simulate a crash.
        progress: show a tqdm bar.
    """
    out_dir = Path(out_dir)
    gen_dir = out_dir / "generator"
    slices = dataset.split("train")
    cfg = model_config(config.model, dataset.size, dataset.classes)
    fingerprint = {"model": cfg, "train": config.fingerprint(),
                   "dataset_sha256": dataset.manifest["splits"]["train"]["sha256"]}
    done = gen_dir / "config.json"
    if done.is_file() and json.loads(done.read_text()).get("fingerprint") == fingerprint:
        return gen_dir
    device = torch.device(config.device)
    n = len(slices)
    if n == 0:
        raise ValueError(f"{dataset.root}: the train split has no slices")

    init_gen = torch.Generator().manual_seed(config.seed)
    with rng_scope(init_gen):
        G, D = build_models(cfg)
    G, D = G.to(device).train(), D.to(device).train()
    if cfg["kind"] == "pix2pix":
        opt_g, opt_d = pix2pix.optimizers(G, D, cfg["lr_g"], tuple(cfg["betas"]))
    else:
        opt_g, opt_d = spade.optimizers(G, D, cfg["lr_g"], cfg["lr_d"], tuple(cfg["betas"]))
    vgg = spade.VGGLoss(config.vgg_weights).to(device) if (cfg["kind"] == "spade" and config.vgg_weights) else None
    if config.vgg_weights and cfg["kind"] != "spade":
        raise ValueError(f"vgg_weights is a SPADE option; model {config.model!r} is {cfg['kind']}")
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, _lr_lambda(config.steps, config.lr_decay_from))
    sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, _lr_lambda(config.steps, config.lr_decay_from))
    noise_gen = torch.Generator().manual_seed(config.seed + 1)  # dropout / spectral-norm power iterations

    modules = {"G": G, "D": D, "opt_g": opt_g, "opt_d": opt_d, "sched_g": sched_g, "sched_d": sched_d}
    ckpt_dir = out_dir / "checkpoints"
    start, log = 0, []
    ckpt = latest_checkpoint(ckpt_dir) if resume else None
    if ckpt is not None:
        state = load_training_state(ckpt, modules=modules, generators={"noise": noise_gen}, map_location=device)
        if state["extra"].get("fingerprint") != fingerprint:
            raise ValueError(f"{ckpt}: checkpoint was written for a different configuration; "
                             f"use another out_dir or resume=False")
        start, log = state["step"], state["extra"]["log"]

    images = torch.as_tensor(slices.images)  # (N, S, S) float32 [-1, 1], CPU
    labels = torch.as_tensor(slices.labels)  # (N, S, S) uint8
    perm_cache: dict = {}
    end = config.steps if stop_after is None else min(config.steps, stop_after)
    t0 = time.perf_counter()
    bar = tqdm(total=config.steps, initial=start, desc=config.model, disable=not show_progress(progress), leave=False)
    for step in range(start, end):
        idx = batch_indices(step, config.batch_size, n, config.seed, perm_cache)
        real = images[idx].unsqueeze(1).to(device)  # (B, 1, S, S)
        mask = one_hot(labels[idx], cfg["classes"], device)  # (B, K, S, S)
        with rng_scope(noise_gen, device):
            if cfg["kind"] == "pix2pix":
                losses = pix2pix.train_step(G, D, opt_g, opt_d, mask, real, lambda_l1=cfg["lambda_l1"])
            else:
                losses = spade.train_step(G, D, opt_g, opt_d, mask, real, lambda_feat=cfg["lambda_feat"],
                                          lambda_vgg=cfg["lambda_vgg"], vgg=vgg)
        if not all(np.isfinite(v) for v in losses.values()):
            raise FloatingPointError(f"{config.model} step {step + 1}: non-finite loss {losses}")
        sched_g.step()
        sched_d.step()
        done_steps = step + 1
        if done_steps % config.log_every == 0 or done_steps == config.steps:
            log.append({"step": done_steps, **{k: round(v, 6) for k, v in losses.items()},
                        "lr_g": sched_g.get_last_lr()[0], "lr_d": sched_d.get_last_lr()[0]})
            bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()})
        bar.update(1)
        if done_steps % config.checkpoint_every == 0 and done_steps < config.steps:
            save_training_state(ckpt_dir / f"step_{done_steps:08d}.pt", step=done_steps, modules=modules,
                                generators={"noise": noise_gen},
                                extra={"fingerprint": fingerprint, "log": log})
            _write_log(out_dir / "losses.csv", log)
            _prune(ckpt_dir, config.keep_checkpoints)
    bar.close()
    _write_log(out_dir / "losses.csv", log)
    if end < config.steps:
        return gen_dir

    # final generator: weights, then config (its presence marks a finished run)
    from safetensors.torch import save_file

    gen_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(gen_dir / "model.safetensors") as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in G.state_dict().items()}, str(tmp))
    write_json_atomic(done, {
        "format": FORMAT, "model": cfg, "train": asdict(config), "fingerprint": fingerprint,
        "steps": config.steps, "images_seen": config.steps * config.batch_size,
        "params_generator": sum(p.numel() for p in G.parameters()),
        "params_discriminator": sum(p.numel() for p in D.parameters()),
        "train_seconds_last_session": round(time.perf_counter() - t0, 3),
        "vgg_loss": bool(vgg is not None), "dataset": str(dataset.root),
        "provenance": provenance(config={"model": cfg, "train": asdict(config)}, seed=config.seed, device=device),
    })
    return gen_dir


def _write_log(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    keys = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def _prune(folder: Path, keep: int) -> None:
    ckpts = sorted(folder.glob("step_*.pt"))
    for p in ckpts[: max(0, len(ckpts) - keep)]:
        p.unlink()


def read_loss_log(out_dir):
    """The training loss log of a baseline as a DataFrame (step, losses, learning rates)."""
    import pandas as pd

    path = Path(out_dir) / "losses.csv"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no loss log; train the baseline first")
    return pd.read_csv(path)


# ---------------------------------------------------------------------------------------------------------------
# loading and sampling

def load_generator(path, device="cpu") -> torch.nn.Module:
    """Load a trained baseline generator from its folder (or the training folder holding `generator/`).

    The module is returned in eval mode with `.difflung_config` (the stored config.json) attached.
    """
    path = Path(path)
    if (path / "generator" / "config.json").is_file():
        path = path / "generator"
    cpath, wpath = path / "config.json", path / "model.safetensors"
    if not cpath.is_file() or not wpath.is_file():
        raise FileNotFoundError(f"{path}: not a trained baseline generator (needs config.json and "
                                f"model.safetensors; training may not have finished)")
    meta = json.loads(cpath.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{cpath}: format {meta.get('format')!r}, expected {FORMAT!r}")
    from safetensors.torch import load_file

    with rng_scope(torch.Generator().manual_seed(0)):  # the init is overwritten; keep the global RNG untouched
        G = build_generator(meta["model"])
    try:
        G.load_state_dict(load_file(str(wpath)))
    except RuntimeError as e:
        raise ValueError(f"{wpath}: weights do not match the config in {cpath} ({e})") from e
    G.difflung_config = meta
    return G.to(device).eval()


@torch.no_grad()
def generate(generator_model, labels, classes, batch_size: int = 16, device="cpu",
             generator: torch.Generator | None = None) -> np.ndarray:
    """Images (N, S, S) float32 in [-1, 1] for label maps (N, S, S) of project ids.

    Args:
        generator_model: a generator from `load_generator` (or any module mapping one-hot masks to images).
        labels: (N, S, S) project ids; every value must be in `classes`.
        classes: the one-hot channel order the model was trained with (`model.difflung_config['model']['classes']`).
        batch_size: slices per forward pass. Without `generator` results do not depend on it (normalisation
            uses running statistics); with it, the dropout noise is drawn per batch.
        device: where to run.
        generator: if given, dropout stays active as Pix2Pix's noise source at test time (as in the
            original), drawn from this generator; if None, the output is deterministic (dropout off).
            SPADE without its VAE encoder is deterministic either way.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"labels must be (N, S, S), got shape {labels.shape}")
    model = generator_model.to(device).eval()
    dropouts = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    out = []
    try:
        for m in dropouts:
            m.train(generator is not None)
        for i in range(0, len(labels), batch_size):
            mask = one_hot(labels[i:i + batch_size], classes, device)
            if generator is not None:
                with rng_scope(generator, device):
                    x = model(mask)
            else:
                x = model(mask)
            out.append(x[:, 0].float().clamp(-1, 1).cpu().numpy())
    finally:
        for m in dropouts:
            m.eval()
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0,) + labels.shape[1:], np.float32)
