"""Training the mask-guided DDPM: eps- or v-prediction, AdamW + cosine warm-up, EMA, mask ablation, checkpoints.

    result = train_diffusion("runs/smoke/01_data_preparation/dataset", TrainConfig(steps=300), "runs/x/model")

Single process on CPU or one GPU, or several GPUs with `accelerate launch`. Every step draws one global batch
(data order, ablation, noise and timesteps from three explicit torch.Generators on the CPU) and each process
takes its share, so the run does not depend on the number of processes beyond float reduction order, and a
run killed at step k and resumed from its checkpoint ends with the same weights as an uninterrupted one.

The RNG scope, batch order, run key, loss log, checkpoints and save/load convention are the training shell's
(`difflung.core.training`). The output folder is the model: `save_pretrained` files (safetensors;
`UNet2DModel.from_pretrained(dir)` loads it), `difflung_config.json` (classes, frequencies, ablation, config,
seed, dataset, run key, provenance, timings, written last: its presence means finished), `loss.csv`, and
`checkpoints/` while training.
"""
from __future__ import annotations

import json
import os
import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from difflung.progress import show_progress
from difflung import labels as L
from difflung.data.dataset import Dataset
from difflung.core.provenance import device_description, provenance
from difflung.core.training import (BatchOrder, FolderSpec, ModelLoadError, RunFolder, open_folder, rng_scope, run_key,
                        seed_streams)
from difflung.diffusion.ablation import AblationSchedule, ablation_frequencies
from difflung.diffusion.model import UNSPECIFIED, build_unet, channel_map, encode_mask

FORMAT = "difflung-diffusion/1"
META_FILE = "difflung_config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
# DDPM of Ho et al. and of the parent: T = 1000, linear betas 1e-4..0.02, eps-prediction
NOISE_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 1e-4, "beta_end": 0.02, "beta_schedule": "linear",
                  "prediction_type": "epsilon", "clip_sample": True}
# fields that change how a run is executed or stored, not what it computes
_EXECUTION_FIELDS = ("checkpoint_every", "keep_checkpoints", "log_every")
# fields added after models were saved: in the run key only when they differ from these defaults
_OPTIONAL_FIELDS = {"prediction_type": "epsilon", "snr_gamma": None, "lesion_weight": 0.0, "lesion_classes": (),
                    "beta_schedule": "linear", "low_t_share": 0.0, "init_from": None, "low_res_share": 0.0}
BETA_SCHEDULES = ("linear", "squaredcos_cap_v2")  # diffusers' names; every sampler of difflung supports both
PREDICTION_TYPES = ("epsilon", "v_prediction")
FOLDER = FolderSpec(FORMAT, META_FILE, WEIGHTS_FILE, "a finished difflung diffusion model", ("config.json",))


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
        mixed_precision: "auto" (bf16 autocast on CUDA, fp32 on CPU), "bf16" (on CPU too) or "no".
        channels_last: NHWC memory format on CUDA.
        compile: torch.compile the UNet (CUDA only).
        seed: seeds the weights and the data-order, ablation and noise generators.
        split: dataset split to train on.
        log_every: steps between loss values fetched from the device (tqdm postfix).
        prediction_type: what the UNet predicts: "epsilon" (the noise, Ho et al.) or "v_prediction"
            (v = sqrt(a_t) eps - sqrt(1 - a_t) x0, Salimans & Ho 2022; target `DDPMScheduler.get_velocity`).
            Stored in the model's noise schedule, so `sample` builds its schedulers with the same type.
            Default v: in benchmarks/bench_convergence.py (phantom, 64 px, `small`, 500 steps) epsilon models
            give grey, noisy air with the deterministic samplers, v models do not.
        snr_gamma: min-SNR-gamma loss weighting (Hang et al. 2023): each image's loss is weighted by
            min(SNR(t), gamma) / SNR(t) for epsilon and min(SNR(t), gamma) / (SNR(t) + 1) for v targets
            (`min_snr_weights`); None: unweighted.
        lesion_weight, lesion_classes: lesion-focused loss: pixels whose (unablated) label is one of
            `lesion_classes` weigh 1 + lesion_weight, every other pixel 1, and each image's loss is the
            weighted mean (so lesion_weight 0 is the plain loss).
        beta_schedule: the DDPM noise schedule, "linear" (Ho et al., the parent's) or "squaredcos_cap_v2" (the
            cosine schedule of Nichol & Dhariwal 2021, which spends fewer of the 1,000 timesteps on images that
            are already pure noise at small sizes). Stored in the model's noise schedule, like prediction_type.
        low_t_share: share of each batch's timesteps drawn from the lowest tenth of the schedule (the least noisy
            images, where CT noise and fine texture are resolved), the rest uniform (`draw_timesteps`); 0: uniform.
        init_from: a finished model folder whose (EMA) weights start this run instead of a random init: a warm
            restart (Loshchilov & Hutter, SGDR) that trains a model on with a fresh LR schedule and, for CBMAT, a
            fresh annealing over `steps`. The run key holds the parent's run key, not its path.
        low_res_share: progressive resolution: the first `low_res_share` of the steps train at half the size
            (images area-averaged 2x2, one-hot masks likewise, so a pixel's condition holds each class's share of
            it), at about a quarter of the step cost; the convolutional UNet then trains on at full size. 0: off.
        mixed_precision: "auto" is bf16 autocast on CUDA and fp32 on the CPU; "bf16" is bf16 autocast on either
            (a CPU lever: on CPUs with native bf16, e.g. AVX512-BF16, about 1.4x faster per step; slower elsewhere).
        The last six enter the run key only when they differ from the values models had before they existed
        (epsilon, no min-SNR, no lesion weight, linear betas), so older keys stay valid and a v model never reuses
        an eps one.
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
    prediction_type: str = "v_prediction"
    snr_gamma: float | None = None
    lesion_weight: float = 0.0
    lesion_classes: tuple[int, ...] = ()
    beta_schedule: str = "linear"
    low_t_share: float = 0.0
    init_from: str | None = None
    low_res_share: float = 0.0

    def __post_init__(self):
        self.lesion_classes = tuple(int(c) for c in self.lesion_classes)  # lists from JSON or the CLI

    def result_key(self) -> dict:
        """The fields that change what training computes (the config part of the run key)."""
        return run_key(self, "", execution=_EXECUTION_FIELDS, optional=_OPTIONAL_FIELDS)["config"]


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


def _key(cfg: TrainConfig, data_sha: str) -> dict:
    key = run_key(cfg, data_sha, execution=_EXECUTION_FIELDS, optional=_OPTIONAL_FIELDS)
    parent = key["config"].get("init_from")
    if isinstance(parent, str):  # a warm restart is keyed by what it starts from, wherever that folder lies
        key["config"]["init_from"] = _stored_key(open_folder(Path(parent), FOLDER))
    return key


def run_key_of(cfg: TrainConfig, data) -> dict:
    """The run key a training of `cfg` on `data` stores with its model (what reuse and resume compare)."""
    ds = _open_dataset(data)
    return json.loads(json.dumps(_key(cfg, _dataset_info(ds, cfg.split)["sha256"])))


def _stored_key(meta: dict) -> dict:
    """The run key of a saved model (recomputed from its config for models saved before keys were stored)."""
    return meta.get("run_key") or _key(meta.get("train_config", {}), meta.get("dataset", {}).get("sha256"))


def noise_schedule(cfg: TrainConfig) -> dict:
    """The DDPM noise schedule of a config (stored as the model's meta["noise_schedule"])."""
    return {**NOISE_SCHEDULE, "prediction_type": cfg.prediction_type, "beta_schedule": cfg.beta_schedule}


def draw_timesteps(n: int, num_train_timesteps: int, low_share: float, generator: torch.Generator) -> torch.Tensor:
    """(n,) training timesteps: uniform over the schedule, except that each one is, with probability `low_share`,
    drawn uniformly from its lowest tenth instead. With low_share 0 it draws exactly what `torch.randint` alone
    draws (older runs resume bit-exactly)."""
    t = torch.randint(0, num_train_timesteps, (n,), generator=generator)
    if low_share > 0:
        low = torch.randint(0, max(1, num_train_timesteps // 10), (n,), generator=generator)
        t = torch.where(torch.rand(n, generator=generator) < low_share, low, t)
    return t


def min_snr_weights(noise_sched, t: torch.Tensor, gamma: float, prediction_type: str = "epsilon") -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023) of timesteps `t` (b,), as in diffusers' training scripts.

    SNR(t) = a_t / (1 - a_t) with a_t the cumulative alpha product. Weighting the x0-error by min(SNR, gamma)
    is, for an epsilon target, a weight min(SNR, gamma) / SNR on the epsilon MSE, and for a v target
    min(SNR, gamma) / (SNR + 1) on the v MSE.
    """
    from diffusers.training_utils import compute_snr

    snr = compute_snr(noise_sched, t)  # (b,)
    clipped = torch.clamp(snr, max=gamma)
    return clipped / snr if prediction_type == "epsilon" else clipped / (snr + 1)


def diffusion_loss(pred: torch.Tensor, target: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None,
                   cfg: TrainConfig, noise_sched) -> torch.Tensor:
    """The training loss: MSE of the UNet output against its target, with optional lesion and min-SNR weights.

    Args:
        pred, target: (b, 1, S, S) float32.
        t: (b,) timesteps.
        labels: (b, S, S) project ids of the images (not ablated: lesions count even when hidden from the mask);
            only read when `cfg.lesion_weight` > 0.
        cfg: `lesion_weight`, `lesion_classes`, `snr_gamma`, `prediction_type`.
        noise_sched: the training DDPMScheduler (for SNR).
    """
    if not cfg.lesion_weight and cfg.snr_gamma is None:
        return F.mse_loss(pred, target)  # the plain loss, bit for bit
    se = (pred - target).pow(2)  # (b, 1, S, S)
    if cfg.lesion_weight:
        lesion = torch.isin(labels, torch.tensor(cfg.lesion_classes, device=labels.device))  # (b, S, S)
        w = 1.0 + cfg.lesion_weight * lesion.unsqueeze(1).float()  # (b, 1, S, S)
        per_image = (se * w).sum((1, 2, 3)) / w.sum((1, 2, 3))  # weighted mean per image
    else:
        per_image = se.mean((1, 2, 3))
    if cfg.snr_gamma is not None:
        per_image = per_image * min_snr_weights(noise_sched, t, cfg.snr_gamma, cfg.prediction_type)
    return per_image.mean()


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
    # "auto": bf16 autocast on CUDA only; "bf16" asks for it on the CPU too
    mp = "no" if mixed_precision == "no" or (cpu and mixed_precision == "auto") else "bf16"
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


def _check(cfg: TrainConfig) -> int:
    """Validate the config; return the warm-up steps."""
    for name in ("steps", "batch_size", "checkpoint_every", "log_every", "keep_checkpoints"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"TrainConfig.{name}={getattr(cfg, name)}: must be >= 1")
    if cfg.prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"TrainConfig.prediction_type={cfg.prediction_type!r}: expected one of {PREDICTION_TYPES}")
    if cfg.beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"TrainConfig.beta_schedule={cfg.beta_schedule!r}: expected one of {BETA_SCHEDULES}")
    if cfg.snr_gamma is not None and not cfg.snr_gamma > 0:
        raise ValueError(f"TrainConfig.snr_gamma={cfg.snr_gamma}: must be > 0 (or None: no min-SNR weighting)")
    if not cfg.lesion_weight >= 0 or (cfg.lesion_weight > 0 and not cfg.lesion_classes):
        raise ValueError(f"TrainConfig.lesion_weight={cfg.lesion_weight}: must be >= 0, and > 0 needs lesion_classes")
    if not 0 <= cfg.low_t_share < 1:
        raise ValueError(f"TrainConfig.low_t_share={cfg.low_t_share}: must lie in [0, 1)")
    if not 0 <= cfg.low_res_share < 1:
        raise ValueError(f"TrainConfig.low_res_share={cfg.low_res_share}: must lie in [0, 1)")
    warmup = min(500, cfg.steps // 10) if cfg.warmup is None else cfg.warmup
    if warmup >= cfg.steps:
        raise ValueError(f"TrainConfig.warmup={warmup} must be smaller than steps={cfg.steps}")
    return warmup


def _prepare_folder(run: RunFolder, reuse: bool, overwrite: bool) -> None:
    """Make `run`'s folder trainable: refuse or clear a finished model, or checkpoints of another run key."""
    if (run.model_dir / META_FILE).is_file():
        if not overwrite:
            what = "another config or dataset" if reuse else "a finished model (reuse=False)"
            raise FileExistsError(f"{run.root}: holds a finished model of {what}; choose another folder or pass "
                                  f"overwrite=True to replace it")
        run.clear()
    if overwrite and (ckpt := run.latest_checkpoint()) is not None and run.checkpoint_key(ckpt) != run.key:
        run.clear()


def _training_data(ds: Dataset, split: str):
    """(images (N, 1, S, S) float32 in [-1, 1], labels (N, S, S) uint8 project ids) of a split."""
    slices = ds.split(split)
    if slices.labels.shape[1:] != slices.images.shape[1:]:
        raise ValueError(f"{ds.root}: {split} labels {slices.labels.shape[1:]} != images {slices.images.shape[1:]}")
    return torch.from_numpy(slices.images).unsqueeze(1), torch.from_numpy(slices.labels)


def train_diffusion(data, config: TrainConfig, out_dir, device: str = "auto", *, progress: bool = True,
                    stop_after: int | None = None, reuse: bool = True, overwrite: bool = False) -> TrainResult:
    """Train the mask-guided DDPM on a dataset artifact and save it to `out_dir`.

    Args:
        data: a `difflung.data.dataset.Dataset` or the path of one.
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
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    t_start = time.perf_counter()
    cfg, ds = config, _open_dataset(data)
    warmup = _check(cfg)
    run = RunFolder(out_dir, _key(cfg, _dataset_info(ds, cfg.split)["sha256"]), FOLDER, keep=cfg.keep_checkpoints,
                    stored_key=_stored_key)
    if reuse and (meta := run.finished()) is not None:
        return _reused(run, meta)
    _prepare_folder(run, reuse, overwrite)
    acc = _accelerator(device, cfg.mixed_precision)
    gens = seed_streams(cfg.seed, ("init", "data", "ablation", "noise"))
    batches = _Batches(ds, cfg, gens, acc)
    with rng_scope(gens["init"].initial_seed()):  # nn.Module initialisers draw from the global RNG
        unet = build_unet(len(ds.classes), ds.size, cfg.mask_mode, cfg.preset)
    if cfg.init_from is not None:
        _warm_start(unet, cfg, ds)
    unet.to(acc.device, memory_format=batches.mem_format)
    opt = torch.optim.AdamW(unet.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    # not passed to accelerate.prepare, which would step it once per process: stepped once per global step
    lr_sched = get_cosine_schedule_with_warmup(opt, warmup, cfg.steps)
    ema = EMAModel(unet.parameters(), decay=cfg.ema_decay, foreach=batches.cuda) if cfg.ema_decay else None
    model, opt = acc.prepare(unet, opt)
    if cfg.compile and batches.cuda:
        model = torch.compile(model)
    modules = {"unet": unet, "optimizer": opt, "lr_scheduler": lr_sched, "data_order": batches.order,
               **({"ema": ema} if ema is not None else {})}
    step = run.resume(modules, batches.generators, map_location=acc.device)
    if step and ema is not None:
        ema.to(acc.device)
    end = cfg.steps if stop_after is None else min(cfg.steps, stop_after)
    meter = _Meter(cfg, run, acc, step, end, progress)
    model.train()
    while step < end:
        inp, t, target, lesion_labels = batches.draw(step)  # this process's share of one global batch
        with acc.autocast():
            pred = model(inp, t).sample  # (b, 1, S, S)
        loss = diffusion_loss(pred.float(), target, t, lesion_labels, cfg, batches.noise_sched)
        acc.backward(loss)
        acc.clip_grad_norm_(unet.parameters(), cfg.grad_clip)
        lr_now = lr_sched.get_last_lr()[0]
        opt.step()
        lr_sched.step()
        opt.zero_grad(set_to_none=True)
        if ema is not None:
            ema.step(unet.parameters())
        step += 1
        meter.record(step, acc.reduce(loss.detach(), "mean"), lr_now)
        if (step % cfg.checkpoint_every == 0 or (step == end and end < cfg.steps)) and acc.is_main_process:
            run.save_checkpoint(step, modules, batches.generators)
    result = meter.result(step)
    if result.finished and acc.is_main_process:
        result.wall_s = time.perf_counter() - t_start  # stored as is: saving takes well under a second
        _save_final(run, cfg, ds, unet, ema, batches, result, acc)
    acc.wait_for_everyone()
    if not result.wall_s:  # unfinished, or not the main process
        result.wall_s = time.perf_counter() - t_start
    return result


def _warm_start(unet, cfg: TrainConfig, ds: Dataset) -> None:
    """Load `cfg.init_from`'s weights into `unet` (a checkpoint resumed later overrides them)."""
    parent, meta = load_model(cfg.init_from, ds)
    tc = meta.get("train_config", {})
    if (tc.get("mask_mode"), tc.get("preset")) != (cfg.mask_mode, cfg.preset):
        raise ValueError(f"init_from={cfg.init_from}: a {tc.get('preset')} model with {tc.get('mask_mode')} masks "
                         f"cannot start a {cfg.preset} model with {cfg.mask_mode} masks")
    unet.load_state_dict(parent.state_dict())


def _reused(run: RunFolder, meta: dict) -> TrainResult:
    tr = meta["training"]
    return TrainResult(run.root, run.log.path, tr["wall_s"], tr["peak_mem_bytes"], tr["images_per_s"], tr["device"],
                       tr["steps"], True, reused=True)


class _Batches:
    """The training split, its ablation schedule and the CPU streams of data order, ablation and noise.

    `draw(step)` draws one global batch identically on every process, and returns this process's share, so a
    run does not depend on the number of processes beyond float reduction order.
    """

    def __init__(self, ds: Dataset, cfg: TrainConfig, gens: dict, acc):
        from diffusers import DDPMScheduler

        if cfg.batch_size % acc.num_processes:
            raise ValueError(f"batch_size {cfg.batch_size} is not divisible by the {acc.num_processes} processes")
        self.images, self.labs = _training_data(ds, cfg.split)  # (N, 1, S, S) float32, (N, S, S) uint8
        self.freqs = ablation_frequencies(ds, cfg.split)
        self.schedule = AblationSchedule(cfg.strategy, ds.classes, self.freqs, cfg.steps)
        self.noise_sched = DDPMScheduler(**noise_schedule(cfg))
        self.order, self.gens = BatchOrder(len(self.images), gens["data"]), gens
        self.generators = {"ablation": gens["ablation"], "noise": gens["noise"]}  # checkpointed with the modules
        self.cfg, self.classes, self.dev = cfg, ds.classes, acc.device
        self.low_res_steps = round(cfg.low_res_share * cfg.steps)  # progressive resolution: these steps at S/2
        self.part = slice(acc.process_index, None, acc.num_processes)
        self.cuda = acc.device.type == "cuda"
        self.mem_format = torch.channels_last if self.cuda and cfg.channels_last else torch.contiguous_format

    def draw(self, step: int):
        """(UNet input (b, 1 + C, S, S), timesteps (b,), target (b, 1, S, S), unablated labels (b, S, S) or None)."""
        cfg, dev, part = self.cfg, self.dev, self.part
        idx = self.order.next(cfg.batch_size)  # (B,)
        lab = self.schedule.apply(self.labs[idx], step, self.gens["ablation"])  # (B, S, S), ablated -> UNSPECIFIED
        noise = torch.randn(self.images[idx].shape, generator=self.gens["noise"])  # (B, 1, S, S)
        t = draw_timesteps(len(idx), self.noise_sched.config.num_train_timesteps, cfg.low_t_share, self.gens["noise"])
        x0, noise, t = self.images[idx][part].to(dev), noise[part].to(dev), t[part].to(dev)
        cond = encode_mask(lab[part], self.classes, cfg.mask_mode).to(dev)  # (b, C, S, S)
        if step < self.low_res_steps:  # progressive resolution: (b, *, S/2, S/2), noise of that size from its stream
            x0, cond = F.avg_pool2d(x0, 2), F.avg_pool2d(cond, 2)
            noise = noise[..., ::2, ::2].contiguous()  # i.i.d. N(0, 1) stays so; the stream advances as at full size
        x_t = self.noise_sched.add_noise(x0, noise, t)  # q(x_t | x_0)
        target = noise if cfg.prediction_type == "epsilon" else self.noise_sched.get_velocity(x0, noise, t)
        inp = torch.cat([x_t, cond], dim=1).contiguous(memory_format=self.mem_format)  # (b, 1 + C, S, S)
        lesion = self.labs[idx][part].to(dev) if cfg.lesion_weight else None  # lesions hidden from the mask count
        if lesion is not None and step < self.low_res_steps:
            lesion = lesion[..., ::2, ::2]
        return inp, t, target, lesion


class _Meter:
    """The progress bar, the loss log (losses stay on the device until a flush) and the throughput timing."""

    def __init__(self, cfg: TrainConfig, run: RunFolder, acc, step: int, end: int, progress: bool):
        from tqdm import tqdm

        self.cfg, self.run, self.dev, self.end = cfg, run, acc.device, end
        if self.dev.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.dev)
        self.pending: list[tuple[int, torch.Tensor, float]] = []
        self.bar = tqdm(total=cfg.steps, initial=step, unit="step", desc=f"train {cfg.strategy}",
                        disable=not (show_progress(progress) and acc.is_main_process))
        # throughput excludes this call's first step (allocator warm-up, cuDNN autotuning, torch.compile)
        self.t_loop, self.first = time.perf_counter(), step

    def _sync(self) -> None:
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)

    def record(self, step: int, loss: torch.Tensor, lr: float) -> None:
        cfg = self.cfg
        self.pending.append((step, loss, lr))
        self.bar.update(1)
        if step == self.first + 1 and self.end - self.first > 1:
            self._sync()
            self.t_loop = time.perf_counter()
        if step % cfg.log_every == 0 or step == self.end or step % cfg.checkpoint_every == 0:
            for s, l, r in self.pending:
                self.run.log.append(s, loss=float(l), lr=r)
            self.pending = []
            self.bar.set_postfix(loss=f"{self.run.log.rows[-1]['loss']:.4f}")

    def result(self, step: int) -> TrainResult:
        self.bar.close()
        self._sync()
        loop_s = time.perf_counter() - self.t_loop
        timed = step - self.first - (1 if step - self.first > 1 else 0)
        ips = timed * self.cfg.batch_size / loop_s if timed > 0 else float("nan")
        return TrainResult(self.run.root, self.run.log.path, 0.0, _peak_memory(self.dev), ips,
                           device_description(self.dev), step, finished=step >= self.cfg.steps)


def _save_final(run: RunFolder, cfg: TrainConfig, ds: Dataset, unet, ema, batches: _Batches, result: TrainResult,
                acc) -> None:
    """Save the EMA (or raw) weights with save_pretrained and the model's difflung_config.json."""
    classes, dev, world = ds.classes, acc.device, acc.num_processes
    with rng_scope(0):  # its random init is overwritten: leave the global RNG alone
        final = build_unet(len(classes), ds.size, cfg.mask_mode, cfg.preset)
    final.load_state_dict(unet.state_dict())
    if ema is not None:
        ema.copy_to(final.parameters())
    final = final.to("cpu", memory_format=torch.contiguous_format)
    losses = run.log.rows
    run.save(lambda tmp: final.save_pretrained(tmp, safe_serialization=True), {
        "classes": classes, "class_names": L.names(classes),
        "channel_map": {str(k): v for k, v in channel_map(classes).items()}, "unspecified": UNSPECIFIED,
        "mask_mode": cfg.mask_mode, "preset": cfg.preset, "sample_size": ds.size, "window_hu": list(L.MODEL_WINDOW),
        "frequencies": batches.freqs,
        "frequency_definition": "share of the non-background pixels of the training split",
        "ablation": batches.schedule.describe(), "noise_schedule": noise_schedule(cfg), "weights": "ema" if ema else "raw",
        "train_config": asdict(cfg), "seed": cfg.seed, "dataset": _dataset_info(ds, cfg.split),
        "training": {"steps": result.steps, "wall_s": result.wall_s, "images_per_s": result.images_per_s,
                     "peak_mem_bytes": result.peak_mem_bytes, "device": result.device,
                     "final_loss": losses[-1]["loss"] if losses else None, "processes": world},
        "provenance": provenance(config=asdict(cfg), seed=cfg.seed, device=dev),
    })


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
    meta = open_folder(model_dir, FOLDER)
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


def checkpoint_model(model_dir, ds: Dataset, *, ema: bool = True):
    """The weights of a run's newest checkpoint (or of its finished model) as (unet, meta) for `sample`, so a
    training stopped with `train_diffusion(stop_after=...)` can be scored before it finishes.

    Args:
        model_dir: the `train_diffusion` output folder.
        ds: the dataset it trains on (classes and size).
        ema: the EMA weights when the run keeps an EMA (else the raw weights).
    Returns:
        (UNet2DModel in eval mode on the CPU, meta with classes, mask_mode, sample_size, noise_schedule, seed, step,
        weights ("ema" or "raw")).
    """
    from difflung.core.checkpoint import latest_checkpoint

    model_dir = Path(model_dir)
    if (model_dir / META_FILE).is_file():  # finished: save_pretrained holds the EMA weights when there is an EMA
        unet, meta = load_model(model_dir, ds)
        return unet, {**meta, "step": meta["training"]["steps"]}
    ckpt = latest_checkpoint(model_dir / "checkpoints")
    if ckpt is None:
        raise FileNotFoundError(f"{model_dir}: no finished model and no checkpoint to evaluate")
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    cfg = TrainConfig(**{k: v for k, v in state["extra"]["run_key"]["config"].items()
                         if k in TrainConfig.__dataclass_fields__})
    with rng_scope(0):  # its init is overwritten: leave the global RNG alone
        unet = build_unet(len(ds.classes), ds.size, cfg.mask_mode, cfg.preset)
    unet.load_state_dict(state["modules"]["unet"])
    use_ema = ema and "ema" in state["modules"]
    if use_ema:
        for p, s in zip(unet.parameters(), state["modules"]["ema"]["shadow_params"]):
            p.data.copy_(s)
    meta = {"classes": ds.classes, "mask_mode": cfg.mask_mode, "sample_size": ds.size, "seed": cfg.seed,
            "noise_schedule": noise_schedule(cfg), "step": int(state["step"]), "weights": "ema" if use_ema else "raw"}
    return unet.eval(), meta

def trained_with(model_dir, data, config: TrainConfig) -> bool:
    """Whether `model_dir` holds a finished model of `config` on `data`: the model `train_diffusion` would reuse.

    Lets a chapter take another chapter's model when their configurations match (chapter 3's main model is chapter
    2's CBMAT run when both use the same preset, budget, seed and data) instead of training it twice.
    """
    meta_path = Path(model_dir) / META_FILE
    if not meta_path.is_file():
        return False
    ds = _open_dataset(data)
    import json

    return _stored_key(json.loads(meta_path.read_text())) == _key(config, _dataset_info(ds, config.split)["sha256"])
