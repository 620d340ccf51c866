"""The reader-study page in a real browser (headless Debian Chromium, offline): click, export, score.

Run: .venv/bin/python -m pytest -m browser tests/test_reader_study_browser.py
The page is opened from disk (file://); any request that is not file:, data: or blob: fails the test.
"""
import csv

import numpy as np
import pytest

from difflung.cli import main
from difflung.judging import reader_study as rs
from test_browser import browser  # noqa: F401 -- the offline headless Chromium fixture
from test_reader_study import _folders

pytestmark = pytest.mark.browser


def test_click_through_export_and_score(tmp_path, browser, capsys):
    real, syn = _folders(tmp_path / "in")
    out = tmp_path / "study" / "study.html"
    assert main(["reader-study", "--real", str(real), "--synthetic", str(syn), "--out", str(out), "--size", "48",
                 "--seed", "5"]) == 0
    key = rs.read_key(out.with_name("key.json"))
    truth = {t: v["truth"] for t, v in key["tiles"].items()}

    ctx = browser.new_context(accept_downloads=True, viewport={"width": 1000, "height": 800})
    page = ctx.new_page()
    errors, outside = [], []
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))

    def route(r):
        if r.request.url.startswith(("file:", "data:", "blob:")):
            return r.continue_()
        outside.append(r.request.url)
        return r.abort()

    page.route("**/*", route)
    page.goto(out.as_uri(), wait_until="load")
    # one tile visible at a time, decoded at the tile size
    assert page.locator("figure.tile:visible").count() == 1
    assert page.evaluate("Array.from(document.images).map(i => i.naturalWidth)") == [48] * 8
    assert page.locator("#progress").inner_text() == "0 / 8 answered"

    # export without a reader id is refused on the page, nothing downloaded
    page.click("#export")
    assert "reader id" in page.locator("#status").inner_text()

    clicked = {}
    answers = ["real", "synthetic", "synthetic", "real"]
    for a in answers:  # each click records the visible tile and moves to the next
        tid = page.locator("figure.tile:visible").get_attribute("data-tile")
        page.click(f"button[data-answer={a}]")
        clicked[tid] = a
    tid = page.locator("figure.tile:visible").get_attribute("data-tile")
    page.keyboard.press("s")  # keyboard: S = synthetic
    clicked[tid] = "synthetic"
    page.click("#prev")  # back to tile 5 and change the answer
    assert page.locator("figure.tile:visible").get_attribute("data-tile") == tid
    assert page.locator("button[data-answer=synthetic]").get_attribute("aria-pressed") == "true"
    page.click("button[data-answer=real]")
    clicked[tid] = "real"
    assert page.locator("#progress").inner_text() == "5 / 8 answered"
    assert list(clicked) == [f"t{i:03d}" for i in range(1, 6)]

    page.fill("#reader", "dr, one")  # a comma: the CSV must quote it
    with page.expect_download() as dl:
        page.click("#export")
    csv_path = tmp_path / "answers.csv"
    dl.value.save_as(csv_path)
    assert dl.value.suggested_filename == "answers_dr_one.csv"
    assert page.locator("#status").inner_text() == "Exported 5 answers."
    ctx.close()
    assert not outside, f"requests left the page: {outside}"
    assert not errors, f"console errors: {errors}"

    rows = list(csv.DictReader(csv_path.open()))
    assert [(r["reader"], r["tile"], r["answer"], r["study"]) for r in rows] == \
        [("dr, one", t, a, key["study"]) for t, a in clicked.items()]
    right = sum(truth[t] == a for t, a in clicked.items())
    assert main(["reader-study", "--score", str(csv_path), "--key", str(out.with_name("key.json"))]) == 0
    printed = capsys.readouterr().out
    assert "5 answers from 1 reader(s) on 8 tiles" in printed
    table, _ = rs.score_answers(csv_path, out.with_name("key.json"))
    assert (table[0]["correct"], table[0]["n"]) == (right, 5)
    assert table[0]["accuracy"] == pytest.approx(right / 5) and np.isfinite(table[0]["ci_low"])
