"""The built book in a real browser (headless Debian Chromium, kept offline).

Run after `jupyter-book build book`:  .venv/bin/python -m pytest -m browser tests/test_browser.py
Every page must load with no console errors and no request leaving localhost, every image must have a non-zero
natural width, and math must be typeset by the book's own MathJax. A screenshot of each page is saved in
book/_build/screenshots/.
"""
import functools
import html
import http.server
import os
import re
import shutil
import threading
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SITE = Path(os.environ.get("DIFFLUNG_SITE", Path(__file__).resolve().parent.parent / "book/_build/html"))
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Flags that keep Chromium from calling home: this machine has no network but the package registries.
OFFLINE_FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
                 "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
                 "--disable-extensions", "--metrics-recording-only", "--no-default-browser-check"]

pytestmark = pytest.mark.browser


def _pages():
    if not SITE.is_dir():
        return []
    return sorted(str(p.relative_to(SITE)) for p in SITE.rglob("*.html")
                  if not p.name.startswith(("genindex", "search")) and "_static" not in p.parts)


@pytest.fixture(scope="module")
def server():
    if not (SITE / "index.html").is_file():
        pytest.fail(f"{SITE}/index.html missing: build the book first (jupyter-book build book)")
    handler = functools.partial(_QuietHandler, directory=str(SITE))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} not found: install Debian's chromium (apt-get install chromium)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=OFFLINE_FLAGS, headless=True)
        yield b
        b.close()


def _toc_entries(toc: Path = REPO / "book" / "_toc.yml") -> list[str]:
    """Every page the book's table of contents names: its root, then each `file` entry in order."""
    data = yaml.safe_load(toc.read_text())
    out = [data["root"]]

    def walk(node):
        if isinstance(node, dict):
            if isinstance(node.get("file"), str):
                out.append(node["file"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(data.get("parts", data.get("chapters", [])))
    return out


def _title(entry: str) -> str | None:
    """The page's first heading in its source (a notebook's py:percent file or a Markdown page); None if generated."""
    stem = entry.removeprefix("chapters/")
    src = REPO / "notebooks" / f"{stem}.py" if entry.startswith("chapters/") else REPO / "book" / f"{entry}.md"
    if not src.is_file():
        return None
    prefix = "# # " if src.suffix == ".py" else "# "
    return next(line[len(prefix):].strip() for line in src.read_text().splitlines() if line.startswith(prefix))


def missing_pages(site: Path, entries: list[str]) -> list[str]:
    """Table-of-contents entries without a page in `site`, or whose page lacks the source's title."""
    out = []
    for entry in entries:
        page, title = site / f"{entry}.html", _title(entry)
        if not page.is_file():
            out.append(f"{entry}: no {page.name}")
            continue
        # the page's own heading, not the sidebar (which names every page)
        h1 = [html.unescape(re.sub(r"<[^>]+>", "", h)) for h in
              re.findall(r"<h1[^>]*>(.*?)</h1>", page.read_text(errors="replace"), flags=re.S)]
        if title and not any(title in h for h in h1):
            out.append(f"{entry}: its heading is not {title!r} (h1: {h1})")
    return out


def test_site_has_pages():
    """Every page of the table of contents is built, by name and with its title: the seven chapters in order."""
    entries = _toc_entries()
    assert [e for e in entries if e.startswith("chapters/")] == [
        f"chapters/{s}" for s in ("01_data_preparation", "02_mask_ablation_study", "03_cbmat_training",
                                  "04_baseline_comparison", "05_segmentation_augmentation", "06_lesion_insertion",
                                  "07_results")]
    missing = missing_pages(SITE, entries)
    assert not missing, f"{SITE}: " + "; ".join(missing)


@pytest.mark.parametrize("page_path", _pages())
def test_page_in_browser(page_path, server, browser):
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    errors, outside = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    def route(r):
        if r.request.url.startswith(server) or r.request.url.startswith("data:"):
            return r.continue_()
        outside.append(r.request.url)
        return r.abort()

    page.route("**/*", route)
    resp = page.goto(f"{server}/{page_path}", wait_until="networkidle")
    assert resp is not None and resp.ok, f"{page_path}: HTTP {resp and resp.status}"
    has_math = page.evaluate("document.querySelectorAll('.math, div.math, span.math').length") > 0
    if has_math:
        page.wait_for_function("window.MathJax && MathJax.startup && MathJax.startup.promise", timeout=20000)
        page.evaluate("MathJax.startup.promise")
        n_typeset = page.evaluate("document.querySelectorAll('mjx-container').length")
        assert n_typeset > 0, f"{page_path}: math present but not typeset by MathJax"
    widths = page.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.complete ? i.naturalWidth : 0])")
    broken = [src for src, w in widths if not w]
    shots = SITE.parent / "screenshots"
    shots.mkdir(exist_ok=True)
    page.screenshot(path=str(shots / (page_path.replace("/", "__").removesuffix(".html") + ".png")), full_page=True)
    page.close()
    assert not outside, f"{page_path}: requests left the site: {outside}"
    assert not errors, f"{page_path}: console errors: {errors}"
    assert not broken, f"{page_path}: images with zero natural width: {broken}"
