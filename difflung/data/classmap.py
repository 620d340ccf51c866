"""Class maps: a dataset's own label values -> the project's classes (difflung.labels), from a small YAML file.

    name: medseg-covid19
    description: MedSeg COVID-19 CT segmentation masks
    labels:
      1: ggo
      2: consolidation
      3: effusion

Values map to project class names (or ids). `background` (alias `ignore`) drops a value, e.g. a dataset's own
lung mask, since body/lung/airway come from `difflung.data.ct_anatomy`. 0 always means "no label". Examples for public
datasets are in `examples/classmaps/`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from difflung import labels as L
from difflung.data.dataset import DatasetError

IGNORE_ALIASES = ("ignore", "background")


class ClassMapError(DatasetError):
    """A class map is malformed or does not cover a label file; the message names the file."""


@dataclass(frozen=True)
class ClassMap:
    """User label value -> project class id (0 = drop)."""

    name: str
    labels: dict[int, int]
    description: str = ""
    source: str = ""  # the YAML file it came from, for messages
    extra: dict = field(default_factory=dict, compare=False)

    @classmethod
    def from_dict(cls, d, source: str = "class map") -> "ClassMap":
        if not isinstance(d, dict):
            raise ClassMapError(f"{source}: expected a mapping with keys name, labels[, description]; "
                                f"got {type(d).__name__}")
        if not isinstance(d.get("labels"), dict) or not d["labels"]:
            raise ClassMapError(f"{source}: `labels` must be a non-empty mapping of label value -> project class, "
                                "e.g. `labels: {1: nodule}`")
        unknown = sorted(set(d) - {"name", "labels", "description", "source", "notes"})
        if unknown:
            raise ClassMapError(f"{source}: unknown keys {unknown}; allowed: name, labels, description, notes")
        out: dict[int, int] = {}
        bad = []
        for k, v in d["labels"].items():
            try:
                value = int(k)
                if value != float(k) or value < 0:
                    raise ValueError
            except (TypeError, ValueError):
                raise ClassMapError(f"{source}: label value {k!r} is not a non-negative integer") from None
            name = str(v).strip().lower()
            if name in IGNORE_ALIASES:
                out[value] = L.BACKGROUND
            elif name in L.BY_NAME:
                out[value] = L.BY_NAME[name].id
            elif isinstance(v, int) and not isinstance(v, bool) and v in L.BY_ID:
                out[value] = v
            else:
                bad.append(f"{k}: {v!r}")
        if bad:
            known = ", ".join(c.name for c in L.CLASSES)
            raise ClassMapError(f"{source}: unknown project class in {', '.join(bad)}; known classes: {known} "
                                "(or `ignore`)")
        if out.get(0, L.BACKGROUND) != L.BACKGROUND:
            raise ClassMapError(f"{source}: label value 0 means 'no label' and cannot map to "
                                f"{L.BY_ID[out[0]].name}")
        out.setdefault(0, L.BACKGROUND)
        return cls(name=str(d.get("name", Path(source).stem)), labels=out,
                   description=str(d.get("description", "")), source=source,
                   extra={k: d[k] for k in ("notes",) if k in d})

    @classmethod
    def single(cls, class_name: str) -> "ClassMap":
        """Every non-zero value -> one class (`--classes nodule`): for label files holding one kind of lesion."""
        cid = L.class_id(class_name)
        return cls(name=f"all-{L.BY_ID[cid].name}", labels={0: L.BACKGROUND}, source=f"--classes {class_name}",
                   extra={"default": cid})

    def as_dict(self) -> dict:
        d = {"name": self.name, "labels": {int(k): L.BY_ID[v].name for k, v in sorted(self.labels.items())},
             "description": self.description}
        if "default" in self.extra:
            d["others"] = L.BY_ID[self.extra["default"]].name
        return d

    def apply(self, values: np.ndarray, path="labels") -> np.ndarray:
        """Map a label array of user values to project ids (uint8); error naming `path` for unmapped values."""
        values = np.asarray(values)
        present = np.unique(values)
        default = self.extra.get("default")
        missing = [int(v) for v in present if int(v) not in self.labels and default is None]
        if missing:
            shown = ", ".join(map(str, missing[:20])) + (" ..." if len(missing) > 20 else "")
            raise ClassMapError(f"{path}: label values {shown} are not in class map {self.source} "
                                f"(which maps {sorted(self.labels)}); add them (or map them to `ignore`)")
        fill = L.BACKGROUND if default is None else default
        top = int(present.max()) if present.size else 0
        if top < (1 << 20):  # look-up table: one pass over the voxels
            lut = np.full(top + 1, fill, np.uint8)
            for k, v in self.labels.items():
                if k <= top:
                    lut[k] = v
            return lut[values]
        out = np.full(values.shape, fill, np.uint8)
        for k, v in self.labels.items():
            out[values == k] = v
        return out


def load_classmap(spec) -> ClassMap:
    """A ClassMap from a YAML path, a dict, or a project class name (all non-zero values -> that class)."""
    import yaml

    if isinstance(spec, ClassMap):
        return spec
    if isinstance(spec, dict):
        return ClassMap.from_dict(spec)
    s = str(spec)
    if not s.lower().endswith((".yml", ".yaml")) and s.lower() in L.BY_NAME:
        return ClassMap.single(s)
    path = Path(s)
    if not path.is_file():
        raise ClassMapError(f"{path}: class map not found (give a YAML file or a project class name: "
                            f"{', '.join(c.name for c in L.CLASSES if c.pathology)})")
    try:
        d = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ClassMapError(f"{path}: malformed YAML{at} ({getattr(e, 'problem', None) or e})") from e
    return ClassMap.from_dict(d, source=str(path))
