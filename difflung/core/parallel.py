"""Independent trainings side by side: worker processes with one torch thread each.

    results = run_jobs(fit_one, [(arm, seed) for arm in arms for seed in seeds], workers=2)

Why: the models of this project are small, and one training does not keep two CPU cores busy (measured on a
2-core machine: a diffusion step of the `small` preset at 64 px takes 0.44 s wall with two threads and 0.60 CPU s
with one), so k single-thread trainings in k processes do about 1.45x the work per second of the same trainings
run one after another with every thread. Chapters 4 and 5 train many independent models (seeds x arms); a
profile's `workers` sets how many run at once.

Determinism: with `workers > 1` every job runs in a worker process with one intra-op thread, so a job's result
does not depend on the number of workers or on which worker ran it (jobs must draw randomness from their own
arguments, as every training of this project does). With `workers == 1` jobs run in this process
with torch's threads, as before; float results of the two modes may differ in the last bits (thread count changes
the order of float sums), so a profile keeps one value. Jobs on a GPU always run in this process.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Callable, Sequence


def _one_thread_worker() -> None:
    """Worker start-up: one torch thread; output to /dev/null (a notebook kernel would otherwise show the
    workers' library warnings in a cell; errors still reach the caller as exceptions)."""
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.dup2(devnull, 2)
    os.environ["TQDM_DISABLE"] = "1"


def _call(job: tuple[Callable, tuple, dict]) -> Any:
    fn, args, kwargs = job
    return fn(*args, **kwargs)


def run_jobs(fn: Callable, jobs: Sequence[tuple | dict | Any], *, workers: int = 1, device: str = "cpu") -> list:
    """`fn` applied to every job, results in the order of `jobs`.

    Args:
        fn: a module-level function (worker processes import it by name).
        jobs: each a tuple of positional arguments, a dict of keyword arguments, or a single argument.
        workers: processes at once; 1 runs the jobs here, one after another. Must be at least 1.
        device: the jobs' device; anything but "cpu" runs here (one GPU is not shared between processes).
    """
    if int(workers) < 1:
        raise ValueError(f"workers={workers}: must be at least 1")
    calls = [(fn, j, {}) if isinstance(j, tuple) else (fn, (), j) if isinstance(j, dict) else (fn, (j,), {})
             for j in jobs]
    if int(workers) == 1 or str(device) != "cpu":
        return [_call(c) for c in calls]
    # spawn, not fork: a fork of a process that already ran torch's OpenMP pool can hang
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(int(workers), max(1, len(calls))), mp_context=ctx,
                             initializer=_one_thread_worker) as pool:
        return list(pool.map(_call, calls))
