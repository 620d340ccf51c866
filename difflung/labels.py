"""The project's one label scheme.

Every dataset (phantom, real CT, a user's own data) is written with these integer ids. A dataset uses
a subset of them, recorded in its manifest (`classes`), so models build their one-hot channels from the
dataset rather than from this list.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LabelClass:
    id: int
    name: str
    color: str  # hex, for overlays and legends
    in_lung: bool  # part of the lung field (counts towards lung volume and f_i within lung)
    pathology: bool
    hu_range: tuple[float, float] | None  # literature range of the class in HU, for plots and checks


CLASSES: tuple[LabelClass, ...] = (
    LabelClass(0, "background", "#000000", False, False, None),
    LabelClass(1, "body", "#8c6d46", False, False, (-200.0, 400.0)),
    LabelClass(2, "lung", "#4c9be8", True, False, (-910.0, -850.0)),
    LabelClass(3, "airway", "#9b59b6", False, False, (-1000.0, -950.0)),
    LabelClass(4, "emphysema", "#f1c40f", True, True, (-1000.0, -950.0)),
    LabelClass(5, "ggo", "#2ecc71", True, True, (-750.0, -300.0)),
    LabelClass(6, "fibrosis", "#e74c3c", True, True, (-1000.0, 100.0)),
    LabelClass(7, "consolidation", "#e67e22", True, True, (-300.0, 100.0)),
    LabelClass(8, "nodule", "#ff66cc", True, True, (-300.0, 200.0)),
    LabelClass(9, "effusion", "#1abc9c", False, True, (-20.0, 60.0)),
)

BY_NAME: dict[str, LabelClass] = {c.name: c for c in CLASSES}
BY_ID: dict[int, LabelClass] = {c.id: c for c in CLASSES}
NUM_IDS = len(CLASSES)

BACKGROUND = BY_NAME["background"].id
BODY = BY_NAME["body"].id
LUNG = BY_NAME["lung"].id
AIRWAY = BY_NAME["airway"].id
EMPHYSEMA = BY_NAME["emphysema"].id
GGO = BY_NAME["ggo"].id
FIBROSIS = BY_NAME["fibrosis"].id
CONSOLIDATION = BY_NAME["consolidation"].id
NODULE = BY_NAME["nodule"].id
EFFUSION = BY_NAME["effusion"].id

LUNG_IDS: tuple[int, ...] = tuple(c.id for c in CLASSES if c.in_lung)
PATHOLOGY_IDS: tuple[int, ...] = tuple(c.id for c in CLASSES if c.pathology)
PHANTOM_IDS: tuple[int, ...] = (BACKGROUND, BODY, LUNG, AIRWAY, EMPHYSEMA, GGO, FIBROSIS)

# Windows: the model window maps [-1000, 400] HU to [-1, 1]; the display window is W1500/L-600.
MODEL_WINDOW = (-1000.0, 400.0)
LUNG_DISPLAY_WINDOW = (-1350.0, 150.0)


def class_id(name_or_id: str | int) -> int:
    """Return the project id of a class given its name or id; raise a clear error otherwise."""
    if isinstance(name_or_id, int) and not isinstance(name_or_id, bool):
        if name_or_id in BY_ID:
            return name_or_id
    elif isinstance(name_or_id, str) and name_or_id.lower() in BY_NAME:
        return BY_NAME[name_or_id.lower()].id
    known = ", ".join(f"{c.id}={c.name}" for c in CLASSES)
    raise ValueError(f"unknown class {name_or_id!r}; the project's classes are {known}")


def names(ids) -> list[str]:
    return [BY_ID[int(i)].name for i in ids]


def colormap(ids=None):
    """A matplotlib ListedColormap + BoundaryNorm indexed by project id (for label overlays)."""
    from matplotlib.colors import BoundaryNorm, ListedColormap

    cmap = ListedColormap([c.color for c in CLASSES])
    norm = BoundaryNorm([c.id - 0.5 for c in CLASSES] + [CLASSES[-1].id + 0.5], cmap.N)
    return cmap, norm


def legend_table(ids=None):
    """The label scheme as a pandas DataFrame (id, name, colour, in lung, pathology, HU range)."""
    import pandas as pd

    rows = [
        {
            "id": c.id,
            "class": c.name,
            "colour": c.color,
            "in lung": c.in_lung,
            "pathology": c.pathology,
            "HU range (literature)": "" if c.hu_range is None else f"{c.hu_range[0]:.0f} .. {c.hu_range[1]:.0f}",
        }
        for c in CLASSES
        if ids is None or c.id in set(int(i) for i in ids)
    ]
    return pd.DataFrame(rows).set_index("id")
