"""Real chest CT obtainable offline: the lung test cases inside the pyradiomics 3.0.1 source archive.

`python -m difflung fetch-data [--cache DIR] [--archive SDIST]` downloads the sdist from PyPI with pip (the only
network the project may use), checks its sha256, and extracts four NRRD volumes and the licence into a local
cache outside git (`data/` is git-ignored). The wheel does not carry the data; only the sdist does.

What the cache holds (measured; sha256 below):
    lung1_image.nrrd  512x512x48 int16 HU, 0.5703 x 0.5703 mm, 5 mm slices (24 cm of chest)
    lung1_label.nrrd  one label value (1): a 1.4 ml nodule (837 voxels)
    lung2_image.nrrd  512x512x61 int16 HU, 0.6270 x 0.6270 mm, 5 mm slices (30.5 cm of chest)
    lung2_label.nrrd  one label value (1): a 48 ml tumour (24644 voxels); a hazy opacity in the left lung is unlabelled
Licence: pyradiomics is BSD-3-Clause, Copyright 2017 Harvard Medical School (LICENSE.txt, extracted beside the
data). The archive does not document where the two lung scans come from: `data/README.md` only describes the
feature baselines computed on them, so the book credits them as "pyradiomics 3.0.1 test cases lung1/lung2".
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from difflung.core.provenance import REPO_ROOT, provenance, sha256_file, write_json_atomic

VERSION = "3.0.1"
SDIST = f"pyradiomics-{VERSION}.tar.gz"
SDIST_SHA256 = "47c57f441d6cb7973fa3b2ea48d3948df78e3348e1c69e1e2ff19001601fc2f5"
# member of the archive -> (name in the cache, sha256 of the extracted bytes)
MEMBERS = {
    f"pyradiomics-{VERSION}/data/lung1_image.nrrd": ("lung1_image.nrrd", "379fa48bf34cfa961e6f5ec19c0c38757a30b9aa884212ef28dc29b5061c64ed"),
    f"pyradiomics-{VERSION}/data/lung1_label.nrrd": ("lung1_label.nrrd", "e9d9a88054d7bc1d3034193ff907ce6b8c6ba28a7bc3a16f23728982d1b6b50a"),
    f"pyradiomics-{VERSION}/data/lung2_image.nrrd": ("lung2_image.nrrd", "aa2b94eec79127ed786798ac8dc3c013010e1692d5787bebfae1a1e9685a4651"),
    f"pyradiomics-{VERSION}/data/lung2_label.nrrd": ("lung2_label.nrrd", "cef52738dc51aab69a48fe30639da956d2b911b1c2920439c091fab84727657a"),
    f"pyradiomics-{VERSION}/LICENSE.txt": ("LICENSE.txt", "5c1fc504fb0865a72a29e035b25ef3513e6d7e9c7169cb445eae855f03b006e2"),
}
CREDIT = (f"Real chest CT: test cases lung1 and lung2 of pyradiomics {VERSION} (source archive on PyPI, "
          "BSD-3-Clause, Copyright 2017 Harvard Medical School); the archive does not state the scans' origin.")


class RealDataError(RuntimeError):
    """The real CT could not be obtained or verified; the message says which file and why."""


def default_cache_dir() -> Path:
    """`$DIFFLUNG_DATA/pyradiomics` if set, else `<repo>/data/pyradiomics` (git-ignored)."""
    root = os.environ.get("DIFFLUNG_DATA")
    return (Path(root) if root else REPO_ROOT / "data") / "pyradiomics"


def cached_paths(cache_dir=None) -> dict[str, Path]:
    """Paths of the cached files keyed lung1_image, lung1_label, lung2_image, lung2_label, license (may not exist)."""
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return {_key(name): cache_dir / name for name, _ in MEMBERS.values()}


def _key(name: str) -> str:
    return "license" if name == "LICENSE.txt" else name.removesuffix(".nrrd")


def _cache_ok(paths: dict[str, Path]) -> bool:
    want = {_key(n): h for n, h in MEMBERS.values()}
    return all(p.is_file() and sha256_file(p) == want[k] for k, p in paths.items())


def _download(dest: Path, python: str) -> Path:
    # --no-build-isolation: pip still runs setup.py egg_info, which imports numpy (must be installed already)
    cmd = [python, "-m", "pip", "download", "--no-deps", "--no-build-isolation", "--no-binary", ":all:",
           f"pyradiomics=={VERSION}", "-d", str(dest), "--disable-pip-version-check", "-q"]
    r = subprocess.run(cmd, capture_output=True, text=True)
    sdist = dest / SDIST
    if r.returncode != 0 or not sdist.is_file():
        last = (r.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise RealDataError(f"{SDIST}: pip could not download it from PyPI (exit {r.returncode}: {last}). "
                            f"Offline? Download {SDIST} elsewhere and pass --archive PATH.")
    return sdist


def fetch_pyradiomics(cache_dir=None, *, archive=None, force: bool = False, python: str = sys.executable,
                      log=print) -> dict[str, Path]:
    """Fetch, verify and extract the pyradiomics lung CT into `cache_dir`; return the cached paths.

    Args:
        cache_dir: target folder (default `default_cache_dir()`).
        archive: an already downloaded `pyradiomics-3.0.1.tar.gz` to use instead of PyPI.
        force: re-extract even if the cache verifies.
        python: interpreter whose pip downloads the sdist (needs numpy and setuptools installed).
        log: callable receiving one line per action (print by default).
    Idempotent: when every cached file matches its recorded sha256 nothing is downloaded.
    """
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    paths = cached_paths(cache_dir)
    if not force and _cache_ok(paths):
        log(f"{cache_dir}: already present, all {len(paths)} files verified by sha256; nothing to do")
        return paths
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".fetch.", dir=cache_dir) as tmp:
        if archive is None:
            log(f"downloading {SDIST} from PyPI with pip ...")
            archive = _download(Path(tmp), python)
        archive = Path(archive)
        if not archive.is_file():
            raise RealDataError(f"{archive}: no such archive")
        digest = sha256_file(archive)
        if digest != SDIST_SHA256:
            raise RealDataError(f"{archive}: sha256 {digest} differs from the expected {SDIST_SHA256}; "
                                "the archive is corrupt or not pyradiomics 3.0.1")
        log(f"{archive.name}: sha256 verified ({archive.stat().st_size / 1e6:.1f} MB)")
        staged = {}
        try:
            with tarfile.open(archive, "r:gz") as tar:
                for member, (name, want) in MEMBERS.items():
                    f = tar.extractfile(member)  # read one named member: nothing else leaves the archive
                    if f is None:
                        raise RealDataError(f"{archive}: member {member} is missing or not a file")
                    data = f.read()
                    if hashlib.sha256(data).hexdigest() != want:
                        raise RealDataError(f"{archive}: {member} does not match its recorded sha256")
                    staged[name] = Path(tmp) / name
                    staged[name].write_bytes(data)
        except (tarfile.TarError, KeyError, EOFError, OSError) as e:
            raise RealDataError(f"{archive}: cannot extract ({e})") from e
        for name, path in staged.items():
            os.replace(path, cache_dir / name)  # same filesystem: atomic per file
            log(f"extracted {cache_dir / name}")
    write_json_atomic(cache_dir / "SOURCE.json", {
        "archive": SDIST, "archive_sha256": SDIST_SHA256, "credit": CREDIT,
        "files": {n: h for n, h in MEMBERS.values()}, "provenance": provenance(config={"version": VERSION})})
    return paths
