"""Shared figure helpers: lung-window display, label overlays, and saving figures with provenance."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from . import labels as L
from .provenance import atomic_path, provenance, write_json_atomic


def lung_window(hu: np.ndarray) -> np.ndarray:
    """HU -> [0, 1] on the lung display window W1500/L-600."""
    lo, hi = L.LUNG_DISPLAY_WINDOW
    return np.clip((np.asarray(hu, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)


def show_ct(ax, hu, lab=None, alpha: float = 0.35, title: str | None = None):
    """Draw a slice in the lung window, optionally with a label overlay (background/body left transparent)."""
    ax.imshow(lung_window(hu), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    if lab is not None:
        cmap, norm = L.colormap()
        over = np.ma.masked_where(np.isin(lab, (L.BACKGROUND, L.BODY)), lab)
        ax.imshow(over, cmap=cmap, norm=norm, alpha=alpha, interpolation="nearest")
    if title:
        ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    return ax


def slice_grid(rows, classes, *, cell: float = 1.5):
    """A grid of slices: one row per (name, hu (N, S, S), labels (N, S, S) or None), lung window, labels as
    overlays, a legend of `classes` (background and body left out). Returns the figure."""
    n = len(rows[0][1])
    fig, axes = plt.subplots(len(rows), n, figsize=(cell * n + 0.8, cell * len(rows)), squeeze=False)
    for i, (name, hu, lab) in enumerate(rows):
        for j in range(n):
            show_ct(axes[i, j], hu[j], lab[j] if lab is not None else None, alpha=0.6)
        axes[i, 0].text(-0.08, 0.5, name, transform=axes[i, 0].transAxes, ha="right", va="center", fontsize=8)
    present = [c for c in classes if c not in (L.BACKGROUND, L.BODY)]
    fig.legend(handles=legend_handles(present), loc="lower center", ncol=len(present), frameon=False, fontsize=8)
    fig.tight_layout(rect=(0.05, 0.05, 1, 1))
    return fig


def legend_handles(ids):
    from matplotlib.patches import Patch

    return [Patch(color=L.BY_ID[int(i)].color, label=L.BY_ID[int(i)].name) for i in ids]


def save_figure(fig, path, *, config: dict | None = None, seed: int | None = None, dpi: int = 110) -> Path:
    """Save `fig` as PNG atomically and close it, with a `<name>.json` provenance sidecar (config, seed, git, versions, device)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    write_json_atomic(path.with_suffix(".json"), provenance(config=config, seed=seed))
    plt.close(fig)  # the notebook shows the returned figure once, as its cell's last expression
    return path
