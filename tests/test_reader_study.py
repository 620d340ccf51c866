"""Reader study: the page is deterministic, offline and holds no key; scoring matches scipy's exact binomial."""
import csv
import json
import re

import numpy as np
import pytest
from scipy.stats import binomtest

from difflung.cli import main
from difflung.data.ctio import write_volume
from difflung.judging import reader_study as rs


def _folders(root):
    """real/: one NIfTI volume (3 tiles) and one 2D .npy; synthetic/ggo/: one 3D .npy; synthetic/: one PNG."""
    from PIL import Image

    rng = np.random.default_rng(0)
    (root / "real").mkdir(parents=True)
    (root / "synthetic" / "ggo").mkdir(parents=True)
    write_volume(root / "real" / "a.nii.gz", rng.normal(-700, 200, (12, 40, 50)).astype(np.int16), (2.5, 0.8, 0.8))
    np.save(root / "real" / "b.npy", rng.normal(-700, 200, (40, 40)))
    np.save(root / "synthetic" / "ggo" / "c.npy", rng.normal(-500, 200, (9, 30, 40)))
    Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(root / "synthetic" / "d.png")
    (root / "real" / "README.txt").write_text("not an image: ignored")
    return root / "real", root / "synthetic"


def _build(tmp_path, name="s1", seed=0, **kw):
    real, syn = _folders(tmp_path / name)
    out = tmp_path / name / "study.html"
    key = rs.build_study(real, syn, out, seed=seed, size=48, **kw)
    return out, out.with_name("key.json"), key


def test_tiles_windowed_padded_and_sliced():
    assert rs.slice_indices(101, 1) == [50] and rs.slice_indices(101, 3) == [38, 50, 63]
    assert rs.parse_window("lung") == (1500.0, -600.0) and rs.parse_window("400,40") == (400.0, 40.0)
    with pytest.raises(rs.ReaderStudyError, match="WIDTH,LEVEL"):
        rs.parse_window("wide")
    np.testing.assert_allclose(rs.window(np.array([-1350.0, -600.0, 150.0, 900.0]), 1500, -600), [0, 0.5, 1, 1])
    t = rs.to_tile(np.ones((20, 40)), 40)  # 20 x 40 -> centred in a 40 x 40 black square, no stretch
    assert t.shape == (40, 40) and t.dtype == np.uint8
    assert (t[:10] == 0).all() and (t[10:30] == 255).all() and (t[30:] == 0).all()


def test_build_writes_page_and_key_apart_deterministically(tmp_path):
    out, key_path, key = _build(tmp_path, "s1")
    page = out.read_text()
    assert json.loads(key_path.read_text()) == key
    tiles = key["tiles"]
    # 3 slices of a.nii.gz + b.npy real; 3 slices of c.npy (class ggo) + d.png synthetic
    assert len(tiles) == 8 and sorted(t["truth"] for t in tiles.values()).count("real") == 4
    assert {t["class"] for t in tiles.values() if "c.npy" in t["source"]} == {"ggo"}
    assert sorted(t["slice"] for t in tiles.values() if "a.nii.gz" in t["source"]) == [4, 6, 7]
    # the page: tile ids in display order, no truth, no file names, no URL, nothing it could fetch
    assert re.findall(r'data-tile="(t\d+)"', page) == sorted(tiles) == [f"t{i:03d}" for i in range(1, 9)]
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 8
    for leak in ("a.nii.gz", "b.npy", "c.npy", "d.png", "ggo", "key.json", "truth", "source"):
        assert leak not in page, leak
    figures = re.findall(r"<figure.*?</figure>", page)
    assert len(figures) == 8 and all(re.fullmatch(
        r'<figure class="tile" data-tile="(t\d{3})" hidden><img alt="tile \1" width="48" height="48" '
        r'src="data:image/png;base64,[A-Za-z0-9+/=]+"><figcaption>\1</figcaption></figure>', f) for f in figures)
    assert not re.search(r"https?://|//cdn|<link|src=\"(?!data:)", page)
    assert "default-src 'none'" in page
    # same seed, same page and key; another seed, another order of the same tiles
    out2, _, key2 = _build(tmp_path, "s2")
    assert out2.read_text() == page.replace(key["study"], key2["study"]) and key2["study"] == key["study"]
    assert [(t["source"], t["slice"]) for t in key2["tiles"].values()] == \
        [(t["source"].replace("/s1/", "/s2/"), t["slice"]) for t in tiles.values()]
    _, _, key3 = _build(tmp_path, "s3", seed=1)
    order = [(t["source"].rsplit("/", 1)[1], t["slice"]) for t in tiles.values()]
    order3 = [(t["source"].rsplit("/", 1)[1], t["slice"]) for t in key3["tiles"].values()]
    assert order3 != order and sorted(order3, key=str) == sorted(order, key=str) and key3["study"] != key["study"]
    # the shuffle is numpy's Generator permutation of the files' sorted tiles
    perm = np.random.default_rng(0).permutation(8)
    listed = [("a.nii.gz", 4), ("a.nii.gz", 6), ("a.nii.gz", 7), ("b.npy", None), ("d.png", None), ("c.npy", 3),
              ("c.npy", 4), ("c.npy", 5)]  # by path: synthetic/d.png before synthetic/ggo/c.npy
    assert order == [listed[j] for j in perm]


def test_build_refuses_bad_input_and_writes_nothing(tmp_path):
    real, syn = _folders(tmp_path)
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad").mkdir()
    np.save(tmp_path / "bad" / "x.npy", np.array([[np.nan, 1.0], [2.0, 3.0]]))
    (tmp_path / "rgb").mkdir()
    from PIL import Image
    Image.fromarray(np.dstack([np.zeros((8, 8), np.uint8), np.full((8, 8), 9, np.uint8),
                               np.zeros((8, 8), np.uint8)])).save(tmp_path / "rgb" / "c.png")
    out = tmp_path / "o" / "study.html"
    cases = [((tmp_path / "empty", syn), r"empty: no images"), ((real, tmp_path / "nope"), r"nope: no such folder"),
             ((real, tmp_path / "bad"), r"x\.npy: holds NaN"), ((tmp_path / "rgb", syn), r"c\.png: a colour image")]
    for (r, s), msg in cases:
        with pytest.raises(rs.ReaderStudyError, match=msg):
            rs.build_study(r, s, out)
    with pytest.raises(rs.ReaderStudyError, match="must be an .html"):
        rs.build_study(real, syn, tmp_path / "o" / "study.txt")
    rs.build_study(real, syn, tmp_path / "k" / "one.html")
    rs.build_study(real, syn, tmp_path / "k" / "one.html", seed=3)  # rebuilding a page replaces its own key
    before = (tmp_path / "k" / "key.json").read_text()
    with pytest.raises(rs.ReaderStudyError, match=r"key\.json: exists and is not the key of two\.html"):
        rs.build_study(real, syn, tmp_path / "k" / "two.html")
    assert (tmp_path / "k" / "key.json").read_text() == before and not (tmp_path / "k" / "two.html").exists()
    assert not (tmp_path / "o").exists() or not any((tmp_path / "o").iterdir())
    assert main(["reader-study", "--real", str(tmp_path / "empty"), "--synthetic", str(syn), "--out", str(out)]) == 1
    assert not out.exists() and not out.with_name("key.json").exists()


def _answers(path, rows, study):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["reader", "tile", "answer", "study"])
        w.writerows([*r, study] for r in rows)
    return path


def test_score_matches_scipy_exact_binomial(tmp_path, capsys):
    _, key_path, key = _build(tmp_path)
    truth = {t: v["truth"] for t, v in key["tiles"].items()}
    flip = {"real": "synthetic", "synthetic": "real"}
    ids = sorted(truth)
    # reader A right on all 8; reader B right on the first 3 only, answers 6 tiles
    a = _answers(tmp_path / "a.csv", [("A", t, truth[t]) for t in ids], key["study"])
    b = _answers(tmp_path / "b.csv", [("B", t, truth[t] if i < 3 else flip[truth[t]]) for i, t in enumerate(ids[:6])],
                 key["study"])
    rows, info = rs.score_answers([a, b], key_path)
    by = {(r["group"], r["level"]): r for r in rows}
    assert info["answers"] == 14 and info["unanswered"] == {"A": 0, "B": 2}

    def check(r, k, n):
        t = binomtest(k, n, 0.5)
        ci = t.proportion_ci(0.95, method="exact")
        assert (r["correct"], r["n"]) == (k, n) and r["accuracy"] == pytest.approx(k / n)
        assert (r["ci_low"], r["ci_high"], r["p_vs_chance"]) == pytest.approx((ci.low, ci.high, t.pvalue))

    check(by["overall", "all"], 11, 14)
    check(by["reader", "A"], 8, 8)
    check(by["reader", "B"], 3, 6)
    assert by["reader", "A"]["ci_low"] == pytest.approx(0.025 ** (1 / 8), rel=1e-6)  # all right: (alpha/2)^(1/n)
    b_rows = [(truth[t], i < 3) for i, t in enumerate(ids[:6])]
    for lev in ("real", "synthetic"):
        k = sum(1 for t in ids if truth[t] == lev) + sum(ok for tr, ok in b_rows if tr == lev)
        n = sum(1 for t in ids if truth[t] == lev) + sum(1 for tr, _ in b_rows if tr == lev)
        check(by["truth", lev], k, n)
    ggo = [t for t in ids if key["tiles"][t]["class"] == "ggo"]
    k = len(ggo) + sum(1 for i, t in enumerate(ids[:6]) if t in ggo and i < 3)
    check(by["class", "ggo"], k, len(ggo) + sum(1 for t in ids[:6] if t in ggo))
    # the command prints the table and writes the CSV
    out = tmp_path / "scores.csv"
    assert main(["reader-study", "--score", str(a), str(b), "--key", str(key_path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "overall" in printed and "unanswered tiles: B 2" in printed
    got = list(csv.DictReader(out.open()))
    assert got[0]["group"] == "overall" and int(got[0]["correct"]) == 11 and int(got[0]["n"]) == 14


def test_score_refuses_mismatched_answers(tmp_path, capsys):
    _, key_path, key = _build(tmp_path)
    t1 = sorted(key["tiles"])[0]
    bad = {
        "unknown.csv": ([("A", "t999", "real")], key["study"], r"unknown\.csv: line 2: tile 't999' is not in the key"),
        "other.csv": ([("A", t1, "real")], "0123456789abcdef",
                      r"other\.csv: line 2: answers of study 0123456789abcdef"),
        "answer.csv": ([("A", t1, "maybe")], key["study"], r"answer\.csv: line 2: answer 'maybe'"),
        "twice.csv": ([("A", t1, "real"), ("A", t1, "synthetic")], key["study"], r"twice\.csv: line 3: .* twice"),
        "empty.csv": ([], key["study"], r"empty\.csv: no answers"),
    }
    out = tmp_path / "scores.csv"
    for name, (rows, study, msg) in bad.items():
        p = _answers(tmp_path / name, rows, study)
        with pytest.raises(rs.ReaderStudyError, match=msg):
            rs.score_answers(p, key_path)
        assert main(["reader-study", "--score", str(p), "--key", str(key_path), "--out", str(out)]) == 1
        assert name in capsys.readouterr().err
    (tmp_path / "cols.csv").write_text("who,tile,answer\nA,t001,real\n")
    with pytest.raises(rs.ReaderStudyError, match=r"cols\.csv: missing column\(s\) reader"):
        rs.score_answers(tmp_path / "cols.csv", key_path)
    (tmp_path / "k.json").write_text("{\"tiles\": {}}")
    with pytest.raises(rs.ReaderStudyError, match=r"k\.json: not a reader-study key"):
        rs.score_answers(tmp_path / "cols.csv", tmp_path / "k.json")
    ok = _answers(tmp_path / "ok.csv", [("A", t1, "real")], key["study"])
    with pytest.raises(rs.ReaderStudyError, match=r"ok\.csv: reader 'A' answered tile .* also in"):
        rs.score_answers([ok, ok], key_path)
    assert main(["reader-study", "--score", str(ok)]) == 1 and "--key" in capsys.readouterr().err
    assert not out.exists()
