"""Training the mask-guided DDPM: eps-prediction, AdamW + cosine warm-up, EMA, mask ablation, checkpoints.

    result = train_diffusion("runs/smoke/01_data_preparation/dataset", TrainConfig(steps=300), "runs/x/model")

Single process on CPU or one GPU, or several GPUs with `accelerate launch`. Every step draws one global batch
(data order, ablation, noise and timesteps from three explicit torch.Generators on the CPU) and each process
takes its share, so the run does not depend on the number of processes beyond float reduction order, and a
run killed at step k and resumed from its checkpoint ends with the same weights as an uninterrupted one.

The output folder is the model: `save_pretrained` files (safetensors; `UNet2DModel.from_pretrained(dir)` loads
it), `difflung_config.json` (classes, frequencies, ablation, config, seed, dataset, provenance, timings, written
last: its presence means finished), `loss.csv`, and `checkpoints/` while training.
"""
from __future__ import annotations

import contextlib
import json
import os
import resource
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..progress import show_progress
from .. import labels as L
from ..checkpoint import latest_checkpoint, load_training_state, save_training_state
from ..dataset import Dataset
from ..provenance import device_description, provenance, write_json_atomic, write_text_atomic
from .ablation import AblationSchedule, ablation_frequencies
from .model import UNSPECIFIED, build_unet, channel_map, encode_mask

FORMAT = "difflung-diffusion/1"
META_FILE = "difflung_config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
# DDPM of Ho et al. and of the parent: T = 1000, linear betas 1e-4..0.02, eps-prediction
NOISE_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
                  "prediction_type": "epsilon", "clip_sample": True}
# fields that change how a run is executed or stored, not what it computes
_EXECUTION_FIELDS = {"checkpoint_every", "keep_checkpoints", "log_every"}


@dataclass
class TrainConfig:
    """Training settings; the defaults are the smoke profile's model with the parent's optimiser.

    Args:
        preset: UNet size (`model.PRESETS`): tiny, small, base, paper, efficient.
        mask_mode: "onehot" (Diff-Lung) or "single" (the parent's k/255 channel).
        strategy: mask ablation strategy (`ablation.STRATEGIES`).
        steps: optimisation steps; also T of the cosine-annealed ablation.
        batch_size: global batch (split across processes under `accelerate launch`).
        lr, weight_decay: AdamW.
        warmup: linear warm-up steps of the cosine LR schedule; None: the parent's 500, at most steps // 10.
        grad_clip: max gradient norm.
        ema_decay: maximum EMA decay (diffusers' EMAModel warms up as (1 + t) / (10 + t)); None: no EMA.
        checkpoint_every: steps between training-state checkpoints in `<out_dir>/checkpoints`.
        keep_checkpoints: how many checkpoints to keep while training (all are removed when it finishes).
        mixed_precision: "auto" (bf16 autocast on CUDA, fp32 on CPU), "bf16" or "no".
        channels_last: NHWC memory format on CUDA.
        compile: torch.compile the UNet (CUDA only).
        seed: seeds the weights and the data-order, ablation and noise generators.
        split: dataset split to train on.
        log_every: steps between loss values fetched from the device (tqdm postfix).
    """

    preset: str = "small"
    mask_mode: str = "onehot"
    strategy: str = "cbmat"
    steps: int = 300
    batch_size: int = 8
    lr: float = 1e-4
    weight_decay: float = 1e-2
    warmup: int | None = None
    grad_clip: float = 1.0
    ema_decay: float | None = 0.999
    checkpoint_every: int = 1000
    keep_checkpoints: int = 1
    mixed_precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    seed: int = 0
    split: str = "train"
    log_every: int = 10

    def result_key(self) -> dict:
        return {k: v for k, v in asdict(self).items() if k not in _EXECUTION_FIELDS}


@dataclass
class TrainResult:
    model_dir: Path
    loss_csv: Path
    wall_s: float  # this call, setup included
    peak_mem_bytes: int  # CUDA: max allocated; CPU: the process's peak resident set size
    images_per_s: float  # training images per second over this call's steps but its first
    device: str
    steps: int  # steps done in total
    finished: bool  # the final model is saved (False after `stop_after`)
    reused: bool = False  # an existing finished model with the same config and data was returned


class _BatchOrder:
    """Epoch-wise random permutations of the training slices; a module-like state for checkpoints."""

    def __init__(self, n: int, generator: torch.Generator):
        self.n, self.generator = n, generator
        self.perm, self.pos = torch.randperm(n, generator=generator), 0

    def next(self, batch: int) -> torch.Tensor:
        out = []
        while batch > 0:
            if self.pos == self.n:
                self.perm, self.pos = torch.randperm(self.n, generator=self.generator), 0
            take = min(batch, self.n - self.pos)
            out.append(self.perm[self.pos:self.pos + take])
            self.pos, batch = self.pos + take, batch - take
        return torch.cat(out)

    def state_dict(self) -> dict:
        return {"perm": self.perm, "pos": self.pos, "generator": self.generator.get_state()}

    def load_state_dict(self, s: dict) -> None:
        if len(s["perm"]) != self.n:
            raise ValueError(f"checkpoint's data order covers {len(s['perm'])} slices, the dataset has {self.n}")
        self.perm, self.pos = s["perm"].clone(), int(s["pos"])
        self.generator.set_state(s["generator"])


def _generators(seed: int) -> dict[str, torch.Generator]:
    # independent streams from one seed (numpy's SeedSequence), on the CPU so that CPU and GPU runs draw alike
    states = np.random.SeedSequence(seed).generate_state(4)
    return {k: torch.Generator().manual_seed(int(s)) for k, s in zip(("init", "data", "ablation", "noise"), states)}


@contextlib.contextmanager
def _seeded_global_rng(gen: torch.Generator):
    """nn.Module initialisers draw from the global RNG: run them from `gen`'s seed, restoring it afterwards."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(gen.initial_seed())
        yield


def _accelerator(device: str, mixed_precision: str):
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device {device!r}: expected 'auto', 'cpu' or 'cuda' (under accelerate launch, "
                         f"the launcher assigns GPUs)")
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' but torch finds no CUDA device")
    cpu = device == "cpu" or not torch.cuda.is_available()
    if mixed_precision not in ("auto", "bf16", "no"):
        raise ValueError(f"mixed_precision {mixed_precision!r}: expected 'auto', 'bf16' or 'no'")
    mp = "no" if cpu or mixed_precision == "no" else "bf16"  # bf16 autocast on CUDA only
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # a single process may train several models with different precision (benchmarks, chapter 2);
        # accelerate keeps one global state per process, so reset it (never under `accelerate launch`)
        AcceleratorState._reset_state(True)
    return Accelerator(cpu=cpu, mixed_precision=mp)


def _open_dataset(data) -> Dataset:
    return data if isinstance(data, Dataset) else Dataset(data)


def _dataset_info(ds: Dataset, split: str) -> dict:
    info = ds.manifest["splits"][split]
    return {"path": str(ds.root), "split": split, "sha256": info["sha256"], "n_slices": info["n_slices"],
            "source": ds.manifest.get("source", ""), "size": ds.size, "classes": ds.classes}


def _peak_memory(dev: torch.device) -> int:
    if dev.type == "cuda":
        return int(torch.cuda.max_memory_allocated(dev))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def _write_losses(path: Path, rows: list[tuple[int, float, float]]) -> None:
    write_text_atomic(path, "step,loss,lr\n" + "".join(f"{s},{l:.8g},{r:.8g}\n" for s, l, r in rows))


def _read_losses(path: Path, upto: int) -> list[tuple[int, float, float]]:
    if not path.is_file():
        return []
    rows = [line.split(",") for line in path.read_text().splitlines()[1:] if line]
    return [(int(s), float(l), float(r)) for s, l, r in rows if int(s) <= upto]


def _same_run(ckpt: Path, config: TrainConfig, data_sha: str) -> bool:
    """Whether checkpoint `ckpt` belongs to this config and training data (so the run can resume from it)."""
    try:
        extra = torch.load(ckpt, map_location="cpu", weights_only=True)["extra"]
    except Exception:  # unreadable: not resumable either
        return False
    saved = {k: v for k, v in extra.get("config", {}).items() if k not in _EXECUTION_FIELDS}
    return saved == config.result_key() and extra.get("dataset_sha256") == data_sha


def _clear(out_dir: Path) -> None:
    """Remove a model folder's training outputs (metadata first, so a half-cleared folder is never 'finished')."""
    for name in (META_FILE, WEIGHTS_FILE, "config.json", "loss.csv"):
        (out_dir / name).unlink(missing_ok=True)
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)


def _finished(out_dir: Path, config: TrainConfig, ds: Dataset) -> dict | None:
    """The stored metadata if `out_dir` holds a finished model of this config and data, else None."""
    mpath = out_dir / META_FILE
    if not mpath.is_file() or not (out_dir / WEIGHTS_FILE).is_file():
        return None
    meta = json.loads(mpath.read_text())
    same_cfg = {k: v for k, v in meta.get("train_config", {}).items() if k not in _EXECUTION_FIELDS} == config.result_key()
    same_data = meta.get("dataset", {}).get("sha256") == _dataset_info(ds, config.split)["sha256"]
    return meta if same_cfg and same_data else None


def train_diffusion(data, config: TrainConfig, out_dir, device: str = "auto", *, progress: bool = True,
                    stop_after: int | None = None, reuse: bool = True, overwrite: bool = False) -> TrainResult:
    """Train the mask-guided DDPM on a dataset artifact and save it to `out_dir`.

    Args:
        data: a `difflung.dataset.Dataset` or the path of one.
        config: the `TrainConfig`.
        out_dir: the model folder (created); an unfinished run in it resumes from its latest checkpoint.
        device: "auto" (CUDA when available), "cpu" or "cuda".
        progress: show a tqdm bar.
        stop_after: stop once this many steps are done in total, checkpoint and return `finished=False`
            (time-sliced jobs; the resume test). A later call resumes.
        reuse: return a finished model in `out_dir` trained with the same config on the same data instead of
            retraining.
        overwrite: replace what `out_dir` holds when it cannot be reused or resumed (a finished model or
            checkpoints of another config or dataset, or any finished model when reuse=False); without it
            that is an error.

    Returns:
        TrainResult (model folder, loss CSV, wall time, peak memory, images/s, device).
    """
    from diffusers import DDPMScheduler
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel
    from tqdm import tqdm

    t_start = time.perf_counter()
    cfg, out_dir = config, Path(out_dir)
    ds = _open_dataset(data)
    for f in fields(cfg):
        if f.name in ("steps", "batch_size", "checkpoint_every", "log_every", "keep_checkpoints") and getattr(cfg, f.name) < 1:
            raise ValueError(f"TrainConfig.{f.name}={getattr(cfg, f.name)}: must be >= 1")
    meta = _finished(out_dir, cfg, ds) if reuse else None
    if meta is not None:
        tr = meta["training"]
        return TrainResult(out_dir, out_dir / "loss.csv", tr["wall_s"], tr["peak_mem_bytes"], tr["images_per_s"],
                           tr["device"], tr["steps"], True, reused=True)
    if (out_dir / META_FILE).is_file():
        if not overwrite:
            what = "another config or dataset" if reuse else "a finished model (reuse=False)"
            raise FileExistsError(f"{out_dir}: holds a finished model of {what}; choose another folder or pass "
                                  f"overwrite=True to replace it")
        _clear(out_dir)

    slices = ds.split(cfg.split)
    classes, size = ds.classes, ds.size
    if slices.labels.shape[1:] != slices.images.shape[1:]:
        raise ValueError(f"{ds.root}: {cfg.split} labels {slices.labels.shape[1:]} != images {slices.images.shape[1:]}")
    freqs = ablation_frequencies(ds, cfg.split)
    schedule = AblationSchedule(cfg.strategy, classes, freqs, cfg.steps)
    images = torch.from_numpy(slices.images).unsqueeze(1)  # (N, 1, S, S) float32 in [-1, 1]
    labs = torch.from_numpy(slices.labels)  # (N, S, S) uint8 project ids

    acc = _accelerator(device, cfg.mixed_precision)
    dev, world, rank = acc.device, acc.num_processes, acc.process_index
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {world} processes")
    gens = _generators(cfg.seed)
    with _seeded_global_rng(gens["init"]):
        unet = build_unet(len(classes), size, cfg.mask_mode, cfg.preset)
    cuda = dev.type == "cuda"
    mem_format = torch.channels_last if cuda and cfg.channels_last else torch.contiguous_format
    unet.to(dev, memory_format=mem_format)
    noise_sched = DDPMScheduler(**NOISE_SCHEDULE)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    warmup = min(500, cfg.steps // 10) if cfg.warmup is None else cfg.warmup
    if warmup >= cfg.steps:
        raise ValueError(f"TrainConfig.warmup={warmup} must be smaller than steps={cfg.steps}")
    # not passed to accelerate.prepare, which would step it once per process: stepped once per global step
    lr_sched = get_cosine_schedule_with_warmup(opt, warmup, cfg.steps)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, foreach=cuda) if cfg.ema_decay else None
    model, opt = acc.prepare(unet, opt)
    if cfg.compile and cuda:
        model = torch.compile(model)
    order = _BatchOrder(len(images), gens["data"])

    ckpt_dir = out_dir / "checkpoints"
    modules = {"unet": unet, "optimizer": opt, "lr_scheduler": lr_sched, "data_order": order}
    if ema is not None:
        modules["ema"] = ema
    state_gens = {"ablation": gens["ablation"], "noise": gens["noise"]}
    step, losses = 0, []
    data_sha = _dataset_info(ds, cfg.split)["sha256"]
    if (ckpt := latest_checkpoint(ckpt_dir)) is not None and overwrite and not _same_run(ckpt, cfg, data_sha):
        _clear(out_dir)
        ckpt = None
    if ckpt is not None:
        try:
            state = load_training_state(ckpt, modules=modules, generators=state_gens, map_location=dev)
        except (RuntimeError, KeyError, ValueError) as e:  # e.g. weights of another preset or class map
            raise ValueError(f"{ckpt}: cannot resume from this checkpoint ({e}); use another out_dir") from e
        saved = {k: v for k, v in state["extra"].get("config", {}).items() if k not in _EXECUTION_FIELDS}
        if saved != cfg.result_key():
            diff = {k: (saved.get(k), v) for k, v in cfg.result_key().items() if saved.get(k) != v}
            raise ValueError(f"{ckpt}: written with another config, (saved, now): {diff}; "
                             f"resume with the same config, use another out_dir or pass overwrite=True")
        if state["extra"].get("dataset_sha256") != data_sha:
            raise ValueError(f"{ckpt}: written for other training data than {ds.root} ({cfg.split}); "
                             f"use another out_dir or pass overwrite=True")
        step = state["step"]
        if ema is not None:
            ema.to(dev)
        losses = _read_losses(out_dir / "loss.csv", step)
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)

    def checkpoint(k: int) -> None:
        if acc.is_main_process:
            _write_losses(out_dir / "loss.csv", losses)
            save_training_state(ckpt_dir / f"step_{k:08d}.pt", step=k, modules=modules, generators=state_gens,
                                extra={"config": asdict(cfg), "dataset_sha256": data_sha})
            old = sorted(ckpt_dir.glob("step_*.pt"))[:-cfg.keep_checkpoints]
            for p in old:
                p.unlink()

    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    pending: list[tuple[int, torch.Tensor, float]] = []  # losses kept on the device until the next flush
    bar = tqdm(total=cfg.steps, initial=step, disable=not (show_progress(progress) and acc.is_main_process),
               desc=f"train {cfg.strategy}", unit="step")
    # throughput excludes this call's first step (allocator warm-up, cuDNN autotuning, torch.compile)
    t_loop, first = time.perf_counter(), step
    model.train()
    while step < end:
        # one global batch, drawn identically on every process from the CPU generators
        idx = order.next(cfg.batch_size)  # (B,)
        lab = schedule.apply(labs[idx], step, gens["ablation"])  # (B, S, S), ablated -> UNSPECIFIED
        noise = torch.randn(images[idx].shape, generator=gens["noise"])  # (B, 1, S, S)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (len(idx),), generator=gens["noise"])
        part = slice(rank, None, world)
        x0, noise, t = images[idx][part].to(dev), noise[part].to(dev), t[part].to(dev)
        cond = encode_mask(lab[part], classes, cfg.mask_mode).to(dev)  # (b, C, S, S)
        x_t = noise_sched.add_noise(x0, noise, t)  # q(x_t | x_0)
        inp = torch.cat([x_t, cond], dim=1).contiguous(memory_format=mem_format)  # (b, 1 + C, S, S)
        with acc.autocast():
            pred = model(inp, t).sample
        loss = F.mse_loss(pred.float(), noise)
        acc.backward(loss)
        acc.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
        lr_now = lr_sched.get_last_lr()[0]
        opt.step()
        lr_sched.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(unet.parameters())
        step += 1
        pending.append((step, acc.reduce(loss.detach(), "mean"), lr_now))
        bar.update(1)
        if step == first + 1 and end - first > 1:
            if cuda:
                torch.cuda.synchronize(dev)
            t_loop = time.perf_counter()
        if step % cfg.log_every == 0 or step == end or step % cfg.checkpoint_every == 0:
            losses += [(s, float(l), r) for s, l, r in pending]
            pending = []
            bar.set_postfix(loss=f"{losses[-1][1]:.4f}")
        if step % cfg.checkpoint_every == 0 or (step == end and end < cfg.steps):
            checkpoint(step)
    bar.close()
    if cuda:
        torch.cuda.synchronize(dev)
    loop_s = time.perf_counter() - t_loop
    timed = step - first - (1 if step - first > 1 else 0)
    ips = timed * cfg.batch_size / loop_s if timed > 0 else float("nan")
    result = TrainResult(out_dir, out_dir / "loss.csv", 0.0, _peak_memory(dev), ips, device_description(dev), step,
                         finished=step >= cfg.steps)
    if result.finished and acc.is_main_process:
        _write_losses(out_dir / "loss.csv", losses)
        with torch.random.fork_rng(devices=[]):  # its random init is overwritten: leave the global RNG alone
            final = build_unet(len(classes), size, cfg.mask_mode, cfg.preset)
        final.load_state_dict(unet.state_dict())
        if ema is not None:
            ema.copy_to(final.parameters())
        result.wall_s = time.perf_counter() - t_start  # stored as is: saving takes well under a second
        _save_model(final.to("cpu", memory_format=torch.contiguous_format), out_dir, {
            "format": FORMAT, "classes": classes, "class_names": L.names(classes),
            "channel_map": {str(k): v for k, v in channel_map(classes).items()}, "unspecified": UNSPECIFIED,
            "mask_mode": cfg.mask_mode, "preset": cfg.preset, "sample_size": size, "window_hu": list(L.MODEL_WINDOW),
            "frequencies": freqs, "frequency_definition": "share of the non-background pixels of the training split",
            "ablation": schedule.describe(), "noise_schedule": NOISE_SCHEDULE, "weights": "ema" if ema else "raw",
            "train_config": asdict(cfg), "seed": cfg.seed, "dataset": _dataset_info(ds, cfg.split),
            "training": {"steps": step, "wall_s": result.wall_s, "images_per_s": ips,
                         "peak_mem_bytes": result.peak_mem_bytes, "device": result.device,
                         "final_loss": losses[-1][1] if losses else None, "processes": world},
            "provenance": provenance(config=asdict(cfg), seed=cfg.seed, device=dev),
        })
        shutil.rmtree(ckpt_dir, ignore_errors=True)
    acc.wait_for_everyone()
    if not result.wall_s:  # unfinished, or not the main process
        result.wall_s = time.perf_counter() - t_start
    return result


def _save_model(unet, out_dir: Path, meta: dict) -> None:
    """save_pretrained (safetensors) into a temporary folder, move the files in, write the metadata last."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".model.", dir=out_dir))
    try:
        unet.save_pretrained(tmp, safe_serialization=True)
        for p in tmp.iterdir():
            os.replace(p, out_dir / p.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_json_atomic(out_dir / META_FILE, meta)


class ModelLoadError(ValueError):
    """A model folder that is not a finished difflung model, is not safetensors, or fits another class map."""


def load_model(model_dir, dataset=None, device="cpu"):
    """Load a trained model without unpickling anything.

    Args:
        model_dir: folder written by `train_diffusion`.
        dataset: optional `Dataset` (or path); its classes and image size must match the model's.
        device: where to put the UNet.

    Returns:
        (unet in eval mode, meta dict of difflung_config.json).
    """
    from diffusers import UNet2DModel

    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise FileNotFoundError(f"{model_dir}: no model folder here; train it first (train_diffusion)")
    if not (model_dir / WEIGHTS_FILE).is_file():
        pickled = sorted(p.name for p in model_dir.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
        what = f"only pickle-based weights ({', '.join(pickled)}), which difflung never loads" if pickled else "no weights"
        raise ModelLoadError(f"{model_dir}: no {WEIGHTS_FILE}; the folder holds {what}. Save models with "
                             f"save_pretrained(..., safe_serialization=True)")
    mpath = model_dir / META_FILE
    if not mpath.is_file():
        raise ModelLoadError(f"{mpath}: missing, so the class map is unknown (not a finished difflung model)")
    meta = json.loads(mpath.read_text())
    if meta.get("format") != FORMAT:
        raise ModelLoadError(f"{mpath}: format {meta.get('format')!r}, expected {FORMAT!r}")
    if dataset is not None:
        ds = _open_dataset(dataset)
        if list(ds.classes) != list(meta["classes"]):
            raise ModelLoadError(
                f"{model_dir}: trained on classes {meta['classes']} ({', '.join(meta['class_names'])}) but the "
                f"dataset {ds.root} has classes {ds.classes} ({', '.join(L.names(ds.classes))})")
        if ds.size != meta["sample_size"]:
            raise ModelLoadError(f"{model_dir}: trained at {meta['sample_size']} px, dataset {ds.root} is {ds.size} px")
    unet = UNet2DModel.from_pretrained(model_dir, use_safetensors=True)
    return unet.to(device).eval(), meta
