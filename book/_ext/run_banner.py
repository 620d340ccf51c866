"""Sphinx extension: a banner on every page saying which profile rendered the book and what that run can test.

`python -m difflung run` writes `_generated/run.json` (the profile and the banner text chosen by
`difflung.run.pipeline.banner_text`); this extension shows that text as the theme's announcement, so the intro, the
chapters and the static pages all carry it. No file, no banner.
"""
import json
from pathlib import Path


def _set_banner(app, config):
    path = Path(app.srcdir) / "_generated" / "run.json"
    if not path.is_file():
        return
    text = json.loads(path.read_text()).get("banner")
    if text:
        opts = dict(config.html_theme_options or {})
        opts["announcement"] = text
        config.html_theme_options = opts


def setup(app):
    app.connect("config-inited", _set_banner, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
