"""`difflung.judging` judges and nothing else: no module under it imports `difflung.plots` or a chapter (tables
and sentences about criteria belong to the chapter layer), at module level or inside a function."""
import ast
from pathlib import Path

import pytest

JUDGING = Path(__file__).resolve().parent.parent / "difflung" / "judging"
FORBIDDEN = ("difflung.plots", "difflung.chapters")


def _imports(path: Path) -> set[str]:
    """Every module a file imports (relative imports resolved; `from difflung import plots` as difflung.plots)."""
    package = ["difflung", "judging"]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = ".".join(package[:len(package) - node.level + 1] + ([node.module] if node.module else [])) \
                if node.level else node.module
            out |= {base} | {f"{base}.{a.name}" for a in node.names}
    return out


def _offenders(path: Path) -> list[str]:
    return sorted(m for m in _imports(path) if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))


def test_the_import_parser_sees_every_form(tmp_path):
    f = tmp_path / "m.py"
    f.write_text("import difflung.plots\ndef g():\n    from difflung import chapters\n    from ..plots import sig\n")
    assert _offenders(f) == ["difflung.chapters", "difflung.plots", "difflung.plots.sig"]
    f.write_text("from difflung.judging import stats\nfrom . import scoring\nimport numpy\n")
    assert _offenders(f) == []


def test_judging_imports_neither_plots_nor_chapters():
    bad = {p.name: _offenders(p) for p in sorted(JUDGING.glob("*.py")) if _offenders(p)}
    assert bad == {}


def test_only_criteria_presentation_is_left_to_move():
    """Until the chapters branch lands, the one offender is criteria's presentation, importing plots only."""
    bad = {p.name: _offenders(p) for p in sorted(JUDGING.glob("*.py")) if _offenders(p)}
    assert set(bad) <= {"criteria.py"} and all(m.startswith("difflung.plots") for m in bad.get("criteria.py", []))
