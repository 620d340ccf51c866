"""Shared figure and table helpers: lung-window display with an HU colour bar, label overlays, readable tables
(3 significant figures), and saving figures with provenance."""
from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from difflung import labels as L
from difflung.core.provenance import atomic_path, provenance, write_json_atomic


def lung_window(hu: np.ndarray) -> np.ndarray:
    """HU -> [0, 1] on the lung display window W1500/L-600."""
    lo, hi = L.LUNG_DISPLAY_WINDOW
    return np.clip((np.asarray(hu, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)


def window_name(window=L.LUNG_DISPLAY_WINDOW, name: str = "lung window") -> str:
    """A display window in the radiologist's notation, e.g. "lung window W1500/L-600"."""
    lo, hi = window
    return f"{name} W{hi - lo:g}/L{(lo + hi) / 2:g}"


def hu_colorbar(fig, axes, window=L.LUNG_DISPLAY_WINDOW, name: str = "lung window", **kwargs):
    """An HU colour bar for slices drawn by `show_ct` (grey from window low to high), labelled with the window.

    Args:
        fig: the figure; axes: the axes (one or a list/array) the bar is placed beside.
        window: (low, high) HU of the display window. kwargs: passed to `fig.colorbar` (e.g. shrink).
    Use it with `layout="constrained"` figures (tight_layout cannot place colour bars).
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    sm = ScalarMappable(norm=Normalize(*window), cmap="gray")
    ax = axes.ravel().tolist() if isinstance(axes, np.ndarray) else axes
    cb = fig.colorbar(sm, ax=ax, **{"fraction": 0.03, "pad": 0.02, **kwargs})
    cb.set_label(f"HU, {window_name(window, name)}", fontsize=8)
    cb.ax.tick_params(labelsize=7)
    return cb


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
    """A grid of slices: one row per (name, hu (N, S, S), labels (N, S, S) or None), lung window with its HU
    colour bar, labels as overlays, a legend of `classes` (background and body left out). Returns the figure."""
    n = len(rows[0][1])
    fig, axes = plt.subplots(len(rows), n, figsize=(cell * n + 1.4, cell * len(rows) + 0.4), squeeze=False,
                             layout="constrained")
    for i, (name, hu, lab) in enumerate(rows):
        for j in range(n):
            show_ct(axes[i, j], hu[j], lab[j] if lab is not None else None, alpha=0.6)
        axes[i, 0].text(-0.08, 0.5, name, transform=axes[i, 0].transAxes, ha="right", va="center", fontsize=8)
    hu_colorbar(fig, axes)
    present = [c for c in classes if c not in (L.BACKGROUND, L.BODY)]
    fig.legend(handles=legend_handles(present), loc="outside lower center", ncol=len(present), frameon=False,
               fontsize=8)
    return fig


def sig(v, digits: int = 3) -> str:
    """A number at `digits` significant figures, without scientific notation for ordinary magnitudes
    (-816.6 -> "-817", 0.012345 -> "0.0123", 12345.6 -> "12,300", integers whole); NaN/None -> "n/a"."""
    if v is None or (isinstance(v, (float, np.floating)) and not np.isfinite(v)):
        return "n/a"
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else "no"
    if isinstance(v, (int, np.integer)):
        return f"{int(v):,}"
    r = float(f"{float(v):.{digits}g}")  # rounded first, so 99.95 -> 100 gets the decimals of 100
    if r == 0 or abs(r) >= 10 ** (digits - 1):
        return f"{r:,.0f}"
    return f"{r:,.{digits - 1 - int(np.floor(np.log10(abs(r))))}f}"


def pct(v, digits: int = 3) -> str:
    """A share as a percentage at `digits` significant figures (0.0123 -> "1.23 %")."""
    s = sig(None if v is None else 100.0 * float(v), digits)
    return s if s == "n/a" else f"{s} %"


def table(df, digits: int = 3, percent=(), hide_index: bool = False):
    """A pandas Styler for the book: numbers at `digits` significant figures, `percent` columns as percentages,
    booleans as yes/no, long tables scrollable by the page (the theme wraps wide tables)."""
    fmt = {c: (lambda v, d=digits: pct(v, d)) if c in percent else (lambda v, d=digits: sig(v, d))
           for c in df.columns if c in percent or df[c].dtype.kind in "fiub"}
    st = df.style.format(fmt, na_rep="n/a")
    return st.hide(axis="index") if hide_index else st


def footnoted(df: pd.DataFrame, columns, *, name: str = "notes", sep: str = "; ") -> tuple[pd.DataFrame, str]:
    """Long texts that repeat down a table, written once under it: each cell of `columns` is split at `sep` into
    notes, each distinct note numbered in order of first use, and the columns replaced by one column `name` holding
    the numbers ("1, 3"). Returns (the table, the notes as a Markdown numbered list; "" when there are none)."""
    numbers: dict[str, int] = {}
    marks = []
    for row in df[list(columns)].itertuples(index=False):
        items = [t.strip() for cell in row if isinstance(cell, str) for t in cell.split(sep) if t.strip()]
        marks.append(", ".join(str(numbers.setdefault(t, len(numbers) + 1)) for t in dict.fromkeys(items)))
    out = df.drop(columns=list(columns)).assign(**{name: marks})
    return out, "\n".join(f"{i}. {t}" for t, i in numbers.items())


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


def interval(est, lo=None, hi=None, digits: int = 3) -> str:
    """"mean [lo, hi]" at `digits` significant figures; the mean alone when there is no interval."""
    if lo is None or hi is None or not (np.isfinite(lo) and np.isfinite(hi)):
        return sig(est, digits)
    if sig(lo, digits) == sig(hi, digits):  # every unit agrees: a zero-width interval says nothing more
        return f"{sig(est, digits)} (no spread)"
    return f"{sig(est, digits)} [{sig(lo, digits)}, {sig(hi, digits)}]"


def zoom_box(mask: np.ndarray, min_side: int) -> tuple[int, int, int, int]:
    """A square box (y0, y1, x0, x1) around a region of a (S, S) bool mask, at least `min_side` wide, inside the
    image: where a figure zooms on a small lesion."""
    ys, xs = np.nonzero(mask)
    s = mask.shape[0]
    cy, cx = (ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2
    half = min(s // 2, max(min_side, int(np.ptp(ys)) + 4, int(np.ptp(xs)) + 4) // 2)
    y0, x0 = int(np.clip(cy - half, 0, s - 2 * half)), int(np.clip(cx - half, 0, s - 2 * half))
    return y0, y0 + 2 * half, x0, x0 + 2 * half


def summary_cell(summary, model: str, metric: str, cls: str = "all", digits: int = 3) -> str:
    """One cell "mean [lo, hi]" of a `stats.slice_intervals` summary (columns model, metric, class, mean, lo, hi);
    "n/a" when the summary has no such row."""
    r = summary[(summary["model"] == model) & (summary["metric"] == metric) & (summary["class"] == cls)]
    return interval(*r[["mean", "lo", "hi"]].iloc[0], digits=digits) if len(r) else "n/a"


def zoom_grid(columns, labels, picks, *, min_side: int, row_text=None):
    """Slices of several sources side by side, each row followed by a zoom on one class; lung window with its HU
    colour bar, a legend of the classes shown.

    Args:
        columns: [(title, images (N, S, S) in [-1, 1], or None for the mask drawn over the first real column)];
            a None column draws `columns[1]`'s slice with its label overlay.
        labels: (N, S, S) masks. picks: [(row in the arrays, class id to zoom on)].
        min_side: the zoom box's smallest side (pixels). row_text: optional label per pick, beside its row.
    """
    from matplotlib.patches import Rectangle

    from difflung.data.dataset import unwindow

    fig, axes = plt.subplots(2 * len(picks), len(columns), figsize=(1.7 * len(columns) + 1, 3.4 * len(picks)),
                             squeeze=False, layout="constrained")
    for r, (i, c) in enumerate(picks):
        y0, y1, x0, x1 = zoom_box(labels[i] == c, min_side)
        for j, (title, imgs) in enumerate(columns):
            hu = unwindow((columns[1][1] if imgs is None else imgs)[i])
            lab = labels[i] if imgs is None else None
            show_ct(axes[2 * r, j], hu, lab, alpha=0.6, title=title if r == 0 else None)
            axes[2 * r, j].add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="#f1c40f",
                                               lw=0.8))
            show_ct(axes[2 * r + 1, j], hu[y0:y1, x0:x1], None if lab is None else lab[y0:y1, x0:x1], alpha=0.6)
        if row_text is not None:
            axes[2 * r, 0].text(-0.1, 0.5, row_text[r], rotation=90, transform=axes[2 * r, 0].transAxes,
                                ha="right", va="center", fontsize=8)
    hu_colorbar(fig, axes)
    present = sorted(set(np.unique(labels[[i for i, _ in picks]]).tolist()) - {L.BACKGROUND, L.BODY})
    fig.legend(handles=legend_handles(present), loc="outside lower center", ncol=max(1, len(present)), frameon=False,
               fontsize=8)
    return fig


def cost_scatter(ours: dict, reported: dict, *, ours_label: str, reported_label: str, xlabel: str, ylabel: str,
                 title: str = ""):
    """Quality against cost on a log x axis: our points (filled circles with interval bars) apart from reported
    ones (hollow squares), one colour per model, a legend under the axes.

    Args:
        ours: name -> (x, y, lo, hi); lo/hi NaN draws no bar. reported: name -> (x, y); names missing are skipped.
        ours_label, reported_label: appended to each name in the legend (e.g. the size and device of each).
    """
    fig, ax = plt.subplots(figsize=(7, 5.2), layout="constrained")
    for color, (name, (x, y, lo, hi)) in zip(plt.rcParams["axes.prop_cycle"].by_key()["color"], ours.items()):
        err = [[y - lo], [hi - y]] if np.isfinite(lo) and np.isfinite(hi) else None
        ax.errorbar(x, y, yerr=err, fmt="o", color=color, capsize=3, label=f"{name}, {ours_label}")
        if name in reported:
            ax.scatter(*reported[name], s=60, facecolors="none", edgecolors=color, marker="s",
                       label=f"{name}, {reported_label}")
    ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
    fig.legend(fontsize=7, frameon=False, loc="outside lower center", ncol=2)
    return fig
