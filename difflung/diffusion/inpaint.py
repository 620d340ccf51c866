"""Background-preserving sampling (RePaint) for the mask-conditioned model: generate only where a lesion goes.

    x = inpaint(unet, meta, images, known, labels, generator=torch.Generator().manual_seed(0))

diffusers' `RePaintScheduler` drives the reverse process; the conditional UNet only supplies the noise estimate
eps(x_t, t | label map) (a v-prediction model's v is turned into that estimate first, `v_to_epsilon`). At every
step the known region is the real patch forward-diffused to that step,
q(x_{t-1} | x_0) = sqrt(abar) x_0 + sqrt(1 - abar) noise, the unknown region comes from the model (a DDIM step,
eta = 0, or ancestral with eta = 1), and the two are joined by the mask (LeFusion's
`x = m_bg * q_sample(x0_real, t) + (1 - m_bg) * x`). Resampling jumps (RePaint's j and r: every `jump_length`
steps the sample is re-noised `jump_length` steps and denoised again, `jump_n_sample` times in all) let the
generated region agree with its context; `network_calls` says what they cost.

Whatever the sampler does, the returned patches hold the input's values, copied, wherever `known` is True.
All noise is drawn from the CPU generator passed in, in batch order: same generator, same batch size, same
patches.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from difflung.progress import show_progress
from difflung.diffusion.model import channel_index, check_size, encode_mask


PREDICTION_TYPES = ("epsilon", "v_prediction")  # what the model may predict; RePaint's step takes epsilon


def make_repaint_scheduler(noise_schedule: dict, eta: float = 0.0):
    """diffusers' RePaintScheduler for a model trained with `noise_schedule` (eps- or v-prediction)."""
    from diffusers import RePaintScheduler

    if noise_schedule.get("prediction_type", "epsilon") not in PREDICTION_TYPES:
        raise ValueError(f"RePaint needs an epsilon or v_prediction model; this one predicts "
                         f"{noise_schedule['prediction_type']!r}")
    if not 0.0 <= eta <= 1.0:
        raise ValueError(f"eta={eta}: must lie in [0, 1] (0: DDIM steps, 1: DDPM steps)")
    return RePaintScheduler(num_train_timesteps=noise_schedule["num_train_timesteps"],
                            beta_start=noise_schedule["beta_start"], beta_end=noise_schedule["beta_end"],
                            beta_schedule=noise_schedule["beta_schedule"], eta=eta,
                            clip_sample=noise_schedule.get("clip_sample", True))


def v_to_epsilon(v: torch.Tensor, x_t: torch.Tensor, t, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """The noise estimate of a v-prediction model: eps = sqrt(1 - abar_t) x_t + sqrt(abar_t) v.

    (v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 and x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, Salimans and
    Ho 2022.) RePaint's step needs eps; abar_t is the scheduler's `alphas_cumprod` at the integer timestep t.
    """
    abar = alphas_cumprod[int(t)].to(device=x_t.device, dtype=torch.float32)
    return (1.0 - abar).sqrt() * x_t.float() + abar.sqrt() * v.float()


def _check(steps: int, jump_length: int, jump_n_sample: int, num_train_timesteps: int = 1000) -> None:
    if not 1 <= int(steps) <= num_train_timesteps:
        raise ValueError(f"steps={steps}: must lie in 1..{num_train_timesteps}")
    if int(jump_length) < 1 or int(jump_n_sample) < 1:
        raise ValueError(f"jump_length={jump_length}, jump_n_sample={jump_n_sample}: both must be >= 1 "
                         "(jump_n_sample=1: no resampling)")


def network_calls(steps: int, jump_length: int = 10, jump_n_sample: int = 1, num_train_timesteps: int = 1000) -> int:
    """UNet forwards per patch for these settings (RePaint's schedule: steps plus the resampled ones)."""
    from diffusers import RePaintScheduler

    _check(steps, jump_length, jump_n_sample, num_train_timesteps)
    s = RePaintScheduler(num_train_timesteps=num_train_timesteps)
    s.set_timesteps(int(steps), int(jump_length), int(jump_n_sample))
    ts = s.timesteps.tolist()
    return int(sum(t < prev for prev, t in zip([ts[0] + 1] + ts[:-1], ts)))


@torch.no_grad()
def inpaint(unet, meta: dict, images, known, labels, *, generator: torch.Generator, steps: int = 50,
            jump_length: int = 10, jump_n_sample: int = 1, eta: float = 0.0, batch_size: int = 16, device=None,
            autocast: bool | None = None, progress: bool = False) -> np.ndarray:
    """Regenerate the unknown part of each patch, conditioned on its label map, keeping the known part.

    Args:
        unet: the mask-conditioned `UNet2DModel` (`load_model`).
        meta: its difflung_config.json (classes, mask_mode, noise_schedule with prediction_type "epsilon" or
            "v_prediction", sample_size).
        images: (N, S, S) real patches in the model window [-1, 1].
        known: (N, S, S) bool, True where the real patch is kept (background), False where the model paints.
        labels: (N, S, S) project-id label maps: the condition (UNSPECIFIED = 255 where not given).
        generator: CPU torch.Generator: initial noise, forward-diffused known region, ancestral and jump noise.
        steps: reverse steps (RePaint spacing: num_train_timesteps // steps).
        jump_length, jump_n_sample: RePaint's resampling (j, r); jump_n_sample=1 disables it.
        eta: 0 DDIM steps for the unknown region, 1 DDPM (ancestral) steps.
        batch_size: patches per UNet batch.
        device: where to run (default: the UNet's device); autocast: bf16 autocast (None: on CUDA only).
        progress: tqdm bar over batches.

    Returns:
        (N, S, S) float32 in [-1, 1]; equal to `images` (the same values) wherever `known` is True.
    """
    from tqdm import tqdm

    images = np.asarray(images, dtype=np.float32)
    known = np.asarray(known, dtype=bool)
    labels = torch.as_tensor(np.asarray(labels))
    if images.ndim != 3 or known.shape != images.shape or tuple(labels.shape) != images.shape:
        raise ValueError(f"images {images.shape}, known {known.shape} and labels {tuple(labels.shape)} must all be "
                         "the same (N, S, S)")
    check_size(images.shape, int(meta["sample_size"]), "patch")
    channel_index(labels, meta["classes"])  # clear error on labels outside the class map, before any work
    if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
        raise TypeError("generator must be a CPU torch.Generator (noise is drawn on the CPU, then moved)")
    ns = meta["noise_schedule"]
    _check(steps, jump_length, jump_n_sample, ns["num_train_timesteps"])
    sched = make_repaint_scheduler(ns, eta)
    v_model = ns.get("prediction_type", "epsilon") == "v_prediction"
    device = torch.device(device) if device is not None else unet.device
    autocast = device.type == "cuda" if autocast is None else autocast
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    unet = unet.to(device).eval()
    n, s = images.shape[0], images.shape[-1]
    out = images.copy()
    todo = np.flatnonzero(~known.reshape(n, -1).all(axis=1))  # patches with something to paint
    noise = torch.randn((len(todo), 1, s, s), generator=generator)  # x_T of every painted patch, drawn up front
    for lo in tqdm(range(0, len(todo), batch_size), disable=not show_progress(progress), desc="inpaint"):
        idx = todo[lo:lo + batch_size]
        x0 = torch.from_numpy(images[idx]).unsqueeze(1).to(device)  # (b, 1, S, S)
        keep = torch.from_numpy(known[idx]).unsqueeze(1).to(device, torch.float32)  # (b, 1, S, S), 1 = known
        cond = encode_mask(labels[idx], meta["classes"], meta["mask_mode"]).to(device)  # (b, C, S, S)
        x = noise[lo:lo + len(idx)].to(device)
        sched.set_timesteps(int(steps), int(jump_length), int(jump_n_sample), device=device)
        t_last = sched.timesteps[0] + 1
        for t in sched.timesteps:
            if t < t_last:  # a reverse step: model for the unknown part, q(x_{t-1} | x_0) for the known part
                with ctx:
                    eps = unet(torch.cat([x, cond], dim=1), t).sample.float()  # (b, 1, S, S): eps or v
                if v_model:
                    eps = v_to_epsilon(eps, x, t, sched.alphas_cumprod)
                x = sched.step(eps, t, x, x0, keep, generator=generator).prev_sample
            else:  # a resampling jump: forward-diffuse the joined sample back to t
                x = sched.undo_step(x, t_last, generator=generator)
            t_last = t
        gen = x.clamp(-1, 1)[:, 0].float().cpu().numpy()
        out[idx] = np.where(known[idx], images[idx], gen)  # the known pixels are copied, not recomputed
    return out
