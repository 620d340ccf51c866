"""Reader study (visual Turing test): real and synthetic CT tiles shuffled into one offline HTML page, and scoring.

`build_study` reads every image in a folder of real and a folder of synthetic images, cuts 2D axial tiles (slices of
volumes, or the images themselves), windows them all alike, pads them to squares of one size, shuffles them with a
seeded numpy Generator and writes
    - the page: self-contained HTML (inline CSS and JS, tiles as base64 PNG, a Content-Security-Policy that allows
      no network request), showing one tile at a time; the reader marks it "real" or "synthetic" (buttons or the
      R / S keys) and exports a CSV `reader,tile,answer,study` (a download);
    - the key (`key.json`, a separate file): tile id -> truth (real / synthetic), source file, slice, class.
The page holds tile ids in display order only: nothing in it tells real from synthetic but the pixels.

`score_answers` checks the answer files against the key and reports accuracy (share of tiles called right) with an
exact binomial (Clopper-Pearson) 95 % interval and the two-sided binomial test against chance (0.5), overall, per
truth, per class and per reader. Overall and per-class rows pool readers, i.e. treat each answer as independent.

Inputs: NIfTI/NRRD/MHA/MHD volumes (read in LPI by `difflung.data.ctio`, HU), .npy arrays in HU (2D (y, x) or
3D (z, y, x)), and 8-bit grayscale .png images taken as already windowed. Files directly in a folder have no class;
files in a subfolder take the subfolder's name as their class (`real/ggo/a.nii.gz` -> class "ggo").
"""
from __future__ import annotations

import base64
import csv
import hashlib
import html
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from difflung.data.ctio import VOLUME_SUFFIXES, CTReadError, read_volume, volume_suffix

WINDOWS = {"lung": (1500.0, -600.0), "mediastinum": (400.0, 40.0)}  # name -> (width, level) HU
IMAGE_SUFFIXES = (".npy", ".png")
TRUTHS = ("real", "synthetic")
ANSWER_COLUMNS = ("reader", "tile", "answer", "study")


class ReaderStudyError(ValueError):
    """Bad input for building or scoring a reader study; the message names the file."""


@dataclass
class Tile:
    """One displayed image before shuffling: its windowed pixels and where it came from."""

    pixels: np.ndarray  # (size, size) uint8
    truth: str  # "real" | "synthetic"
    source: str
    slice: int | None  # z index (LPI) in a volume, None for a 2D image
    cls: str | None


def parse_window(text: str) -> tuple[float, float]:
    """`lung`, `mediastinum` or `W,L` (HU) -> (width, level)."""
    if text in WINDOWS:
        return WINDOWS[text]
    try:
        w, lev = (float(v) for v in text.split(","))
    except ValueError:
        raise ReaderStudyError(f"--window {text!r}: expected one of {', '.join(WINDOWS)} or WIDTH,LEVEL "
                               "in HU (e.g. 1500,-600)") from None
    if not (np.isfinite(w) and np.isfinite(lev) and w > 0):
        raise ReaderStudyError(f"--window {text!r}: the width must be a positive number of HU")
    return w, lev


def window(hu: np.ndarray, width: float, level: float) -> np.ndarray:
    """HU -> [0, 1] display values (level - width/2 is black, level + width/2 white)."""
    return np.clip((hu.astype(np.float64) - (level - width / 2.0)) / width, 0.0, 1.0)


def to_tile(display: np.ndarray, size: int) -> np.ndarray:
    """[0, 1] image (y, x) -> (size, size) uint8: padded with black to a centred square, then resized bilinearly,
    so every tile has one size and no tile is stretched."""
    from PIL import Image

    h, w = display.shape
    n = max(h, w)
    sq = np.zeros((n, n), np.float32)
    sq[(n - h) // 2:(n - h) // 2 + h, (n - w) // 2:(n - w) // 2 + w] = display
    img = Image.fromarray(sq)  # float32 -> mode "F": resampled before quantising
    if n != size:
        img = img.resize((size, size), Image.BILINEAR)
    return np.clip(np.rint(np.asarray(img, np.float64) * 255.0), 0, 255).astype(np.uint8)


def slice_indices(n_slices: int, per_volume: int) -> list[int]:
    """Evenly spaced axial slices in the central half of a volume (the middle one for per_volume=1)."""
    pos = 0.25 + 0.5 * (np.arange(per_volume) + 1) / (per_volume + 1)
    return sorted({int(np.floor((n_slices - 1) * p + 0.5)) for p in pos})


def _image_files(folder: Path) -> list[tuple[Path, str | None]]:
    """(file, class) for every readable image in `folder` and its subfolders, sorted by path."""
    out = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or p.name.startswith("."):
            continue
        if volume_suffix(p) is None and p.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        rel = p.relative_to(folder).parts
        out.append((p, rel[0] if len(rel) > 1 else None))
    return out


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.load()
            if im.mode == "L":
                return np.asarray(im).astype(np.float64) / 255.0
            if im.mode in ("RGB", "RGBA"):
                a = np.asarray(im.convert("RGB")).astype(np.float64)
                if np.any(a[..., 0] != a[..., 1]) or np.any(a[..., 0] != a[..., 2]):
                    raise ReaderStudyError(f"{path}: a colour image; expected a grayscale CT tile")
                return a[..., 0] / 255.0
            raise ReaderStudyError(f"{path}: PNG mode {im.mode}; expected 8-bit grayscale")
    except (UnidentifiedImageError, OSError) as e:
        raise ReaderStudyError(f"{path}: cannot be read as a PNG image ({e})") from e


def _read_npy(path: Path) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise ReaderStudyError(f"{path}: cannot be read as a numeric .npy array ({e})") from e
    if a.ndim not in (2, 3) or a.dtype.kind not in "iuf" or min(a.shape) < 2:
        raise ReaderStudyError(f"{path}: array {a.dtype} {a.shape}; expected HU as 2D (y, x) or 3D (z, y, x)")
    if not np.isfinite(a).all():
        raise ReaderStudyError(f"{path}: holds NaN or infinite values")
    return a


def read_tiles(folder, truth: str, win: tuple[float, float], size: int, per_volume: int) -> list[Tile]:
    """Every tile of one folder (see the module docstring), windowed with `win` (width, level) HU.

    Args:
        folder: the folder of real or of synthetic images; truth: "real" or "synthetic".
        win: window (width, level) HU for volumes and .npy; size: tile side in pixels.
        per_volume: axial slices taken from each 3D volume (`slice_indices`).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ReaderStudyError(f"{folder}: no such folder ({truth} images)")
    files = _image_files(folder)
    if not files:
        raise ReaderStudyError(f"{folder}: no images ({', '.join(VOLUME_SUFFIXES + IMAGE_SUFFIXES)}) in this "
                               f"folder or its subfolders; nothing to show as {truth}")
    tiles = []
    for path, cls in files:
        if path.suffix.lower() == ".png":
            tiles.append(Tile(to_tile(_read_png(path), size), truth, str(path), None, cls))
            continue
        if path.suffix.lower() == ".npy":
            hu = _read_npy(path)
        else:
            try:
                hu = read_volume(path).hu
            except CTReadError as e:
                raise ReaderStudyError(str(e)) from e
        if hu.ndim == 2:
            tiles.append(Tile(to_tile(window(hu, *win), size), truth, str(path), None, cls))
            continue
        for k in slice_indices(hu.shape[0], per_volume):
            tiles.append(Tile(to_tile(window(hu[k], *win), size), truth, str(path), k, cls))
    return tiles


def _png_b64(pixels: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG", optimize=False)  # no text chunks: nothing but pixels
    return base64.b64encode(buf.getvalue()).decode("ascii")


def build_study(real, synthetic, out, *, key=None, window_hu: tuple[float, float] = WINDOWS["lung"],
                size: int = 256, per_volume: int = 3, seed: int = 0, title: str = "CT reader study") -> dict:
    """Write the study page `out` and its key (default `key.json` beside the page); return the key.

    Args:
        real, synthetic: folders of images (module docstring); each must hold at least one.
        out: the HTML page to write; key: the key file (must differ from `out`).
        window_hu: (width, level) HU for every volume and .npy tile; size: tile side in pixels (16..2048).
        per_volume: axial slices per 3D volume; seed: seeds the shuffle (numpy Generator).
        title: the page's heading.
    Both files are written only when every input has been read (atomically).
    """
    from difflung.core.provenance import write_json_atomic, write_text_atomic

    out = Path(out)
    key = Path(key) if key is not None else out.with_name("key.json")
    if out.suffix.lower() not in (".html", ".htm"):
        raise ReaderStudyError(f"{out}: the study page must be an .html file")
    if key.resolve() == out.resolve():
        raise ReaderStudyError(f"{key}: the key must be a file apart from the page")
    if key.is_file():  # another study's key would be lost, and with it the scoring of that study's answers
        try:
            page_of = json.loads(key.read_text()).get("page")
        except (ValueError, OSError, AttributeError):
            page_of = None
        if page_of != out.name:
            raise ReaderStudyError(f"{key}: exists and is not the key of {out.name} (it belongs to {page_of!r}); "
                                   "choose another --key or folder")
    if not 16 <= int(size) <= 2048:
        raise ReaderStudyError(f"--size {size}: tile side must be 16..2048 pixels")
    if int(per_volume) < 1:
        raise ReaderStudyError(f"--per-volume {per_volume}: take at least one slice per volume")
    tiles = (read_tiles(real, "real", window_hu, int(size), int(per_volume))
             + read_tiles(synthetic, "synthetic", window_hu, int(size), int(per_volume)))
    order = np.random.default_rng(seed).permutation(len(tiles))
    width = max(3, len(str(len(tiles))))
    shown = [(f"t{i + 1:0{width}d}", tiles[j]) for i, j in enumerate(order)]
    pngs = [_png_b64(t.pixels) for _, t in shown]
    h = hashlib.sha256(json.dumps([seed, list(window_hu), int(size)]).encode())
    for tid, b64 in zip((tid for tid, _ in shown), pngs):
        h.update(tid.encode() + b64.encode())
    study = h.hexdigest()[:16]
    key_obj = {
        "study": study, "page": out.name, "seed": int(seed), "window_hu": {"width": window_hu[0],
                                                                          "level": window_hu[1]},
        "size": int(size), "per_volume": int(per_volume), "real": str(real), "synthetic": str(synthetic),
        "tiles": {tid: {"truth": t.truth, "source": t.source, "slice": t.slice, "class": t.cls} for tid, t in shown},
    }
    page = render_page([tid for tid, _ in shown], pngs, study, title, window_hu, int(size))
    write_json_atomic(key, key_obj)
    write_text_atomic(out, page)
    return key_obj


_CSS = """
body{font-family:system-ui,sans-serif;margin:0;background:#1b1b1b;color:#eee}
header{display:flex;gap:1em;align-items:center;flex-wrap:wrap;padding:.6em 1em;background:#2a2a2a}
header h1{font-size:1.1em;margin:0 1em 0 0}
main{display:flex;flex-direction:column;align-items:center;padding:1em}
figure{margin:0;display:flex;flex-direction:column;align-items:center}
figure img{width:min(62vh,90vw);height:auto;image-rendering:auto;background:#000}
figcaption{margin:.4em;color:#aaa}
button{font-size:1em;padding:.5em 1.2em;margin:.3em;border-radius:4px;border:1px solid #777;background:#333;
color:#eee;cursor:pointer}
button[aria-pressed=true]{background:#2d6cdf;border-color:#2d6cdf}
#status{color:#f3c969}
[hidden]{display:none!important}
"""

_JS = """
(function(){
const STUDY = document.body.dataset.study;
const tiles = Array.from(document.querySelectorAll('figure.tile'));
const answers = {};
let cur = 0;
const $ = id => document.getElementById(id);
function update(){
  const n = Object.keys(answers).length;
  $('progress').textContent = n + ' / ' + tiles.length + ' answered';
  $('position').textContent = 'tile ' + (cur + 1) + ' of ' + tiles.length;
  const a = answers[tiles[cur].dataset.tile];
  for (const b of document.querySelectorAll('button[data-answer]'))
    b.setAttribute('aria-pressed', String(b.dataset.answer === a));
}
function show(k){
  cur = Math.max(0, Math.min(tiles.length - 1, k));
  tiles.forEach((t, j) => { t.hidden = j !== cur; });
  update();
}
function answer(a){
  answers[tiles[cur].dataset.tile] = a;
  if (cur < tiles.length - 1) show(cur + 1); else update();
}
function field(s){ return /[",\\r\\n]/.test(s) ? '"' + s.replace(/"/g, '""') + '"' : s; }
function exportCsv(){
  const reader = $('reader').value.trim();
  if (!reader){ $('status').textContent = 'Enter your reader id before exporting.'; $('reader').focus(); return; }
  const rows = ['reader,tile,answer,study'];
  for (const t of tiles){
    const a = answers[t.dataset.tile];
    if (a) rows.push([field(reader), t.dataset.tile, a, STUDY].join(','));
  }
  const blob = new Blob([rows.join('\\n') + '\\n'], {type: 'text/csv'});
  const link = document.createElement('a');
  link.href = URL.createObjectURL(blob);
  link.download = 'answers_' + reader.replace(/[^A-Za-z0-9_.-]+/g, '_') + '.csv';
  document.body.appendChild(link);
  link.click();
  link.remove();
  $('status').textContent = 'Exported ' + (rows.length - 1) + ' answers.';
}
for (const b of document.querySelectorAll('button[data-answer]'))
  b.addEventListener('click', () => answer(b.dataset.answer));
$('prev').addEventListener('click', () => show(cur - 1));
$('next').addEventListener('click', () => show(cur + 1));
$('export').addEventListener('click', exportCsv);
document.addEventListener('keydown', e => {
  if (e.target.tagName === 'INPUT') return;
  const k = e.key.toLowerCase();
  if (k === 'r') answer('real'); else if (k === 's') answer('synthetic');
  else if (e.key === 'ArrowLeft') show(cur - 1); else if (e.key === 'ArrowRight') show(cur + 1);
});
window.addEventListener('beforeunload', e => {
  if (Object.keys(answers).length && !$('status').textContent.startsWith('Exported')) e.preventDefault();
});
show(0);
})();
"""

_CSP = ("default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'; "
        "form-action 'none'; base-uri 'none'")


def render_page(tile_ids: list[str], pngs: list[str], study: str, title: str, window_hu, size: int) -> str:
    """The study page: tiles in display order, ids only (no truth, no file names)."""
    esc = html.escape
    figures = "\n".join(
        f'<figure class="tile" data-tile="{tid}" hidden><img alt="tile {tid}" width="{size}" height="{size}" '
        f'src="data:image/png;base64,{b64}"><figcaption>{tid}</figcaption></figure>'
        for tid, b64 in zip(tile_ids, pngs))
    w, lev = window_hu
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{_CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{esc(title)}</title><style>{_CSS}</style></head>
<body data-study="{study}">
<header><h1>{esc(title)}</h1>
<label>Reader id <input id="reader" autocomplete="off" size="12"></label>
<span id="progress"></span><button id="export" type="button">Export answers (CSV)</button>
<span id="status" role="status"></span></header>
<main>
<p>Is this CT tile from a real scan or synthetic? Click a button or press R / S; arrows move between tiles.
{len(tile_ids)} tiles, window W{w:g} / L{lev:g} HU. Export your answers when done and send the CSV file.</p>
{figures}
<div><button type="button" data-answer="real">Real (R)</button>
<button type="button" data-answer="synthetic">Synthetic (S)</button></div>
<div><button id="prev" type="button">&larr; previous</button><span id="position"></span>
<button id="next" type="button">next &rarr;</button></div>
</main>
<script>{_JS}</script>
</body></html>
"""


# ---------------------------------------------------------------------------------------------------------------
# scoring

def read_key(path) -> dict:
    """The key written by `build_study`, checked: {"study", "tiles": {id: {"truth", "source", "slice", "class"}}}."""
    path = Path(path)
    try:
        key = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReaderStudyError(f"{path}: no such key file") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as e:
        raise ReaderStudyError(f"{path}: not a JSON reader-study key ({e})") from e
    tiles = key.get("tiles") if isinstance(key, dict) else None
    if not isinstance(tiles, dict) or not tiles or "study" not in key:
        raise ReaderStudyError(f"{path}: not a reader-study key (needs 'study' and a non-empty 'tiles' map)")
    bad = [t for t, v in tiles.items() if not isinstance(v, dict) or v.get("truth") not in TRUTHS]
    if bad:
        raise ReaderStudyError(f"{path}: tile {bad[0]} has no truth 'real' or 'synthetic'")
    return key


def read_answers(path, key: dict, key_path="key.json") -> list[dict]:
    """Rows {reader, tile, answer} of one exported CSV, checked against `key` (errors name the file and line)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ReaderStudyError(f"{path}: no such answers file") from None
    except (UnicodeDecodeError, OSError) as e:
        raise ReaderStudyError(f"{path}: cannot be read as a CSV text file ({e})") from e
    table = csv.DictReader(io.StringIO(text))
    missing = [c for c in ANSWER_COLUMNS[:3] if c not in (table.fieldnames or [])]
    if missing:
        raise ReaderStudyError(f"{path}: missing column(s) {', '.join(missing)}; expected a header "
                               f"{','.join(ANSWER_COLUMNS)} (the page's export)")
    rows, seen = [], set()
    for line, r in enumerate(table, start=2):
        rid, tile, ans = (str(r.get(c) or "").strip() for c in ANSWER_COLUMNS[:3])
        study = str(r.get("study") or "").strip()
        if study and study != key["study"]:
            raise ReaderStudyError(f"{path}: line {line}: answers of study {study}, the key {key_path} is for "
                                   f"study {key['study']}; score them with their own key")
        if not rid:
            raise ReaderStudyError(f"{path}: line {line}: empty reader id")
        if tile not in key["tiles"]:
            raise ReaderStudyError(f"{path}: line {line}: tile {tile!r} is not in the key {key_path}")
        if ans not in TRUTHS:
            raise ReaderStudyError(f"{path}: line {line}: answer {ans!r}; expected 'real' or 'synthetic'")
        if (rid, tile) in seen:
            raise ReaderStudyError(f"{path}: line {line}: reader {rid!r} answered tile {tile} twice")
        seen.add((rid, tile))
        rows.append({"reader": rid, "tile": tile, "answer": ans})
    if not rows:
        raise ReaderStudyError(f"{path}: no answers (header only)")
    return rows


def accuracy_row(group: str, level: str, correct: int, n: int, confidence: float = 0.95) -> dict:
    """One table row: accuracy with its exact (Clopper-Pearson) interval and the two-sided test against 0.5."""
    from scipy.stats import binomtest

    t = binomtest(int(correct), int(n), 0.5)
    ci = t.proportion_ci(confidence_level=confidence, method="exact")
    return {"group": group, "level": level, "n": int(n), "correct": int(correct), "accuracy": correct / n,
            "ci_low": float(ci.low), "ci_high": float(ci.high), "p_vs_chance": float(t.pvalue)}


def score_answers(answers, key_path) -> tuple[list[dict], dict]:
    """Score answer files against a key.

    Args:
        answers: one or more CSV files exported by the page (one per reader, or several readers in one file);
            a reader may not answer a tile twice (also across files).
        key_path: the study's key.json.
    Returns (rows, info): rows as `accuracy_row` for overall, per truth, per class (tiles with a class) and per
    reader; info {"study", "tiles", "answers", "readers", "unanswered": {reader: tiles not answered}}.
    """
    key = read_key(key_path)
    paths = [answers] if isinstance(answers, (str, Path)) else list(answers)
    if not paths:
        raise ReaderStudyError("no answers file given")
    rows, seen = [], {}
    for p in paths:
        for r in read_answers(p, key, key_path):
            k = (r["reader"], r["tile"])
            if k in seen:
                raise ReaderStudyError(f"{p}: reader {r['reader']!r} answered tile {r['tile']} also in {seen[k]}")
            seen[k] = p
            rows.append(r)
    tiles = key["tiles"]
    for r in rows:
        t = tiles[r["tile"]]
        r["truth"], r["class"], r["correct"] = t["truth"], t.get("class"), r["answer"] == t["truth"]

    def group(name, keyfn):
        levels = sorted({keyfn(r) for r in rows if keyfn(r) is not None})
        return [accuracy_row(name, lev, sum(r["correct"] for r in rows if keyfn(r) == lev),
                             sum(1 for r in rows if keyfn(r) == lev)) for lev in levels]

    table = [accuracy_row("overall", "all", sum(r["correct"] for r in rows), len(rows))]
    table += group("truth", lambda r: r["truth"])
    table += group("class", lambda r: r["class"])
    table += group("reader", lambda r: r["reader"])
    readers = sorted({r["reader"] for r in rows})
    info = {"study": key["study"], "tiles": len(tiles), "answers": len(rows), "readers": readers,
            "unanswered": {rd: len(tiles) - sum(1 for r in rows if r["reader"] == rd) for rd in readers}}
    return table, info


def format_table(rows: list[dict]) -> str:
    """The score table as aligned text."""
    head = f"{'group':<8} {'level':<16} {'n':>5} {'correct':>7} {'accuracy':>8}  {'95% CI (exact)':<15} {'p vs 0.5':>8}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['group']:<8} {str(r['level'])[:16]:<16} {r['n']:>5} {r['correct']:>7} {r['accuracy']:>8.3f}"
                     f"  {r['ci_low']:.3f}-{r['ci_high']:.3f}     {r['p_vs_chance']:>8.3g}")
    return "\n".join(lines)


def write_scores(path, rows: list[dict]) -> Path:
    """The score table as CSV (atomic)."""
    from difflung.core.provenance import write_text_atomic

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return write_text_atomic(path, buf.getvalue())
