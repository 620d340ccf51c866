"""Mask ablation during training: which classes are withheld from the condition, with what probability.

One interface, `AblationSchedule(strategy, classes, frequencies, total_steps)`, for every strategy:

    none            nothing is ablated
    uniform         P_i = 0.5 for every non-background class (Segmentation-Guided Diffusion)
    cbmat           P_i(t) = (1 - f_i) (1 + cos(pi t / T)) / 2   (Diff-Lung's CBMAT)
    cbmat-constant  P_i = 1 - f_i, not annealed
    cbmat-inverse   P_i(t) = f_i (1 + cos(pi t / T)) / 2         (drops the frequent classes most: the control)

Background is never ablated. Each sample of a batch draws its own Bernoulli per class (the parent draws once
per batch); ablated pixels become UNSPECIFIED, which `encode_mask` turns into zeros in every channel.

Which f_i: the pixel frequency of class i among the non-background pixels of the training split,
f_i = n_i / sum_{j != background} n_j (`ablation_frequencies`). Every ablatable class has one (body, airway and
effusion have no within-lung frequency), the f_i of the ablatable classes sum to 1 as in the poster's notion
of class frequency, and they do not depend on how much empty air the field of view holds around the patient
(frequencies over all pixels would shrink every f_i towards 0, and so every P_i towards 1, as the padding grows).
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from difflung import labels as L
from difflung.diffusion.model import UNSPECIFIED, channel_index

STRATEGIES = ("none", "uniform", "cbmat", "cbmat-constant", "cbmat-inverse")


def ablation_frequencies(dataset, split: str = "train") -> dict[str, float]:
    """f_i of every class of `dataset` (a `difflung.data.dataset.Dataset`): its share of the non-background pixels
    of `split`. Background gets 0 (it is never ablated)."""
    freq_all = dataset.frequencies(split, within="all")  # class name -> fraction of all pixels
    names = L.names(dataset.classes)
    missing = [n for n in names if n not in freq_all]
    if missing:
        raise ValueError(f"{dataset.root}/manifest.json: split {split!r} has no frequency for classes {missing}")
    fg = sum(freq_all[n] for n in names if n != "background")
    if fg <= 0:
        raise ValueError(f"{dataset.root}: split {split!r} has no non-background pixels")
    return {n: (0.0 if n == "background" else freq_all[n] / fg) for n in names}


def cosine_factor(step: int, total_steps: int) -> float:
    """(1 + cos(pi t / T)) / 2 with t clipped to [0, T]: 1 at the start, 1/2 half-way, 0 at the end."""
    t = min(max(int(step), 0), total_steps)
    return (1.0 + math.cos(math.pi * t / total_steps)) / 2.0


class AblationSchedule:
    """Per-class ablation probabilities over training, and their application to a batch of label maps.

    Args:
        strategy: one of STRATEGIES.
        classes: the model's classes (project ids, as `Dataset.classes`); channel k belongs to classes[k].
        frequencies: f_i per class, as {name or id: f} (missing classes count as 0) or a sequence aligned with
            `classes`; required by the cbmat strategies (see `ablation_frequencies`).
        total_steps: T, the number of training steps the cosine annealing runs over.
    """

    def __init__(self, strategy: str, classes: Sequence[int], frequencies=None, total_steps: int = 1):
        if strategy not in STRATEGIES:
            raise ValueError(f"ablation strategy {strategy!r}: expected one of {STRATEGIES}")
        if total_steps < 1:
            raise ValueError(f"total_steps={total_steps}: must be >= 1")
        self.strategy, self.classes, self.total_steps = strategy, [int(c) for c in classes], int(total_steps)
        self.frequencies = self._frequency_vector(frequencies)
        self.ablatable = torch.tensor([c != L.BACKGROUND for c in self.classes])
        base = {"none": torch.zeros(len(self.classes), dtype=torch.float64),
                "uniform": torch.full((len(self.classes),), 0.5, dtype=torch.float64)}
        if strategy in base:
            p = base[strategy]
        else:
            if frequencies is None:
                raise ValueError(f"strategy {strategy!r} needs the class frequencies f_i of the training split")
            p = self.frequencies if strategy == "cbmat-inverse" else 1.0 - self.frequencies
        self.initial = torch.where(self.ablatable, p, torch.zeros_like(p))  # (C,) float64
        self.annealed = strategy in ("cbmat", "cbmat-inverse")

    def _frequency_vector(self, frequencies) -> torch.Tensor:
        if frequencies is None:
            return torch.zeros(len(self.classes), dtype=torch.float64)
        if isinstance(frequencies, Mapping):
            f = {L.class_id(k): float(v) for k, v in frequencies.items()}
            vec = [f.get(c, 0.0) for c in self.classes]
        else:
            vec = [float(v) for v in frequencies]
            if len(vec) != len(self.classes):
                raise ValueError(f"{len(vec)} frequencies for {len(self.classes)} classes {self.classes}")
        if any(not 0.0 <= v <= 1.0 for v in vec):
            raise ValueError(f"class frequencies must lie in [0, 1], got {vec}")
        return torch.tensor(vec, dtype=torch.float64)

    def probabilities(self, step: int) -> torch.Tensor:
        """P_i at training step `step` (0 = first step), shape (C,) float64, aligned with `classes`."""
        return self.initial * (cosine_factor(step, self.total_steps) if self.annealed else 1.0)

    def apply(self, labels: torch.Tensor, step: int, generator: torch.Generator) -> torch.Tensor:
        """Withhold classes from a batch of label maps: each sample draws its own Bernoulli(P_i) per class.

        Args:
            labels: (B, H, W) integer tensor of project ids (UNSPECIFIED allowed), on the generator's device.
            step: training step, for the annealed strategies.
            generator: the torch.Generator of the ablation draws.

        Returns:
            A new (B, H, W) tensor of labels' dtype with the dropped classes' pixels set to UNSPECIFIED.
        """
        idx = channel_index(labels, self.classes)  # (B, H, W), -2 = unspecified; raises on unknown ids
        if self.strategy == "none":
            return labels.clone()
        p = self.probabilities(step).float().to(labels.device)  # (C,)
        drop = torch.rand((labels.shape[0], len(self.classes)), generator=generator,
                          device=labels.device) < p  # (B, C); p = 0 for background, so never True there
        dropped = drop.gather(1, idx.clamp(min=0).flatten(1)).view_as(idx) & (idx >= 0)  # (B, H, W)
        out = labels.clone()
        out[dropped] = UNSPECIFIED
        return out

    def table(self, n_points: int = 101):
        """P_i over training as a long DataFrame (strategy, step, class, probability), for plots."""
        import pandas as pd

        steps = sorted({round(i * self.total_steps / (n_points - 1)) for i in range(n_points)})
        rows = [{"strategy": self.strategy, "step": s, "class": name, "probability": float(p)}
                for s in steps for name, p in zip(L.names(self.classes), self.probabilities(s))]
        return pd.DataFrame(rows)

    def describe(self) -> dict:
        """JSON-ready summary (stored in the model's difflung_config.json)."""
        names = L.names(self.classes)
        return {"strategy": self.strategy, "total_steps": self.total_steps, "annealed": self.annealed,
                "frequencies": dict(zip(names, self.frequencies.tolist())),
                "initial_probabilities": dict(zip(names, self.initial.tolist()))}

    def __repr__(self) -> str:
        p = ", ".join(f"{n}={v:.3f}" for n, v in zip(L.names(self.classes), self.initial.tolist()))
        return f"AblationSchedule({self.strategy!r}, T={self.total_steps}, P_initial: {p})"
