"""Training-state checkpoints that resume bit-exactly on CPU, without pickle.

A checkpoint is one file written with `torch.save` and read with `torch.load(weights_only=True)`: it holds
state dicts (model, EMA, optimizer, LR schedule, ...), RNG states (torch CPU/CUDA, explicit torch.Generators,
numpy Generators) and the step. Written to a temporary name, then renamed.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from difflung.core.provenance import atomic_path


def _np_state(gen: np.random.Generator) -> dict:
    s = gen.bit_generator.state
    # numpy's PCG64 state holds Python ints beyond 64 bits: store them as decimal strings.
    return {"bit_generator": s["bit_generator"], "state": {k: str(v) for k, v in s["state"].items()},
            "has_uint32": int(s["has_uint32"]), "uinteger": int(s["uinteger"])}


def _set_np_state(gen: np.random.Generator, s: dict) -> None:
    gen.bit_generator.state = {"bit_generator": s["bit_generator"],
                               "state": {k: int(v) for k, v in s["state"].items()},
                               "has_uint32": int(s["has_uint32"]), "uinteger": int(s["uinteger"])}


def save_training_state(path, *, step: int, modules: dict, generators: dict | None = None,
                        extra: dict | None = None) -> Path:
    """Save `step`, the state dicts of `modules` (anything with .state_dict()), and RNG states.

    Args:
        path: checkpoint file to write (atomically).
        step: number of optimisation steps done.
        modules: name -> object with `state_dict()` (model, EMA model, optimizer, LR scheduler, GradScaler).
        generators: name -> torch.Generator or numpy.random.Generator whose state must resume.
        extra: JSON-like dict (ints, floats, strings, lists) stored as is, e.g. the config.
    """
    state = {
        "step": int(step),
        "modules": {k: m.state_dict() for k, m in modules.items()},
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generators": {},
        "extra": extra or {},
    }
    for name, g in (generators or {}).items():
        if isinstance(g, torch.Generator):
            state["generators"][name] = {"kind": "torch", "state": g.get_state()}
        elif isinstance(g, np.random.Generator):
            state["generators"][name] = {"kind": "numpy", "state": _np_state(g)}
        else:
            raise TypeError(f"generator {name!r} is a {type(g).__name__}, not a torch or numpy Generator")
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    return Path(path)


def load_training_state(path, *, modules: dict, generators: dict | None = None, map_location="cpu") -> dict:
    """Restore what `save_training_state` wrote into `modules` and `generators`; return {'step', 'extra'}."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # truncated or foreign file
        raise ValueError(f"{path}: not a readable difflung checkpoint ({e})") from e
    for k, m in modules.items():
        if k not in state["modules"]:
            raise KeyError(f"{path}: checkpoint has no state for {k!r} (has {sorted(state['modules'])})")
        m.load_state_dict(state["modules"][k])
    torch.set_rng_state(state["torch_rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    for name, g in (generators or {}).items():
        saved = state["generators"].get(name)
        if saved is None:
            raise KeyError(f"{path}: checkpoint has no state for generator {name!r}")
        if isinstance(g, torch.Generator):
            g.set_state(saved["state"])
        else:
            _set_np_state(g, saved["state"])
    return {"step": state["step"], "extra": state["extra"]}


def latest_checkpoint(folder, pattern: str = r"step_(\d+)\.pt") -> Path | None:
    """The checkpoint with the highest step number in `folder`, or None."""
    folder = Path(folder)
    if not folder.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := re.fullmatch(pattern, p.name))]
    return max(found)[1] if found else None
