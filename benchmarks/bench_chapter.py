"""Wall time of one smoke chapter, run from scratch in a temporary runs folder, against its target.

    .venv/bin/python benchmarks/bench_chapter.py                       # chapter 1, target 60 s
    .venv/bin/python benchmarks/bench_chapter.py 03_cbmat_training 60  # any chapter (its upstream runs first)

Upstream chapters run first (untimed); the chapter itself is timed by the pipeline, papermill and kernel start
included. The reference printed beside it is the kernel start-up alone (an empty notebook), measured in this run.
"""
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent


def main(chapter: str = "01_data_preparation", target_s: float = 60.0) -> None:
    from difflung.run.pipeline import toc_chapters

    stems = toc_chapters(ROOT)
    upstream = stems[: stems.index(chapter)]
    with tempfile.TemporaryDirectory() as tmp:
        base = [sys.executable, "-m", "difflung", "run", "--profile", "smoke", "--runs-dir", tmp,
                "--notebooks-out", f"{tmp}/executed"]
        if upstream:
            subprocess.run(base + sum((["--only", s] for s in upstream), []), cwd=ROOT, check=True,
                           capture_output=True)
        subprocess.run(base + ["--only", chapter], cwd=ROOT, check=True, capture_output=True)
        wall = json.loads(Path(tmp, "smoke", "provenance.json").read_text())["notebooks"][chapter]["wall_s"]
        # reference: papermill on an empty notebook (kernel start and teardown)
        import papermill

        nb = nbformat.v4.new_notebook()
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, f"{tmp}/empty.ipynb")
        t0 = time.perf_counter()
        papermill.execute_notebook(f"{tmp}/empty.ipynb", f"{tmp}/empty.out.ipynb", progress_bar=False)
        ref = time.perf_counter() - t0
    print(f"chapter {chapter} (smoke, CPU): {wall:.1f} s; target {target_s:.0f} s -> {wall / target_s:.2f} x target")
    print(f"reference, an empty notebook through papermill in this run: {ref:.1f} s -> chapter = {wall / ref:.1f} x reference")


if __name__ == "__main__":
    main(*(sys.argv[1:2] or []), *(float(a) for a in sys.argv[2:3]))
