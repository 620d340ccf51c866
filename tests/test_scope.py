"""The chapter scope box renders its facts, escapes text and switches to a warning when something cannot be shown."""
from difflung.chapters.scope import TITLE, Scope, smoke_caveat


def test_scope_box_html():
    s = Scope("laptop", can=["PSNR differences over 4 test patients"], facts={"test patients": "4"})
    h = s._repr_html_()
    assert TITLE in h and 'class="admonition note' in h and "test patients: <b>4</b>" in h and "Cannot" not in h
    s.cannot.append("emphysema <faithfulness>: the judge fails its floor")
    h = s.html()
    assert 'class="admonition warning' in h and "&lt;faithfulness&gt;" in h


def test_smoke_caveat_only_for_smoke():
    assert smoke_caveat("laptop") == [] and "do not test the paper" in smoke_caveat("smoke")[0]
