"""A generator's cost: parameters, GFLOPs per call (every sampling step counted) and wall seconds per image.

    c = generator_cost(g, labels, device="cpu")   # {"gflops_per_image", "params", "s_per_image"}
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch


def count_params(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Parameters of `model` (only those that require gradients when `trainable_only`)."""
    return int(sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only))


@torch.no_grad()
def gflops_per_call(model: Callable, *inputs, **kwargs) -> float:
    """GFLOPs of one call `model(*inputs, **kwargs)`, counted by torch.utils.flop_counter.FlopCounterMode.

    A multiply-add counts as 2 FLOPs (PyTorch's convention); only matmul/conv/attention ops are counted, which
    dominate these networks. Divide by the batch size for a per-image figure.
    """
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        model(*inputs, **kwargs)
    return counter.get_total_flops() / 1e9


def _sync(device) -> None:
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)


def time_per_image(fn: Callable[[int], object], n_images: int, batch_size: int, device="cpu", repeats: int = 3,
                   warmup: int = 1) -> float:
    """Median wall seconds per image of `fn(batch)`, which must produce `batch` images.

    Each repeat produces `n_images` images in batches of `batch_size` (the last batch may be smaller); CUDA is
    synchronised before the clock starts and stops. `warmup` untimed calls of a full batch come first (cuDNN
    autotuning, lazy init, compilation).
    """
    if n_images < 1 or batch_size < 1 or repeats < 1:
        raise ValueError("n_images, batch_size and repeats must be >= 1")
    for _ in range(warmup):
        fn(min(batch_size, n_images))
    _sync(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        left = n_images
        while left > 0:
            b = min(batch_size, left)
            fn(b)
            left -= b
        _sync(device)
        times.append((time.perf_counter() - t0) / n_images)
    return float(np.median(times))


def generator_cost(g, labels: np.ndarray, *, device: str = "cpu", timing_batch: int = 8,
                   timing_repeats: int = 2) -> dict:
    """A generator's cost: GFLOPs per image (every sampling step counted), parameters, and seconds per image on
    `device` at batch `timing_batch` (`time_per_image`: median of `timing_repeats` after a warm-up).

    Args:
        g: a `difflung.generators.Generator`.
        labels: (N, S, S) masks to time on (the first `timing_batch`).
        device: where `g` runs (CUDA is synchronised around the clock).
        timing_batch, timing_repeats: the batch timed and how many timed repeats.
    """
    from difflung.judging.scoring import slice_generator

    tgen = slice_generator(0, 0)
    spi = time_per_image(lambda b: g.sample(labels[:b], generator=tgen, batch_size=b), timing_batch, timing_batch,
                         device, repeats=timing_repeats)
    return {"gflops_per_image": float(g.gflops_per_image()), "params": float(g.params), "s_per_image": float(spi)}
