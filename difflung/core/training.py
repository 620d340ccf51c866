"""One training shell for difflung's trainers (diffusion, GAN baselines, segmenter).

Each trainer keeps its model, optimiser and loop body; what every training run needs lives here:

    streams = seed_streams(seed, ("init", "data", "noise"))      # independent torch.Generators from one seed
    with rng_scope(streams["init"].initial_seed()):             # nn.Module init draws from the global RNG
        model = build()
    order = BatchOrder(len(images), streams["data"])             # seeded, resumable batch order
    run = RunFolder(out_dir, key, FOLDER)                        # run key, finished check, checkpoints, loss log
    if (meta := run.finished()) is not None: return meta          # reuse a finished model of the same key
    step = run.resume(modules, generators)                       # 0, or the latest checkpoint's step
    for step in range(step, steps):
        ...                                                      # the loop body
        run.log.append(step + 1, loss=loss)
        if (step + 1) % every == 0: run.save_checkpoint(step + 1, modules, generators)
    run.save(write_weights, meta)                                # safetensors + JSON config, written last

Randomness: every stream is an explicit CPU torch.Generator; the torch global RNG is only touched inside
`rng_scope`, which forks it and restores the caller's state afterwards. Checkpoints (`difflung.core.checkpoint`) hold
module states and generator states without pickle, so a run killed at step k and resumed ends with the same
weights as an uninterrupted one.

Run key: the config fields that change the result plus the training data's sha256; a finished folder or a
checkpoint is reused only under the same key. Fields added to a config after models were saved enter the key
only when they differ from their default (`result_fields(..., optional=...)`), so older keys stay valid.

Save format: the weights as safetensors (written first) and one JSON file with format tag, config, run key and
provenance (written last, atomically: its presence means finished). `open_folder` is the one load convention.
"""
from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from difflung.core.checkpoint import latest_checkpoint, load_training_state, save_training_state
from difflung.core.provenance import write_json_atomic, write_text_atomic


# ---------------------------------------------------------------------------------------------------------------
# randomness

def seed_streams(seed: int, names) -> dict[str, torch.Generator]:
    """Independent CPU torch.Generators from one seed (numpy's SeedSequence), one per name, in order.

    On the CPU so that CPU and GPU runs draw the same numbers.
    """
    names = tuple(names)
    states = np.random.SeedSequence(seed).generate_state(len(names))  # a prefix-stable stream of words
    return {k: torch.Generator().manual_seed(int(s)) for k, s in zip(names, states)}


@contextlib.contextmanager
def rng_scope(seed: int | torch.Generator, device="cpu"):
    """Run a block with torch's global RNG forked and seeded; the caller's global RNG is left untouched.

    torch draws dropout masks, default weight init and spectral-norm vectors from the global RNG; inside this
    scope they are a function of an explicit seed.

    Args:
        seed: an int, or a torch.Generator from which one seed is drawn (advancing it by one draw, so a
            checkpointed generator gives every step its own, resumable global-RNG seed).
        device: a CUDA device's RNG is forked too when the block runs there.
    """
    if isinstance(seed, torch.Generator):
        seed = int(torch.randint(0, 2 ** 62, (1,), generator=seed))
    device = torch.device(device)
    devices = [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


class BatchOrder:
    """A seeded, resumable stream of training-slice indices; module-like state (`state_dict`) for checkpoints.

    Three rules, all drawn on the CPU:
      - default: shuffled passes over the N slices, each permutation drawn from `generator` when the previous
        one is used up (a batch may straddle two passes);
      - `weights`: draws with replacement proportional to non-negative per-slice weights;
      - `epoch_seed`: pass e's permutation comes from a fresh generator seeded by (epoch_seed, e), so a position
        in the stream depends on nothing else (`seek`).

    Args:
        n: number of slices.
        generator: the stream's torch.Generator (not used with `epoch_seed`).
        weights: optional (N,) sampling weights.
        epoch_seed: optional seed of the per-pass generators.
    """

    def __init__(self, n: int, generator: torch.Generator | None = None, *, weights=None, epoch_seed: int | None = None):
        if n < 1:
            raise ValueError("no training slices to draw batches from")
        self.n, self.generator, self.epoch_seed = n, generator, epoch_seed
        self.weights = None
        if weights is not None:
            w = torch.as_tensor(np.asarray(weights, dtype=np.float64))
            if w.shape != (n,) or not torch.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
                raise ValueError(f"sample_weights must be ({n},) finite, non-negative, not all zero")
            self.weights = w
        self.perm, self.pos, self.epoch = torch.empty(0, dtype=torch.long), 0, -1

    def _next_pass(self) -> None:
        self.epoch += 1
        g = self.generator if self.epoch_seed is None else \
            torch.Generator().manual_seed(self.epoch_seed * 1_000_003 + self.epoch)
        self.perm, self.pos = torch.randperm(self.n, generator=g), 0

    def next(self, batch: int) -> torch.Tensor:
        """The next `batch` indices, (batch,) int64."""
        if self.weights is not None:
            return torch.multinomial(self.weights, batch, replacement=True, generator=self.generator)
        out = []
        while batch > 0:
            if self.pos >= len(self.perm):
                self._next_pass()
            take = min(batch, self.n - self.pos)
            out.append(self.perm[self.pos:self.pos + take])
            self.pos, batch = self.pos + take, batch - take
        return torch.cat(out)

    def seek(self, i: int) -> None:
        """Continue at overall position `i` (slices drawn so far); only for the `epoch_seed` rule."""
        if self.epoch_seed is None:
            raise ValueError("seek needs an epoch_seed stream; resume the others with load_state_dict")
        self.epoch = i // self.n - 1
        self._next_pass()
        self.pos = i % self.n

    def state_dict(self) -> dict:
        return {"perm": self.perm, "pos": self.pos, "generator": self.generator.get_state()}

    def load_state_dict(self, s: dict) -> None:
        if len(s["perm"]) != self.n:
            raise ValueError(f"checkpoint's data order covers {len(s['perm'])} slices, the dataset has {self.n}")
        self.perm, self.pos = s["perm"].clone(), int(s["pos"])
        self.generator.set_state(s["generator"])


# ---------------------------------------------------------------------------------------------------------------
# run key

def result_fields(config, *, execution=(), optional=None) -> dict:
    """The fields of a config dataclass (or of its stored dict) that change what training computes.

    Args:
        config: a dataclass instance or the dict `asdict` made of it (as stored in a model's JSON).
        execution: names of fields that change how a run is executed or stored, not its result.
        optional: name -> default of fields added after models were saved: they enter only when they differ
            from the default, so the keys of older models stay valid.
    """
    d = asdict(config) if not isinstance(config, dict) else dict(config)
    d = json.loads(json.dumps(d))  # tuples -> lists: the same value whether fresh or read back from JSON
    opt = json.loads(json.dumps(optional or {}))
    return {k: v for k, v in d.items() if k not in execution and not (k in opt and v == opt[k])}


def run_key(config, dataset_sha256: str, *, execution=(), optional=None, **more) -> dict:
    """The run key that decides reuse and resume: result fields of `config`, the data's sha256, and `more`."""
    return {"config": result_fields(config, execution=execution, optional=optional),
            "dataset_sha256": dataset_sha256, **json.loads(json.dumps(more))}


def key_difference(saved: dict, now: dict) -> dict:
    """{field: (saved, now)} of the config fields where two run keys differ (for error messages)."""
    a, b = saved.get("config", {}), now.get("config", {})
    return {k: (a.get(k), b.get(k)) for k in dict.fromkeys([*b, *a]) if a.get(k) != b.get(k)}


# ---------------------------------------------------------------------------------------------------------------
# loss log

class LossLog:
    """Rows of (step, named values) kept in memory and written as one CSV, atomically.

    Floats are written with 8 significant digits, so a log read back and written again is byte-identical
    (a resumed run's log equals an uninterrupted one's).
    """

    def __init__(self, path=None):
        self.path, self.rows = (Path(path) if path is not None else None), []  # None: in memory only

    def append(self, step: int, **values) -> None:
        self.rows.append({"step": int(step), **values})

    def write(self) -> None:
        if not self.rows or self.path is None:
            return
        keys = list(dict.fromkeys(k for r in self.rows for k in r))
        fmt = lambda v: f"{v:.8g}" if isinstance(v, float) else v  # noqa: E731
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=keys, lineterminator="\n")
        w.writeheader()
        w.writerows({k: fmt(v) for k, v in r.items()} for r in self.rows)
        write_text_atomic(self.path, buf.getvalue())

    def read(self, upto: int) -> None:
        """Load the rows of an earlier session up to step `upto` (resume)."""
        self.rows = [r for r in read_log_rows(self.path, missing_ok=True) if r["step"] <= upto]


def read_log_rows(path, missing_ok: bool = False) -> list[dict]:
    """The rows of a loss log written by `LossLog` ([] for a missing file when `missing_ok`)."""
    path = Path(path)
    if not path.is_file():
        if missing_ok:
            return []
        raise FileNotFoundError(f"{path}: no loss log; train the model first")
    num = lambda v: None if v == "" else float(v)  # noqa: E731
    return [{k: int(v) if k == "step" else num(v) for k, v in r.items()} for r in csv.DictReader(io.StringIO(path.read_text()))]


# ---------------------------------------------------------------------------------------------------------------
# run folder: finished check, checkpoints, save and load

class ModelLoadError(ValueError):
    """A model folder that is not a finished difflung model, is not safetensors, or fits another class map."""


class ModelNotFoundError(ModelLoadError, FileNotFoundError):
    """A model folder, or one of its files, that does not exist (training may not have finished)."""


@dataclass(frozen=True)
class FolderSpec:
    """How one kind of model lies in its folder.

    Args:
        format: format tag stored in the JSON (e.g. "difflung-diffusion/1").
        meta_file: the JSON config, written last.
        weights_file: the safetensors weights.
        what: what the folder holds, for error messages ("a trained baseline generator").
        extra_files: other files the weights writer puts into the folder (e.g. diffusers' config.json).
    """

    format: str
    meta_file: str
    weights_file: str
    what: str
    extra_files: tuple[str, ...] = ()


class RunFolder:
    """A training folder: the finished check, checkpoints (save / prune / resume), the loss log, the final save.

    Args:
        root: the folder (the model's own folder, or a training folder holding it under `model_subdir`).
        key: the run key (`run_key`).
        spec: the model's `FolderSpec`.
        keep: checkpoints kept while training (all are removed when the model is saved).
        log_name: the loss CSV's name in `root`.
        model_subdir: where the final model goes, relative to `root` ("" = `root` itself).
        stored_key: how to read the run key from a stored meta dict (default: its "run_key").
    """

    def __init__(self, root, key: dict, spec: FolderSpec, *, keep: int = 1, log_name: str = "loss.csv",
                 model_subdir: str = "", stored_key: Callable[[dict], dict | None] | None = None):
        self.root, self.key, self.spec, self.keep = Path(root), json.loads(json.dumps(key)), spec, keep
        self.model_dir = self.root / model_subdir if model_subdir else self.root
        self.ckpt_dir = self.root / "checkpoints"
        self.log = LossLog(self.root / log_name)
        self._stored_key = stored_key or (lambda meta: meta.get("run_key"))

    # -- finished folder ------------------------------------------------------------------------------------
    def meta(self) -> dict | None:
        """The stored JSON config when the folder holds a finished model (of any key), else None."""
        m, w = self.model_dir / self.spec.meta_file, self.model_dir / self.spec.weights_file
        return json.loads(m.read_text()) if m.is_file() and w.is_file() else None

    def finished(self) -> dict | None:
        """The stored JSON config when the folder holds a finished model of this run key, else None."""
        meta = self.meta()
        return meta if meta is not None and self._stored_key(meta) == self.key else None

    def clear(self) -> None:
        """Remove the folder's training outputs (the JSON config first: a half-cleared folder is never finished)."""
        for name in (self.spec.meta_file, self.spec.weights_file, *self.spec.extra_files):
            (self.model_dir / name).unlink(missing_ok=True)
        self.log.path.unlink(missing_ok=True)
        shutil.rmtree(self.ckpt_dir, ignore_errors=True)

    # -- checkpoints ----------------------------------------------------------------------------------------
    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.ckpt_dir)

    def checkpoint_key(self, ckpt: Path) -> dict | None:
        """The run key stored in checkpoint `ckpt` (None when unreadable)."""
        try:
            extra = torch.load(ckpt, map_location="cpu", weights_only=True)["extra"]
        except Exception:  # unreadable: not resumable either
            return None
        return extra.get("run_key")

    def save_checkpoint(self, step: int, modules: dict, generators: dict | None = None) -> Path:
        """Write the loss log and `checkpoints/step_<step>.pt` (with the run key); keep the newest `keep`."""
        self.log.write()
        path = save_training_state(self.ckpt_dir / f"step_{step:08d}.pt", step=step, modules=modules,
                                   generators=generators, extra={"run_key": self.key})
        for old in sorted(self.ckpt_dir.glob("step_*.pt"))[:-self.keep]:
            old.unlink()
        return path

    def resume(self, modules: dict, generators: dict | None = None, map_location="cpu") -> int:
        """Restore the latest checkpoint into `modules` / `generators` and the loss log; return its step (0: none).

        Raises ValueError when the checkpoint was written under another run key or does not fit the modules.
        """
        ckpt = self.latest_checkpoint()
        if ckpt is None:
            return 0
        try:
            state = load_training_state(ckpt, modules=modules, generators=generators, map_location=map_location)
        except (RuntimeError, KeyError, ValueError) as e:  # e.g. weights of another preset or class map
            raise ValueError(f"{ckpt}: cannot resume from this checkpoint ({e}); use another out_dir") from e
        saved = state["extra"].get("run_key") or {}
        if saved.get("config") != self.key["config"]:
            raise ValueError(f"{ckpt}: written with another config; (saved, now) of each different configuration "
                             f"field: {key_difference(saved, self.key)}; resume with the same config, use another "
                             f"out_dir or pass overwrite=True")
        if saved != self.key:
            raise ValueError(f"{ckpt}: written for other training data (or another model layout); use another "
                             f"out_dir or pass overwrite=True")
        self.log.read(state["step"])
        return state["step"]

    # -- final model ----------------------------------------------------------------------------------------
    def save(self, write_weights: Callable[[Path], None], meta: dict) -> Path:
        """Save the final model: `write_weights(tmp_dir)` writes the safetensors file (and `extra_files`) into a
        temporary folder, they move in, then the JSON config (format tag and run key added) is written last.
        Removes the checkpoints; returns the model folder."""
        self.log.write()
        save_model_folder(self.model_dir, self.spec, write_weights, {**meta, "run_key": self.key})
        shutil.rmtree(self.ckpt_dir, ignore_errors=True)
        return self.model_dir


def save_model_folder(folder, spec: FolderSpec, write_weights: Callable[[Path], None], meta: dict) -> Path:
    """The one save format: weights (safetensors) first, the JSON config with `spec.format` last, atomically."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / spec.meta_file).unlink(missing_ok=True)  # never a finished-looking folder with other weights
    tmp = Path(tempfile.mkdtemp(prefix=".model.", dir=folder))
    try:
        write_weights(tmp)
        if not (tmp / spec.weights_file).is_file():
            raise RuntimeError(f"the weights writer did not write {spec.weights_file}")
        for p in tmp.iterdir():
            os.replace(p, folder / p.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_json_atomic(folder / spec.meta_file, {"format": spec.format, **meta})
    return folder


def state_dict_writer(module: torch.nn.Module, name: str) -> Callable[[Path], None]:
    """A `write_weights` for `save_model_folder`: the module's state dict as safetensors file `name`."""
    from safetensors.torch import save_file

    def write(folder: Path) -> None:
        save_file({k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, str(folder / name))
    return write


def open_folder(folder, spec: FolderSpec) -> dict:
    """The one load convention: check a model folder and return its JSON config (nothing is unpickled).

    Raises:
        ModelNotFoundError: the folder, its weights or its JSON config is missing.
        ModelLoadError: only pickle-based weights, unreadable JSON, or another format tag.
    """
    folder = Path(folder)
    need = f"{spec.what} holds {spec.meta_file} and {spec.weights_file}"
    if not folder.is_dir():
        raise ModelNotFoundError(f"{folder}: no such folder; {need} (train it first)")
    if not (folder / spec.weights_file).is_file():
        pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt", ".pkl"))
        if pickled:
            raise ModelLoadError(f"{folder}: no {spec.weights_file}; the folder holds only pickle-based weights "
                                 f"({', '.join(pickled)}), which difflung never loads. Save models as safetensors")
        raise ModelNotFoundError(f"{folder / spec.weights_file}: missing, so {folder} is not {spec.what} "
                                 f"(training may not have finished); {need}")
    mpath = folder / spec.meta_file
    if not mpath.is_file():
        raise ModelNotFoundError(f"{mpath}: missing, so the class map is unknown ({folder} is not {spec.what}; "
                                 f"training may not have finished)")
    try:
        meta = json.loads(mpath.read_text())
    except json.JSONDecodeError as e:
        raise ModelLoadError(f"{mpath}: not valid JSON ({e})") from e
    if meta.get("format") != spec.format:
        raise ModelLoadError(f"{mpath}: format {meta.get('format')!r}, expected {spec.format!r}")
    return meta


def load_state_dict(module: torch.nn.Module, path, meta_path=None) -> torch.nn.Module:
    """Load safetensors file `path` into `module` with clear errors (no pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise ModelLoadError(f"{path}: not a readable safetensors file ({e})") from e
    try:
        module.load_state_dict(state)
    except RuntimeError as e:
        raise ModelLoadError(f"{path}: weights do not match the config in {meta_path} ({e})") from e
    return module
