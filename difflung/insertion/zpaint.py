"""Painting continuous in z: each slice's windows conditioned on what is already painted on the slice below.

`painting.paint` paints slice by slice; with `InsertConfig.z_guide` or `z_rho` above 0 it hands over to `paint_z`,
which uses the same windows (`painting.plan_windows`) and the same patch model, untrained for this (no new
architecture), and adds two things:

    guide   slice k's window is painted after every window of slice k - 1 that it overlaps. During the first
            `z_guide` share of the reverse steps (the noisiest), the part of the window that slice k - 1 had
            painted is RePaint's known region, forward-diffused from slice k - 1's painted values; after that
            the model paints it freely. So the layout (what survives at high noise) carries on from slice to
            slice while the fine texture is the model's own, as SDEdit (Meng et al., "SDEdit: Guided Image
            Synthesis and Editing with Stochastic Differential Equations") keeps a guide's coarse structure.
    noise   the initial noise x_T of every window is read from one noise field per slice on the scan's frame at
            the patch spacing, an AR(1) chain in z: N_k = rho^m N_{k-m} + sqrt(1 - rho^(2m)) fresh (m: slices
            since the last painted one), so overlapping windows of adjacent slices start from correlated noise.

Windows wait only for the windows they depend on (the earlier windows of their slice and the overlapping ones of
the slice below), so separate lesions are painted side by side in one batch. Everything outside the region is
kept exactly as `paint` keeps it: only region voxels are written back.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

from difflung.data.dataset import window
from difflung.diffusion.patch_model import SPACING_KEY
from difflung.insertion.painting import window_inputs, write_back
from difflung.insertion.patches import sample_plane


def window_levels(plans: dict, sp, size: int, out_mm: float) -> dict:
    """{(slice, window index): level}: a window comes after the earlier windows of its slice and every window of
    the slice below whose painted pixels fall within its patch. Windows of one level are independent."""
    half = [(size - 1) / 2.0 * out_mm / s + 1.0 for s in sp]  # the patch's half-side in scan pixels

    def sees(c, ys, xs):  # painted pixels (ys, xs) fall within the patch centred on c
        return (ys.max() >= c[0] - half[0] and ys.min() <= c[0] + half[0]
                and xs.max() >= c[1] - half[1] and xs.min() <= c[1] + half[1])

    level = {}
    for k in sorted(plans):
        for r, (c, ys, xs) in enumerate(plans[k]):
            deps = [level[(k, r2)] for r2, (_, y2, x2) in enumerate(plans[k][:r]) if sees(c, y2, x2)]
            deps += [level[(k - 1, r2)] for r2, (_, y2, x2) in enumerate(plans.get(k - 1, ())) if sees(c, y2, x2)]
            level[(k, r)] = max(deps, default=-1) + 1
    return level


def z_noise(plans: dict, sp, size: int, out_mm: float, rho: float, generator: torch.Generator):
    """One standard-normal field per painted slice on the scan's frame at out_mm, AR(1) in z with `rho`.

    Returns ({slice: (H, W) float32 tensor}, origin (row, col) of the fields in grid units); `window_noise`
    reads a window's x_T from them.
    """
    corners = np.array([_corner(c, sp, size, out_mm) for k in plans for c, _, _ in plans[k]])
    origin = corners.min(axis=0)
    shape = tuple(int(v) for v in corners.max(axis=0) - origin + size)
    fields, prev = {}, None
    for k in sorted(plans):
        fresh = torch.randn(shape, generator=generator)
        if prev is None or rho == 0:
            fields[k] = fresh
        else:
            a = rho ** (k - prev)
            fields[k] = a * fields[prev] + np.sqrt(1.0 - a * a) * fresh
        prev = k
    return fields, origin


def _corner(c, sp, size: int, out_mm: float) -> np.ndarray:
    """Grid index (row, col) on the scan's out_mm frame of a window's first patch pixel."""
    return np.array([int(np.rint(c[i] * sp[i] / out_mm - (size - 1) / 2.0)) for i in (0, 1)])


def window_noise(fields, origin, k: int, c, sp, size: int, out_mm: float) -> torch.Tensor:
    """The (1, S, S) initial noise of slice k's window centred on c, read from the slice's noise field."""
    y0, x0 = _corner(c, sp, size, out_mm) - origin
    return fields[k][y0:y0 + size, x0:x0 + size].unsqueeze(0)


def paint_z(work: np.ndarray, cond: np.ndarray, region: np.ndarray, plans: dict, sp, unet, meta: dict, cfg,
            generator: torch.Generator, *, device=None, progress: bool = False) -> tuple[np.ndarray, dict]:
    """`painting.paint`'s work with continuity in z (module docstring); `work` (float32 HU) is written in place
    on `region` only. Args as `paint`, with `cond` the model's label map and `plans` the windows of each slice.
    Returns (work, info)."""
    from tqdm import tqdm

    from difflung.progress import show_progress

    size, out_mm = int(meta["sample_size"]), float(meta[SPACING_KEY])
    level = window_levels(plans, sp, size, out_mm)
    n_levels = max(level.values(), default=-1) + 1
    fields, origin = z_noise(plans, sp, size, out_mm, cfg.z_rho, generator) if plans else ({}, None)
    for lv in tqdm(range(n_levels), disable=not show_progress(progress), desc="insert", unit="level"):
        items = [(k, plans[k][r]) for (k, r), v in sorted(level.items()) if v == lv]
        imgs, known, labs, guide, guided, noise = [], [], [], [], [], []
        for k, (c, ys, xs) in items:
            img, lab, kn = window_inputs(work, cond, k, (c, ys, xs), sp, size, out_mm)
            imgs.append(img)
            labs.append(lab)
            known.append(kn)
            below = k - 1 in plans  # slice k - 1 painted (before this level): its painted part guides
            guide.append(window(sample_plane(work[k - 1], c, sp, size, out_mm)) if below else imgs[-1])
            was = sample_plane(region[k - 1].astype(np.float32), c, sp, size, out_mm, cval=0.0) if below else 0.0
            guided.append(~known[-1] & (np.asarray(was) > 0.5))
            noise.append(window_noise(fields, origin, k, c, sp, size, out_mm))
        out = repaint_guided(unet, meta, np.stack(imgs), np.stack(known), np.stack(labs), np.stack(guide),
                             np.stack(guided), torch.stack(noise), generator=generator, cfg=cfg, device=device)
        write_back(work, items, out, sp, size, out_mm)
    return work, {"slices_edited": len(plans), "windows": sum(len(p) for p in plans.values()), "rounds": n_levels}


@torch.no_grad()
def repaint_guided(unet, meta: dict, images, known, labels, guide, guided, noise, *, generator: torch.Generator,
                   cfg, device=None) -> np.ndarray:
    """RePaint (`difflung.diffusion.inpaint.inpaint`'s sampler) with a guide for the first reverse steps.

    Args:
        unet, meta: the patch model and its metadata.
        images, known, labels: (N, S, S) windows in [-1, 1], True where kept, the condition (as `inpaint`).
        guide: (N, S, S) in [-1, 1]: the values the `guided` pixels are pulled towards.
        guided: (N, S, S) bool, unknown pixels that are known (as `guide`) while t >= (1 - cfg.z_guide) T.
        noise: (N, 1, S, S) x_T of each window.
        generator: CPU torch.Generator for the sampler's own noise (known part, jumps, eta > 0 steps).
        cfg: `InsertConfig` (steps, jump_length, jump_n_sample, eta, batch_size, z_guide).
    Returns (N, S, S) float32, equal to `images` wherever `known`.
    """
    from difflung.diffusion.inpaint import _check, make_repaint_scheduler, v_to_epsilon
    from difflung.diffusion.model import channel_index, check_size, encode_mask

    images, known, guided = (np.asarray(a) for a in (images, known, guided))
    labels = torch.as_tensor(np.asarray(labels))
    check_size(images.shape, int(meta["sample_size"]), "patch")
    channel_index(labels, meta["classes"])
    ns = meta["noise_schedule"]
    _check(cfg.steps, cfg.jump_length, cfg.jump_n_sample, ns["num_train_timesteps"])
    sched = make_repaint_scheduler(ns, cfg.eta)
    v_model = ns.get("prediction_type", "epsilon") == "v_prediction"
    device = torch.device(device) if device is not None else unet.device
    ctx = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    unet = unet.to(device).eval()
    t_guide = (1.0 - float(cfg.z_guide)) * ns["num_train_timesteps"]  # guided while t >= t_guide
    out = images.astype(np.float32, copy=True)
    for lo in range(0, len(images), int(cfg.batch_size)):
        idx = np.arange(lo, min(lo + int(cfg.batch_size), len(images)))
        x0 = torch.from_numpy(images[idx]).unsqueeze(1).float().to(device)
        keep = torch.from_numpy(known[idx]).unsqueeze(1).to(device, torch.float32)
        keep_g = torch.from_numpy(known[idx] | guided[idx]).unsqueeze(1).to(device, torch.float32)
        x0_g = torch.from_numpy(np.where(known[idx], images[idx], guide[idx])).unsqueeze(1).float().to(device)
        cond = encode_mask(labels[idx], meta["classes"], meta["mask_mode"]).to(device)
        x = noise[idx].to(device)
        sched.set_timesteps(int(cfg.steps), int(cfg.jump_length), int(cfg.jump_n_sample), device=device)
        t_last = sched.timesteps[0] + 1
        for t in sched.timesteps:
            if t < t_last:
                with ctx:
                    eps = unet(torch.cat([x, cond], dim=1), t).sample.float()
                if v_model:
                    eps = v_to_epsilon(eps, x, t, sched.alphas_cumprod)
                early = float(t) >= t_guide
                x = sched.step(eps, t, x, x0_g if early else x0, keep_g if early else keep,
                               generator=generator).prev_sample
            else:
                x = sched.undo_step(x, t_last, generator=generator)
            t_last = t
        gen = x.clamp(-1, 1)[:, 0].float().cpu().numpy()
        out[idx] = np.where(known[idx], images[idx], gen)
    return out
