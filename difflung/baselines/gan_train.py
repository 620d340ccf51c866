"""Training, saving and sampling of the GAN baselines (Pix2Pix, SPADE), shared by both.

Training folder layout (`train_gan(dataset, config, out_dir)`):
    checkpoints/step_XXXXXXXX.pt  training state (both nets, optimisers, LR schedules, generators, loss log)
    losses.csv                    one row every `log_every` steps
    generator/model.safetensors   final generator weights
    generator/discriminator.safetensors  final discriminator weights (a warm restart, `init_from`, starts from both)
    generator/config.json         model config, training config, classes, provenance (written last)

The training shell is `difflung.core.training`: data order is its `BatchOrder` with per-epoch generators seeded by
(seed, epoch); everything that uses torch's global RNG (weight init, spectral-norm vectors, dropout) runs inside
`rng_scope`, which forks the global RNG and seeds it from an explicit, checkpointed torch.Generator; the run
key, checkpoints, loss log and save format are the shell's. Same seed on CPU -> identical weights, and a run
killed and resumed from a checkpoint ends with the same weights as an uninterrupted one.

The budget is counted as the diffusion models' is: `steps` optimisation steps of `batch_size` slices.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from difflung.progress import show_progress
from difflung.core.provenance import provenance
from difflung.core.training import (BatchOrder, FolderSpec, RunFolder, load_state_dict, open_folder, rng_scope, run_key,
                        state_dict_writer)
from difflung.baselines import pix2pix, spade
from difflung.baselines.registry import build_generator, build_models, model_config

FORMAT = "difflung-gan/1"
FOLDER = FolderSpec(FORMAT, "config.json", "model.safetensors", "a trained baseline generator")
_EXECUTION_FIELDS = ("checkpoint_every", "keep_checkpoints", "log_every", "device")
_OPTIONAL_FIELDS = {"init_from": None}  # added after models were saved: keyed only when set
DISCRIMINATOR_FILE = "discriminator.safetensors"


# ---------------------------------------------------------------------------------------------------------------
# randomness and inputs

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
        init_from: a finished training folder whose generator and discriminator start this run (a warm restart
            with fresh optimisers and LR schedule); keyed by the parent's run key, not its path.
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
    init_from: str | None = None

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1:
            raise ValueError(f"steps and batch_size must be >= 1 (got {self.steps}, {self.batch_size})")

    def fingerprint(self) -> dict:
        """What must match for a checkpoint to be resumed (not the cadence or device)."""
        key = run_key(self, "", execution=_EXECUTION_FIELDS, optional=_OPTIONAL_FIELDS)["config"]
        if self.init_from is not None:  # what the warm restart starts from, wherever that folder lies
            key["init_from"] = _stored_key(open_folder(_generator_folder(self.init_from), FOLDER))
        return key


def _lr_lambda(steps: int, decay_from: float):
    start = int(steps * decay_from)
    return lambda s: 1.0 if s < start else max(0.0, 1.0 - (s - start) / max(1, steps - start))


def _stored_key(meta: dict) -> dict | None:
    """The run key of a saved generator (from its `fingerprint` for generators saved before keys were stored)."""
    if "run_key" in meta:
        return meta["run_key"]
    fp = meta.get("fingerprint") or {}
    return {"config": fp.get("train"), "dataset_sha256": fp.get("dataset_sha256"), "model": fp.get("model")}


def _optimisers(cfg: dict, G, D, config: GanTrainConfig) -> dict:
    """Both optimisers and their linearly decaying LR schedules."""
    if cfg["kind"] == "pix2pix":
        opt_g, opt_d = pix2pix.optimizers(G, D, cfg["lr_g"], tuple(cfg["betas"]))
    else:
        opt_g, opt_d = spade.optimizers(G, D, cfg["lr_g"], cfg["lr_d"], tuple(cfg["betas"]))
    sched_g = torch.optim.lr_scheduler.LambdaLR(opt_g, _lr_lambda(config.steps, config.lr_decay_from))
    sched_d = torch.optim.lr_scheduler.LambdaLR(opt_d, _lr_lambda(config.steps, config.lr_decay_from))
    return {"opt_g": opt_g, "opt_d": opt_d, "sched_g": sched_g, "sched_d": sched_d}


def run_key_of(config: GanTrainConfig, dataset) -> dict:
    """The run key a training of `config` on `dataset` stores with its generator (what reuse and resume compare)."""
    cfg = model_config(config.model, dataset.size, dataset.classes)
    return json.loads(json.dumps({"config": config.fingerprint(),
                                  "dataset_sha256": dataset.manifest["splits"]["train"]["sha256"], "model": cfg}))


def train_gan(dataset, config: GanTrainConfig, out_dir, *, resume: bool = True, stop_after: int | None = None,
              progress: bool = True) -> Path:
    """Train a baseline on `dataset.split("train")`; return the generator folder (`out_dir/generator`).

    Args:
        dataset: a `difflung.data.dataset.Dataset` (its `classes` define the one-hot channels).
        config: `GanTrainConfig`.
        out_dir: training folder (layout in the module docstring). If it already holds a finished generator
            with the same configuration, that is returned without training.
        resume: continue from the latest checkpoint in `out_dir/checkpoints` (its config must match).
        stop_after: stop (without final weights) after this many steps; for tests that simulate a crash.
        progress: show a tqdm bar.
    """
    slices = dataset.split("train")
    cfg = model_config(config.model, dataset.size, dataset.classes)
    run = RunFolder(out_dir, run_key_of(config, dataset),
                    FOLDER, keep=config.keep_checkpoints, log_name="losses.csv", model_subdir="generator",
                    stored_key=_stored_key)
    if run.finished() is not None:
        return run.model_dir
    if len(slices) == 0:
        raise ValueError(f"{dataset.root}: the train split has no slices")
    device = torch.device(config.device)
    with rng_scope(torch.Generator().manual_seed(config.seed)):
        G, D = build_models(cfg)
    if config.init_from is not None:
        _warm_start(G, D, cfg, config.init_from)
    G, D = G.to(device).train(), D.to(device).train()
    opts = _optimisers(cfg, G, D, config)
    vgg = spade.VGGLoss(config.vgg_weights).to(device) if (cfg["kind"] == "spade" and config.vgg_weights) else None
    if config.vgg_weights and cfg["kind"] != "spade":
        raise ValueError(f"vgg_weights is a SPADE option; model {config.model!r} is {cfg['kind']}")
    noise_gen = torch.Generator().manual_seed(config.seed + 1)  # dropout / spectral-norm power iterations
    modules = {"G": G, "D": D, **opts}
    start = run.resume(modules, {"noise": noise_gen}, map_location=device) if resume else 0
    order = BatchOrder(len(slices), epoch_seed=config.seed)  # pass e: randperm seeded by (seed, e)
    order.seek(start * config.batch_size)

    images = torch.as_tensor(slices.images)  # (N, S, S) float32 [-1, 1], CPU
    labels = torch.as_tensor(slices.labels)  # (N, S, S) uint8
    end = config.steps if stop_after is None else min(config.steps, stop_after)
    t0 = time.perf_counter()
    bar = tqdm(total=config.steps, initial=start, desc=config.model, disable=not show_progress(progress), leave=False)
    for step in range(start, end):
        idx = order.next(config.batch_size)  # (B,)
        real = images[idx].unsqueeze(1).to(device)  # (B, 1, S, S)
        mask = one_hot(labels[idx], cfg["classes"], device)  # (B, K, S, S)
        with rng_scope(noise_gen, device):
            if cfg["kind"] == "pix2pix":
                losses = pix2pix.train_step(G, D, opts["opt_g"], opts["opt_d"], mask, real, lambda_l1=cfg["lambda_l1"])
            else:
                losses = spade.train_step(G, D, opts["opt_g"], opts["opt_d"], mask, real,
                                          lambda_feat=cfg["lambda_feat"], lambda_vgg=cfg["lambda_vgg"], vgg=vgg)
        if not all(np.isfinite(v) for v in losses.values()):
            raise FloatingPointError(f"{config.model} step {step + 1}: non-finite loss {losses}")
        opts["sched_g"].step()
        opts["sched_d"].step()
        done = step + 1
        if done % config.log_every == 0 or done == config.steps:
            run.log.append(done, **{k: round(v, 6) for k, v in losses.items()},
                           lr_g=opts["sched_g"].get_last_lr()[0], lr_d=opts["sched_d"].get_last_lr()[0])
            bar.set_postfix({k: f"{v:.3g}" for k, v in losses.items()})
        bar.update(1)
        if done % config.checkpoint_every == 0 and done < config.steps:
            run.save_checkpoint(done, modules, {"noise": noise_gen})
    bar.close()
    run.log.write()
    if end < config.steps:
        return run.model_dir
    write_g, write_d = state_dict_writer(G, FOLDER.weights_file), state_dict_writer(D, DISCRIMINATOR_FILE)
    return run.save(lambda folder: (write_g(folder), write_d(folder)), {  # weights, then config.json (marks finished)
        "model": cfg, "train": asdict(config),
        "fingerprint": {"model": cfg, "train": config.fingerprint(), "dataset_sha256": run.key["dataset_sha256"]},
        "steps": config.steps, "images_seen": config.steps * config.batch_size,
        "params_generator": sum(p.numel() for p in G.parameters()),
        "params_discriminator": sum(p.numel() for p in D.parameters()),
        "train_seconds_last_session": round(time.perf_counter() - t0, 3),
        "vgg_loss": bool(vgg is not None), "dataset": str(dataset.root),
        "provenance": provenance(config={"model": cfg, "train": asdict(config)}, seed=config.seed, device=device),
    })


def _generator_folder(path) -> Path:
    path = Path(path)
    return path / "generator" if (path / "generator" / FOLDER.meta_file).is_file() else path


def _warm_start(G, D, cfg: dict, parent) -> None:
    """Load a finished run's generator and discriminator into G and D (same model config)."""
    folder = _generator_folder(parent)
    meta = open_folder(folder, FOLDER)
    if meta["model"] != json.loads(json.dumps(cfg)):
        raise ValueError(f"init_from={parent}: holds {meta['model'].get('name', meta['model'].get('kind'))}, "
                         f"not this run's model config")
    if not (folder / DISCRIMINATOR_FILE).is_file():
        raise FileNotFoundError(f"init_from={parent}: no {DISCRIMINATOR_FILE} (saved before warm restarts "
                                f"existed); retrain it")
    load_state_dict(G, folder / FOLDER.weights_file, folder / FOLDER.meta_file)
    load_state_dict(D, folder / DISCRIMINATOR_FILE, folder / FOLDER.meta_file)


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
    if (path / "generator" / FOLDER.meta_file).is_file():
        path = path / "generator"
    meta = open_folder(path, FOLDER)
    with rng_scope(0):  # the init is overwritten; keep the global RNG untouched
        G = build_generator(meta["model"])
    load_state_dict(G, path / FOLDER.weights_file, path / FOLDER.meta_file)
    G.difflung_config = meta
    return G.to(device).eval()


def checkpoint_generator(out_dir, dataset, device="cpu") -> torch.nn.Module:
    """The generator of a training folder's newest checkpoint (or its finished generator), in eval mode with
    `.difflung_config` ({"model", "train": {"seed", "step"}}), so a run stopped with `train_gan(stop_after=...)`
    can be scored before it finishes."""
    from difflung.core.checkpoint import latest_checkpoint

    out_dir = Path(out_dir)
    if (out_dir / "generator" / FOLDER.meta_file).is_file():
        G = load_generator(out_dir, device)
        G.difflung_config = {**G.difflung_config, "train": {**G.difflung_config["train"],
                                                             "step": G.difflung_config["steps"]}}
        return G
    ckpt = latest_checkpoint(out_dir / "checkpoints")
    if ckpt is None:
        raise FileNotFoundError(f"{out_dir}: no finished generator and no checkpoint to evaluate")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    key = state["extra"]["run_key"]
    with rng_scope(0):  # the init is overwritten; keep the global RNG untouched
        G = build_generator(key["model"])
    G.load_state_dict(state["modules"]["G"])
    G.difflung_config = {"model": key["model"], "train": {"seed": key["config"]["seed"], "step": int(state["step"])}}
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
