"""Sampling CT slices from label masks with a trained model: DDIM, DPM-Solver++ (deterministic, or its stochastic
SDE form), or ancestral DDPM.

    unet, meta = load_model("runs/smoke/03_cbmat_training/model")
    x = sample(unet, meta, masks, generator=torch.Generator().manual_seed(0))   # (N, S, S) in [-1, 1]
    hu = to_hu(x)

Masks are project-id label maps; pixels set to UNSPECIFIED (255) leave their class to the model (partial
masks, `remove_classes`). The initial noise of all N images is drawn up front from the CPU generator, so DDIM
and DPM-Solver++ results do not depend on the batch size or the device beyond float rounding; DDPM also draws
noise at every step, in batch order. With a list of generators (one per mask, as in diffusers pipelines) image i
draws all its noise from generator i, so it does not depend on the other masks of the call: the common random
numbers of `difflung.judging.scoring`.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from difflung.progress import show_progress
from difflung.data.dataset import unwindow
from difflung.diffusion.model import UNSPECIFIED, channel_index, check_size, encode_mask

DEFAULT_STEPS = {"ddim": 50, "dpm": 20, "dpm-sde": 20, "ddpm": 1000}
MAX_DPM_STEPS = 25  # DPM-Solver++ (2nd order multistep) is meant for few steps
# Samplers that draw fresh noise at every step (they take the generator in `step`). Whether the stochastic
# DPM-Solver++ beats the deterministic one is measured by benchmarks/bench_convergence.py --sampler dpm-sde
# (at 64 px: within the sampling-seed noise; reference/laptop/NOTES.md has the numbers).
STOCHASTIC = ("dpm-sde", "ddpm")


def make_scheduler(sampler: str, noise_schedule: dict):
    """The diffusers scheduler of `sampler` for a model trained with `noise_schedule` (meta["noise_schedule"])."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

    ns = {k: noise_schedule[k] for k in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule",
                                         "prediction_type")}
    if sampler == "ddim":
        return DDIMScheduler(**ns, clip_sample=noise_schedule.get("clip_sample", True))
    if sampler in ("dpm", "dpm-sde"):
        # thresholding with sample_max_value 1 clips the predicted x0 to [-1, 1], as DDIM's clip_sample; under the
        # cosine schedule the first steps are clipped at lambda -5.1 (diffusers' advice: its log-SNR diverges at T)
        clip = {"lambda_min_clipped": -5.1} if ns["beta_schedule"] == "squaredcos_cap_v2" else {}
        algorithm = "dpmsolver++" if sampler == "dpm" else "sde-dpmsolver++"
        return DPMSolverMultistepScheduler(**ns, algorithm_type=algorithm, solver_order=2, **clip,
                                           thresholding=noise_schedule.get("clip_sample", True), sample_max_value=1.0)
    if sampler == "ddpm":
        return DDPMScheduler(**ns, clip_sample=noise_schedule.get("clip_sample", True))
    raise ValueError(f"sampler {sampler!r}: expected one of {sorted(DEFAULT_STEPS)}")


def _steps(sampler: str, steps: int | None) -> int:
    if sampler not in DEFAULT_STEPS:
        raise ValueError(f"sampler {sampler!r}: expected one of {sorted(DEFAULT_STEPS)}")
    steps = DEFAULT_STEPS[sampler] if steps is None else int(steps)
    if not 1 <= steps <= 1000:
        raise ValueError(f"steps={steps}: must lie in 1..1000")
    if sampler.startswith("dpm") and steps > MAX_DPM_STEPS:
        raise ValueError(f"DPM-Solver++ with {steps} steps: use at most {MAX_DPM_STEPS} (its point is few steps; "
                         f"use sampler='ddim' for more)")
    return steps


def remove_classes(labels, class_ids) -> np.ndarray:
    """A partial mask: the pixels of `class_ids` (project ids) become UNSPECIFIED. labels: (..., H, W)."""
    out = np.array(labels, dtype=np.uint8, copy=True)
    out[np.isin(out, list(class_ids))] = UNSPECIFIED
    return out


@torch.no_grad()
def sample(unet, meta: dict, labels, *, generator: torch.Generator | list, sampler: str = "ddim", steps: int | None = None,
           batch_size: int = 16, device=None, autocast: bool | None = None, progress: bool = False) -> np.ndarray:
    """Generate one CT slice per label mask.

    Args:
        unet: the trained `UNet2DModel` (`load_model`).
        meta: its difflung_config.json (classes, mask_mode, noise_schedule with the model's prediction_type
            ("epsilon" or "v_prediction"), sample_size).
        labels: (N, H, W) project-id masks (numpy or torch integers); UNSPECIFIED (255) where not given.
        generator: CPU torch.Generator for the initial noise (and the per-step noise of the STOCHASTIC samplers),
            or a list of N of them, one per mask.
        sampler: "ddim" (eta = 0), "dpm" (DPM-Solver++ 2M), "dpm-sde" (its stochastic form, SDE-DPM-Solver++ 2M:
            fresh noise from `generator` at every step) or "ddpm" (ancestral, the reference).
        steps: solver steps; None: 50 for DDIM, 20 for DPM-Solver++ (at most 25), 1000 for DDPM.
        batch_size: masks per UNet batch.
        device: where to run (default: the UNet's device).
        autocast: bf16 autocast; None: on CUDA only.
        progress: show a tqdm bar over batches.

    Returns:
        (N, H, W) float32 in [-1, 1] (the model window, `to_hu` maps it to HU).
    """
    from tqdm import tqdm

    steps = _steps(sampler, steps)
    gens = list(generator) if isinstance(generator, (list, tuple)) else None
    if not all(isinstance(g, torch.Generator) and g.device.type == "cpu" for g in gens or [generator]):
        raise TypeError("generator must be a CPU torch.Generator or a list of them (noise is drawn on the CPU, "
                        "then moved)")
    labels = torch.as_tensor(np.asarray(labels) if not torch.is_tensor(labels) else labels)
    if labels.ndim == 2:
        labels = labels[None]
    check_size(labels.shape, int(meta["sample_size"]))
    channel_index(labels, meta["classes"])  # clear error on labels outside the class map, before any work
    device = torch.device(device) if device is not None else unet.device
    autocast = device.type == "cuda" if autocast is None else autocast
    unet = unet.to(device).eval()
    n, s = labels.shape[0], labels.shape[-1]
    if gens is not None and len(gens) != n:
        raise ValueError(f"{len(gens)} generators for {n} masks: pass one generator, or one per mask")
    if gens is None:
        noise = torch.randn((n, 1, s, s), generator=generator)  # (N, 1, S, S) x_T of every image, drawn up front
    else:
        noise = torch.cat([torch.randn((1, 1, s, s), generator=g) for g in gens]) if n else torch.empty(0, 1, s, s)
    sched = make_scheduler(sampler, meta["noise_schedule"])
    out = np.empty((n, s, s), dtype=np.float32)
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    for lo in tqdm(range(0, n, batch_size), disable=not show_progress(progress), desc=f"sample {sampler}-{steps}"):
        hi = min(lo + batch_size, n)
        cond = encode_mask(labels[lo:hi], meta["classes"], meta["mask_mode"]).to(device)  # (b, C, S, S)
        x = noise[lo:hi].to(device)  # (b, 1, S, S)
        sched.set_timesteps(steps, device=device)  # also resets DPM-Solver++'s history
        for t in sched.timesteps:
            with ctx:
                # (b, 1, S, S): epsilon or v, as the scheduler's prediction_type (the model's) says
                out_t = unet(torch.cat([x, cond], dim=1), t).sample.float()
            step_gen = generator if gens is None else gens[lo:hi]  # diffusers draws per image from a list
            kw = {"eta": 0.0} if sampler == "ddim" else {"generator": step_gen} if sampler in STOCHASTIC else {}
            x = sched.step(out_t, t, x, **kw).prev_sample
        out[lo:hi] = x.clamp(-1, 1)[:, 0].float().cpu().numpy()
    return out


def to_hu(x, window_hu=None) -> np.ndarray:
    """[-1, 1] model output -> HU on the model window ([-1000, 400] unless `window_hu` says otherwise)."""
    return unwindow(x) if window_hu is None else unwindow(x, tuple(window_hu))


def forward_flops(unet, size: int | None = None) -> int:
    """FLOPs of one UNet forward for one image (torch.utils.flop_counter, counted on the meta device)."""
    from diffusers import UNet2DModel
    from torch.utils.flop_counter import FlopCounterMode

    size = int(size or unet.config.sample_size)
    with torch.device("meta"):
        m = UNet2DModel.from_config(unet.config)  # shapes only, no memory, no compute
        x = torch.zeros(1, unet.config.in_channels, size, size)
        t = torch.tensor([500])
    with FlopCounterMode(display=False) as counter:
        m(x, t)
    return int(counter.get_total_flops())


def sampling_gflops(unet, meta: dict, sampler: str = "ddim", steps: int | None = None, size: int | None = None) -> float:
    """GFLOPs to sample one image: one UNet forward per solver step (DDIM, DPM-Solver++ 2M and DDPM all take
    one) times the steps; the schedulers' elementwise updates are negligible and not counted.

    Args:
        unet: the model (only its config is used).
        meta: its metadata (unused beyond validation; kept for a uniform signature).
        sampler, steps: as in `sample`.
        size: image side (default: the model's sample_size). The attention blocks stay where the model's
            config puts them, so for another size's cost build the model for that size (`build_unet`).
    """
    return forward_flops(unet, size or meta.get("sample_size")) * _steps(sampler, steps) / 1e9
