"""Sphinx extension: drop repeated <script> entries from each page.

With jupyter-book 1.0.4, Sphinx 7.4 and sphinx-book-theme 1.x, several extensions register their scripts twice
(thebe's and togglebutton's inline consts, MathJax), which a browser reports as console errors
("Identifier 'THEBE_JS_URL' has already been declared", MathJax loaded twice). Keep the first of each.
"""


def _dedupe(app, pagename, templatename, context, doctree):
    seen, kept = set(), []
    for js in context.get("script_files", []):
        # a file script is the same script whatever its attributes; an inline one is its body
        key = getattr(js, "filename", None) or getattr(js, "attributes", {}).get("body", str(js))
        if key not in seen:
            seen.add(key)
            kept.append(js)
    context["script_files"] = kept


def setup(app):
    app.connect("html-page-context", _dedupe, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
