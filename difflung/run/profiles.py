"""Profiles: `profiles/<name>.yml` holds the parameters of every notebook for one run size.

    common:            # given to every notebook that declares the key
      seed: 0
    notebooks:
      01_data_preparation:
        n_patients: 10

`--set key=value` overrides a key of `common`, or `NOTEBOOK.key`, or a bare key that one or more notebook
sections hold (it is set in each). Values are parsed as YAML and must keep the type of the profile's value.
"""
from __future__ import annotations

import copy
from pathlib import Path

import yaml

from difflung.core.provenance import REPO_ROOT

PROFILE_DIR = REPO_ROOT / "profiles"


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
    if not isinstance(data, dict) or set(data) - {"common", "notebooks"}:
        raise ProfileError(f"{path}: expected top-level keys 'common' and 'notebooks' only")
    data.setdefault("common", {})
    data.setdefault("notebooks", {})
    data["name"] = name
    data["path"] = str(path)
    return data


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
    """Return a copy of `profile` with `key=value` overrides applied; unknown keys or wrong types raise."""
    prof = copy.deepcopy(profile)
    for item in overrides or []:
        if "=" not in item:
            raise ProfileError(f"--set {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip()
        if "." in key:
            nb, k = key.split(".", 1)
            section = prof["notebooks"].get(nb)
            if section is None or k not in section:
                raise ProfileError(f"--set {key}: notebook {nb!r} has no parameter {k!r} in {prof['path']}")
            section[k] = _coerce(key, raw, section[k])
        elif key in prof["common"]:
            prof["common"][key] = _coerce(key, raw, prof["common"][key])
        else:
            hits = [s for s in prof["notebooks"].values() if key in s]
            if not hits:
                known = sorted(set(prof["common"]) | {k for s in prof["notebooks"].values() for k in s})
                raise ProfileError(f"--set {key}: unknown parameter for profile {prof['name']!r}; "
                                   f"known: {', '.join(known)}")
            for s in hits:
                s[key] = _coerce(key, raw, s[key])
    return prof


def notebook_parameters(profile: dict, stem: str, declared: set[str], runs_root: str) -> dict:
    """Parameters papermill injects into notebook `stem`: common keys it declares, its own section,
    plus `profile`, `run_dir` and `runs_root`. A section key the notebook does not declare is an error."""
    section = profile["notebooks"].get(stem, {})
    unknown = sorted(set(section) - declared)
    if unknown:
        raise ProfileError(f"{profile['path']}: notebooks.{stem} sets {unknown}, which notebooks/{stem}.ipynb "
                           f"does not declare in its parameters cell")
    params = {k: v for k, v in profile["common"].items() if k in declared}
    params.update(section)
    extra = {"profile": profile["name"], "runs_root": runs_root, "run_dir": f"{runs_root}/{stem}"}
    params.update({k: v for k, v in extra.items() if k in declared})
    return params
