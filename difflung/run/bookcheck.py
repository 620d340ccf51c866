"""Checks of the built site: every chapter page exists, shows its figures and a table, references only images
that exist, and carries no Python traceback. `python -m difflung check-book` runs them after a build."""
from __future__ import annotations

import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlparse

from difflung.core.provenance import REPO_ROOT

REPR = re.compile(r"&lt;[\w.]+ (?:object )?at 0x[0-9a-f]+&gt;|<[\w.]+ (?:object )?at 0x[0-9a-f]+>")  # a raw Python repr
STDERR = re.compile(r'class="[^"]*\boutput stderr\b')  # a cell's stderr stream (warnings, progress debris)
SCOPE_BOX = "What this run can and cannot show"  # the box every chapter ends with (difflung.chapters.scope)
TRACEBACK_MARKERS = ("Traceback (most recent call last)", "---------------------------------------------------------------------------\n")


RAW_CELL = re.compile(r"^(None|True|False|nan|NaN|<NA>)$")  # a Python value shown as is
SNAKE = re.compile(r"\b[a-z]+(?:_[a-z0-9]+)+\b")  # a config key or column id (gflops_per_image, snr_gamma)
ZERO_WIDTH = re.compile(r"^\s*(-?[\d.,]+(?:e-?\d+)?)\s*\[\s*\1\s*,\s*\1\s*\]")  # "21.4 [21.4, 21.4]"


class _Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.tables = 0
        self.cells: list[tuple[str, str]] = []  # (td or th, text) of every table cell
        self._cell: list[str] | None = None
        self._tag = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img" and a.get("src"):
            self.images.append(a["src"])
        elif tag == "table":
            self.tables += 1
        elif tag in ("td", "th"):
            self._cell, self._tag = [], tag

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.cells.append((self._tag, "".join(self._cell).strip()))
            self._cell = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)


def table_problems(cells: list[tuple[str, str]]) -> list[str]:
    """What a reader should never see in a table: a Python value (None, True, nan), an identifier in a header
    (snake_case: a config key or column id), an interval of zero width ("21.4 [21.4, 21.4]")."""
    out = []
    for tag, text in cells:
        if RAW_CELL.match(text):
            out.append(f"a table shows the raw value {text!r}")
        elif tag == "th" and (m := SNAKE.search(text)):
            out.append(f"a table header shows the identifier {m.group(0)!r}")
        elif m := ZERO_WIDTH.match(text):
            out.append(f"a table shows an interval of zero width ({m.group(0).strip()})")
    return list(dict.fromkeys(out))


def check_site(html_dir, chapters: list[str], runs_dir=None, scope_box: bool = True) -> list[str]:
    """Return a list of problems (empty when the site is sound).

    Args:
        html_dir: the built site (`book/_build/html`).
        chapters: notebook stems whose pages must exist (`chapters/<stem>.html`).
        runs_dir: `runs/<profile>`; when given, a chapter page must show at least as many images as the
            chapter saved PNG figures in its run folder.
        scope_box: every chapter page must carry the box "What this run can and cannot show".
    """
    html_dir = Path(html_dir)
    problems = []
    if not (html_dir / "index.html").is_file():
        return [f"{html_dir}/index.html missing: the book was not built"]
    for page in sorted(html_dir.rglob("*.html")):
        text = page.read_text(errors="replace")
        rel = page.relative_to(html_dir)
        if any(m in text for m in TRACEBACK_MARKERS) or re.search(r"\b\w+Error</span>: ", text):
            problems.append(f"{rel}: contains Python traceback text")
        if m := REPR.search(text):
            problems.append(f"{rel}: shows a raw Python repr ({m.group(0)[:60]})")
        if STDERR.search(text):
            problems.append(f"{rel}: shows a cell's stderr output (warnings or progress bars)")
        parser = _Page()
        parser.feed(text)
        problems += [f"{rel}: {p}" for p in table_problems(parser.cells)]
        for src in parser.images:
            u = urlparse(src)
            if u.scheme in ("data",) or src.startswith("data:"):
                continue
            if u.scheme or u.netloc:
                problems.append(f"{rel}: image from outside the site: {src}")
                continue
            if not (page.parent / unquote(u.path)).resolve().is_file():
                problems.append(f"{rel}: image {src} does not exist")
    for stem in chapters:
        page = html_dir / "chapters" / f"{stem}.html"
        if not page.is_file():
            problems.append(f"chapters/{stem}.html missing")
            continue
        parser = _Page()
        text = page.read_text(errors="replace")
        parser.feed(text)
        if scope_box and SCOPE_BOX not in text:
            problems.append(f"chapters/{stem}.html: no '{SCOPE_BOX}' box")
        if parser.tables == 0:
            problems.append(f"chapters/{stem}.html: no table")
        n_figs = len(list((Path(runs_dir) / stem).glob("*.png"))) if runs_dir else 1
        if len(parser.images) < max(n_figs, 1):
            problems.append(f"chapters/{stem}.html: {len(parser.images)} images, expected at least {max(n_figs, 1)} "
                            f"(figures saved by the chapter)")
    return problems
