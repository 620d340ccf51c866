"""Each notebook's parameters-cell defaults equal the values `profiles/smoke.yml` gives that notebook.

A notebook run by hand (Jupyter, `jupytext --execute`) then does what `python -m difflung run --profile smoke`
does, and a profile value has one home: the profile. Both the py:percent source and the paired .ipynb are read.
"""
import ast
from pathlib import Path

import jupytext
import pytest

from difflung.run import pipeline
from difflung.run.profiles import OWN_DATASET_NOTEBOOKS, common_values, load_profile

REPO = Path(__file__).resolve().parents[1]
PROFILE = "smoke"
RUNS_ROOT = f"runs/{PROFILE}"  # `python -m difflung run` puts a profile's artifacts under runs/<profile>


def parameter_defaults(path) -> dict:
    """`name = literal` assignments of the notebook's one cell tagged `parameters`."""
    nb = jupytext.read(path)
    cells = [c for c in nb.cells if c.cell_type == "code" and "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1:
        raise ValueError(f"{path}: expected one code cell tagged 'parameters', found {len(cells)}")
    out = {}
    for node in ast.parse(cells[0].source).body:
        if not (isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name)):
            raise ValueError(f"{path}: parameters cell line {node.lineno} is not `name = literal`")
        out[node.targets[0].id] = ast.literal_eval(node.value)
    return out


# a notebook that stands in for a chapter (chapter 1 on your own dataset) gets that chapter's section and run folder,
# less the keys only the chapter's own notebook uses
STANDS_IN = {own: (chapter, drop) for chapter, (own, drop) in OWN_DATASET_NOTEBOOKS.items()}


def profile_values(profile: dict, stem: str, declared: set[str]) -> dict:
    """What the pipeline injects into notebook `stem`: common keys it declares, its section, run paths."""
    chapter, drop = STANDS_IN.get(stem, (stem, set()))
    values = {k: v for k, v in common_values(profile).items() if k in declared}
    values.update({k: v for k, v in profile["notebooks"].get(chapter, {}).items() if k not in drop})
    run = {"profile": profile["name"], "runs_root": RUNS_ROOT, "run_dir": f"{RUNS_ROOT}/{chapter}"}
    values.update({k: v for k, v in run.items() if k in declared})
    return values


def mismatches(defaults: dict, expected: dict) -> list[str]:
    """Keys whose notebook default differs from the profile's value, in value or in type (10 and 10.0 differ:
    `--set` keeps the profile's type), and profile keys the notebook does not declare."""
    out = []
    for key, want in expected.items():
        if key not in defaults:
            out.append(f"{key}: the profile gives {want!r}, the notebook does not declare it")
        elif defaults[key] != want or type(defaults[key]) is not type(want):
            out.append(f"{key}: notebook default {defaults[key]!r}, profile {want!r}")
    return out


def _stems() -> list[str]:
    toc = pipeline.toc_chapters(REPO)
    return toc + sorted({p.stem for p in (REPO / "notebooks").glob("*.py")} - set(toc))


@pytest.mark.parametrize("suffix", [".py", ".ipynb"])
@pytest.mark.parametrize("stem", _stems())
def test_notebook_defaults_equal_smoke_profile(stem, suffix):
    path = REPO / "notebooks" / f"{stem}{suffix}"
    defaults = parameter_defaults(path)
    wrong = mismatches(defaults, profile_values(load_profile(PROFILE), stem, set(defaults)))
    assert not wrong, f"{path.relative_to(REPO)} disagrees with profiles/{PROFILE}.yml: " + "; ".join(wrong)


def test_comparison_catches_a_mismatch_on_a_fake_notebook(tmp_path):
    nb = tmp_path / "09_fake.py"
    nb.write_text('# %% tags=["parameters"]\nprofile = "smoke"\nrun_dir = "runs/smoke/09_fake"\nseed = 0\n'
                  "steps = 10\nlr = 0.01\nsizes = [8, 16]\nlocal_only = True\n\n# %%\nprint(steps)\n")
    defaults = parameter_defaults(nb)
    assert defaults == {"profile": "smoke", "run_dir": "runs/smoke/09_fake", "seed": 0, "steps": 10, "lr": 0.01,
                        "sizes": [8, 16], "local_only": True}
    prof = {"name": "smoke", "common": {"seed": 0, "size": 32},
            "notebooks": {"09_fake": {"steps": 10, "lr": 0.01, "sizes": [8, 16]}}}
    assert mismatches(defaults, profile_values(prof, "09_fake", set(defaults))) == []  # `size` not declared: fine
    prof["notebooks"]["09_fake"].update(steps=20, lr=1, extra=3)
    prof["common"]["seed"] = 1
    wrong = mismatches(defaults, profile_values(prof, "09_fake", set(defaults)))
    assert [w.split(":")[0] for w in wrong] == ["seed", "steps", "lr", "extra"]  # lr: 1 (int) is not 0.01
    prof = {"name": "smoke", "common": {}, "notebooks": {"09_fake": {"steps": 10.0}}}
    assert mismatches(defaults, profile_values(prof, "09_fake", set(defaults))) == [
        "steps: notebook default 10, profile 10.0"]
    nb.write_text('# %% tags=["parameters"]\nsteps = 2 * 5\n')
    with pytest.raises(ValueError, match="malformed|literal"):
        parameter_defaults(nb)


def _cells(path) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in jupytext.read(path).cells]


@pytest.mark.parametrize("stem", _stems())
def test_paired_ipynb_has_the_py_sources_cells(stem):
    """The pipeline executes the .ipynb; an edit of the .py source without `jupytext --sync` would run old code."""
    py, ipynb = (REPO / "notebooks" / f"{stem}{s}" for s in (".py", ".ipynb"))
    assert _cells(py) == _cells(ipynb), f"{ipynb.relative_to(REPO)} is out of date: jupytext --sync {py.name}"
