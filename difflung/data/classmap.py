"""Class maps: a dataset's own label values -> the project's classes (difflung.labels), from a small YAML file.

    name: medseg-covid19
    description: MedSeg COVID-19 CT segmentation masks
    labels:
      1: ggo
      2: consolidation
      3: effusion

Values map to project class names (or ids). `background` (alias `ignore`) drops a value, e.g. a dataset's own
lung mask, since body/lung/airway come from `difflung.data.ct_anatomy`. 0 always means "no label". `others: ignore`
(or a class name) maps every value the map does not list, e.g. the hundred organs of a TotalSegmentator file.

A lung-mask map (`prepare --lung-mask FILE --lung-mask-classes MAP`, the lungs from a segmentation tool instead of
the classical segmentation) maps values to `lung_right`, `lung_left`, `lung` (side found by the classical split)
and `airway` only. Examples for public datasets and tools are in `examples/classmaps/`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from difflung import labels as L
from difflung.data.dataset import DatasetError

IGNORE_ALIASES = ("ignore", "background")
SIDES = {"lung_right": "right", "lung_left": "left"}  # lung-mask targets: project class lung, with its side


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
        unknown = sorted(set(d) - {"name", "labels", "description", "source", "notes", "others"})
        if unknown:
            raise ClassMapError(f"{source}: unknown keys {unknown}; allowed: name, labels, description, notes, others")
        out: dict[int, int] = {}
        sides: dict[int, str] = {}
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
            elif name in SIDES:
                out[value], sides[value] = L.LUNG, SIDES[name]
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
        extra = {k: d[k] for k in ("notes",) if k in d}
        if sides:
            extra["sides"] = sides
        if "others" in d:
            o = str(d["others"]).strip().lower()
            if o not in IGNORE_ALIASES and o not in L.BY_NAME:
                raise ClassMapError(f"{source}: others: {d['others']!r} is not a project class or `ignore`")
            extra["default"] = L.BACKGROUND if o in IGNORE_ALIASES else L.BY_NAME[o].id
        return cls(name=str(d.get("name", Path(source).stem)), labels=out,
                   description=str(d.get("description", "")), source=source, extra=extra)

    @classmethod
    def single(cls, class_name: str) -> "ClassMap":
        """Every non-zero value -> one class (`--classes nodule`): for label files holding one kind of lesion."""
        cid = L.class_id(class_name)
        return cls(name=f"all-{L.BY_ID[cid].name}", labels={0: L.BACKGROUND}, source=f"--classes {class_name}",
                   extra={"default": cid})

    @property
    def sides(self) -> dict[int, str]:
        """Label value -> "right" / "left" for the values a lung-mask map gives a side (`lung_right`, `lung_left`)."""
        return dict(self.extra.get("sides", {}))

    def as_dict(self) -> dict:
        side = {v: f"lung_{s}" for v, s in self.sides.items()}
        d = {"name": self.name, "description": self.description,
             "labels": {int(k): side.get(k, L.BY_ID[v].name) for k, v in sorted(self.labels.items())}}
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


def load_lung_mask_map(spec=None) -> ClassMap:
    """The class map of a lung mask from a segmentation tool: a YAML path or dict whose values map to `lung_right`,
    `lung_left`, `lung`, `airway` or `ignore` only; None: every non-zero value is lung (sides split classically)."""
    if spec is None:
        return ClassMap(name="any-lung", labels={0: L.BACKGROUND}, source="--lung-mask (every non-zero value is lung)",
                        extra={"default": L.LUNG})
    cm = load_classmap(spec)
    if "default" in cm.extra and cm.extra["default"] not in (L.BACKGROUND, L.LUNG, L.AIRWAY) \
            or any(v not in (L.BACKGROUND, L.LUNG, L.AIRWAY) for v in cm.labels.values()):
        raise ClassMapError(f"{cm.source}: a lung-mask map takes lung_right, lung_left, lung, airway or ignore only; "
                            f"it maps to {sorted(set(L.names(cm.labels.values())) - {'background'})}")
    return cm
