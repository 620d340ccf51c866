"""Progress bars: tqdm on long loops, silenced when TQDM_DISABLE is set (the pipeline sets it, since bars are
for terminals, not for the rendered book) even where a caller passed progress=True."""
import os


def show_progress(progress: bool = True) -> bool:
    return bool(progress) and os.environ.get("TQDM_DISABLE", "").lower() in ("", "0", "false")
