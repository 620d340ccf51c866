"""The built-site checker finds missing pages, missing images, tracebacks and figure-less chapters."""
from difflung.run.bookcheck import check_site

GOOD = ('<html><body><table></table><img src="../_images/a.png"><img src="data:image/png;base64,xx">'
        '<div class="admonition"><p>What this run can and cannot show</p></div></body></html>')


def _site(tmp_path, chapter_html=GOOD):
    (tmp_path / "html/chapters").mkdir(parents=True)
    (tmp_path / "html/_images").mkdir()
    (tmp_path / "html/_images/a.png").write_bytes(b"png")
    (tmp_path / "html/index.html").write_text("<html></html>")
    (tmp_path / "html/chapters/01_x.html").write_text(chapter_html)
    (tmp_path / "runs/01_x").mkdir(parents=True)
    (tmp_path / "runs/01_x/fig1.png").write_bytes(b"png")
    return tmp_path / "html"


def test_good_site_passes(tmp_path):
    assert check_site(_site(tmp_path), ["01_x"], tmp_path / "runs") == []


def test_problems_are_reported(tmp_path):
    html = _site(tmp_path, '<p>Traceback (most recent call last)</p><img src="../_images/missing.png">')
    (tmp_path / "runs/01_x/fig2.png").write_bytes(b"png")
    problems = check_site(html, ["01_x", "02_y"], tmp_path / "runs")
    text = "\n".join(problems)
    assert "01_x.html: contains Python traceback" in text
    assert "missing.png does not exist" in text
    assert "01_x.html: no table" in text
    assert "01_x.html: 1 images, expected at least 2" in text
    assert "chapters/02_y.html missing" in text
    assert "01_x.html: no 'What this run can and cannot show' box" in text
    assert check_site(tmp_path / "nothing", ["01_x"]) == [f"{tmp_path}/nothing/index.html missing: the book was not built"]


def test_reprs_and_stderr_blocks_are_reported(tmp_path):
    html = _site(tmp_path, GOOD.replace("<table>", '<pre>(&lt;difflung.segmentation.Segmenter at 0x7f3a2c&gt;, 1)'
                                                   '</pre><div class="cell_output docutils container"><div class='
                                                   '"output stderr highlight-myst-ansi"></div></div><table>'))
    text = "\n".join(check_site(html, ["01_x"], tmp_path / "runs"))
    assert "01_x.html: shows a raw Python repr (&lt;difflung.segmentation.Segmenter at 0x7f3a2c&gt;)" in text
    assert "01_x.html: shows a cell's stderr output" in text
    assert check_site(_site(tmp_path / "b"), ["01_x"], tmp_path / "b/runs") == []


def test_tables_without_raw_values_identifiers_or_zero_width_intervals():
    from difflung.plots import interval
    from difflung.run.bookcheck import table_problems

    bad = [("td", "True"), ("td", "None"), ("th", "gflops_per_image"), ("td", "21.4 [21.4, 21.4]"),
           ("td", "nan")]
    assert table_problems(bad) == ["a table shows the raw value 'True'", "a table shows the raw value 'None'",
                                   "a table header shows the identifier 'gflops_per_image'",
                                   "a table shows an interval of zero width (21.4 [21.4, 21.4])",
                                   "a table shows the raw value 'nan'"]
    good = [("th", "GFLOPs per image"), ("td", "21.4 [21.1, 21.7]"), ("td", "yes"), ("th", "judge Dice, lung"),
            ("td", "metrics_csv is fine in a cell"), ("td", interval(0.0, 0.0, 0.0))]
    assert table_problems(good) == [] and interval(0.0, 0.0, 0.0) == "0 (no spread)"
