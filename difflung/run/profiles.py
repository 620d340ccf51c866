"""Profiles: `profiles/<name>.yml` holds the parameters of every notebook for one run size.

    common:            # given to every notebook that declares the key
      seed: 0
      diffusion:       # shared settings of the diffusion models, written once
        steps: 600
      sampling:        # how every chapter samples and how many test slices it scores
        sampler: dpm
    notebooks:         # a notebook's own parameters, and its overrides of `common`
      06_lesion_insertion:
        steps: 60

`common`'s groups (`diffusion`, `sampling`) only gather keys for the reader: a notebook receives them as plain
parameters (`steps`, `sampler`). A group holds only its own keys (`GROUPS`); anything else is refused.

`--set key=value` sets a key everywhere the profile writes it (in `common` and in each notebook section that
overrides it); `--set NOTEBOOK.key=value` sets it for one notebook; `--set diffusion.key=value` (or
`sampling.`) sets the common value only. Values are parsed as YAML and must keep the type of the profile's value.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from difflung.core.provenance import REPO_ROOT

PROFILE_DIR = REPO_ROOT / "profiles"
# `common`'s groups and the keys each may hold: settings several chapters share, written once per profile
GROUPS = {"diffusion": ("preset", "steps", "batch_size", "lr", "warmup", "low_res_share", "mixed_precision"),
          "sampling": ("sampler", "sampler_steps", "sample_seeds", "n_test"),
          "plateau": ("curve_evals", "max_budgets", "n_val")}


class ProfileError(ValueError):
    pass


def available_profiles(profile_dir: Path = PROFILE_DIR) -> list[str]:
    return sorted(p.stem for p in Path(profile_dir).glob("*.yml"))


def load_profile(name: str, profile_dir: Path = PROFILE_DIR) -> dict:
    path = Path(profile_dir) / f"{name}.yml"
    if not path.is_file():
        raise ProfileError(f"unknown profile {name!r}: {path} does not exist; "
                           f"available: {', '.join(available_profiles(profile_dir)) or 'none'}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ProfileError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(data, dict) or set(data) - {"common", "notebooks", "parts"}:
        raise ProfileError(f"{path}: expected top-level keys 'common', 'notebooks' and optionally 'parts' only")
    data["common"] = data.get("common") or {}
    data["notebooks"] = data.get("notebooks") or {}
    data["parts"] = data.get("parts") or {}
    _check_parts(data["parts"], path)
    _check_common(data["common"], path)
    for stem, section in data["notebooks"].items():
        if not isinstance(section, dict):
            raise ProfileError(f"{path}: notebooks.{stem} must be a mapping of parameters")
    data["name"] = name
    data["path"] = str(path)
    return data


def _part_spec(value) -> tuple[list, dict] | None:
    """(chapters, first-pass settings) of one part's entry, or None when malformed: a list of notebook names, or
    {"chapters": [...], "set": {key: value}} for a first pass (see `_check_parts`)."""
    if isinstance(value, list):
        value = {"chapters": value}
    if not isinstance(value, dict) or set(value) - {"chapters", "set"}:
        return None
    chapters, settings = value.get("chapters"), value.get("set", {})
    if not (isinstance(chapters, list) and chapters and all(isinstance(c, str) for c in chapters)
            and isinstance(settings, dict)):
        return None
    return chapters, settings


def _check_parts(parts, path: Path) -> None:
    """`parts`: {name: [notebook stems]}, a run too long for one sitting cut into consecutive groups of chapters,
    each run (`run --part NAME`) and archived (`archive --part NAME`) on its own; a stem in at most one part.

    A part may instead be {"chapters": [stems], "set": {key: value}}: a first pass of chapters too long for one
    sitting, run with those parameters (fewer seeds, one budget) so that it trains the first of the chapters' models;
    the chapter's own part then runs it whole, reusing what the first pass trained (the same configurations, so the
    same models as one run would train). A stem may be in one first pass besides its own part."""
    specs = {name: _part_spec(v) for name, v in parts.items()} if isinstance(parts, dict) else None
    if specs is None or any(v is None for v in specs.values()):
        raise ProfileError(f"{path}: parts must map each part's name to a list of notebook names, or to "
                           "{chapters: [...], set: {key: value}} for a first pass")
    for first in (False, True):
        seen = [s for chapters, settings in specs.values() if bool(settings) == first for s in chapters]
        if len(seen) != len(set(seen)):
            raise ProfileError(f"{path}: parts name a notebook twice ({sorted({s for s in seen if seen.count(s) > 1})})")


def part_settings(profile: dict, part: str) -> dict:
    """The parameters a first-pass part sets on its chapters ({} for a plain part)."""
    return _part_spec((profile.get("parts") or {})[part])[1]


def part_chapters(profile: dict, part: str, chapters: list[str]) -> list[str]:
    """The chapters of `part` in book order; ProfileError naming the profile when the part or a chapter is unknown."""
    parts = profile.get("parts") or {}
    if part not in parts:
        raise ProfileError(f"{profile['path']}: no part {part!r} (parts: {', '.join(parts) or 'none'})")
    names = _part_spec(parts[part])[0]
    unknown = sorted(set(names) - set(chapters))
    if unknown:
        raise ProfileError(f"{profile['path']}: part {part!r} names {unknown}, not chapters of _toc.yml")
    return [s for s in chapters if s in names]


def _check_common(common, path: Path) -> None:
    """Refuse a malformed `common`: a group that is not a mapping, a key a group does not hold, a group's key
    written outside it."""
    if not isinstance(common, dict):
        raise ProfileError(f"{path}: `common` must be a mapping of parameters")
    plain = {k for k in common if k not in GROUPS}
    for group, allowed in GROUPS.items():
        loose = sorted(plain & set(allowed))
        if loose:  # a shared setting has one home
            raise ProfileError(f"{path}: common.{loose[0]} belongs in common.{group}")
        values = common.get(group, {})
        if not isinstance(values, dict):
            raise ProfileError(f"{path}: common.{group} must be a mapping of parameters")
        unknown = sorted(set(values) - set(allowed))
        if unknown:
            raise ProfileError(f"{path}: common.{group} has unknown keys {unknown}; it may hold {', '.join(allowed)}")


def common_values(profile: dict) -> dict:
    """`common` as the notebooks receive it: the groups' keys beside the plain ones.

    Args:
        profile: a profile from `load_profile` (or `apply_overrides`).
    """
    common = profile["common"]
    out = {k: v for k, v in common.items() if k not in GROUPS}
    for group in GROUPS:
        out.update(common.get(group, {}))
    return out


def _holders(common: dict, key: str) -> list[dict]:
    """The mappings of `common` (itself or one of its groups) that hold `key`."""
    if key in common and key not in GROUPS:
        return [common]
    return [common[g] for g in GROUPS if key in common.get(g, {})]


def _coerce(key: str, raw: str, old):
    try:
        new = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ProfileError(f"--set {key}={raw}: value is not valid YAML ({e})") from e
    if isinstance(old, bool):
        ok = isinstance(new, bool)
    elif isinstance(old, int):
        ok = isinstance(new, int) and not isinstance(new, bool)
    elif isinstance(old, float):
        ok = isinstance(new, (int, float)) and not isinstance(new, bool)
        new = float(new) if ok else new
    elif isinstance(old, str):
        ok, new = True, str(new) if not isinstance(new, str) else new
    elif isinstance(old, list):
        ok = isinstance(new, list)
    elif old is None:
        ok = True
    else:
        ok = isinstance(new, type(old))
    if not ok:
        raise ProfileError(f"--set {key}={raw}: expected {type(old).__name__} (profile value {old!r}), "
                           f"got {type(new).__name__}")
    return new


def apply_overrides(profile: dict, overrides: list[str]) -> dict:
    """Return a copy of `profile` with `key=value` overrides applied; unknown keys or wrong types raise.

    Args:
        profile: a profile from `load_profile` (not modified).
        overrides: `key=value`, `NOTEBOOK.key=value` or `GROUP.key=value` strings (see the module docstring).
    """
    prof = copy.deepcopy(profile)
    for item in overrides or []:
        if "=" not in item:
            raise ProfileError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        common = prof["common"]
        if "." in key:
            where, k = key.split(".", 1)
            if where in GROUPS:
                group = common.get(where, {})
                if k not in group:
                    raise ProfileError(f"--set {key}: common.{where} has no parameter {k!r} in {prof['path']}")
                group[k] = _coerce(key, raw, group[k])
                continue
            section = prof["notebooks"].get(where, {})
            shared = common_values(prof)
            if k not in section and k not in shared:
                raise ProfileError(f"--set {key}: notebook {where!r} has no parameter {k!r} in {prof['path']}")
            # a common key set for one notebook becomes that notebook's override
            section[k] = _coerce(key, raw, section[k] if k in section else shared[k])
            prof["notebooks"][where] = section
            continue
        places = _holders(common, key) + [s for s in prof["notebooks"].values() if key in s]
        if not places:
            known = sorted(set(common_values(prof)) | {k for s in prof["notebooks"].values() for k in s})
            raise ProfileError(f"--set {key}: unknown parameter for profile {prof['name']!r}; "
                               f"known: {', '.join(known)}")
        for place in places:
            place[key] = _coerce(key, raw, place[key])
    return prof


# chapter -> (the notebook that fills its page when the profile's `dataset` is set, the section keys only the
# phantom's notebook uses): a run on a prepared dataset adopts it instead of building the phantom
OWN_DATASET_NOTEBOOKS = {"01_data_preparation": ("01_own_dataset", {
    "n_patients", "slices_per_patient", "phantom_size", "real_ct", "device"})}


def own_dataset(profile: dict) -> str:
    """The prepared dataset folder the run uses instead of the phantom ("" for the phantom)."""
    return str(profile["common"].get("dataset") or "")


def source_notebook(profile: dict, stem: str) -> str:
    """The notebook (stem) executed for chapter `stem`: the own-dataset variant when the profile's `dataset` is
    set and the chapter has one, else the chapter's own."""
    if own_dataset(profile) and stem in OWN_DATASET_NOTEBOOKS:
        return OWN_DATASET_NOTEBOOKS[stem][0]
    return stem


def notebook_parameters(profile: dict, stem: str, declared: set[str], runs_root: str) -> dict:
    """Parameters papermill injects into notebook `stem`: common keys it declares, its own section,
    plus `profile`, `run_dir` and `runs_root`. A section key the notebook does not declare is an error (except
    the phantom-only keys of a chapter whose own-dataset variant runs)."""
    section = dict(profile["notebooks"].get(stem, {}))
    if source_notebook(profile, stem) != stem:
        section = {k: v for k, v in section.items() if k not in OWN_DATASET_NOTEBOOKS[stem][1]}
    unknown = sorted(set(section) - declared)
    if unknown:
        raise ProfileError(f"{profile['path']}: notebooks.{stem} sets {unknown}, which notebooks/{stem}.ipynb "
                           f"does not declare in its parameters cell")
    params = {k: v for k, v in common_values(profile).items() if k in declared}
    params.update(section)
    extra = {"profile": profile["name"], "runs_root": runs_root, "run_dir": f"{runs_root}/{stem}"}
    params.update({k: v for k, v in extra.items() if k in declared})
    return params
