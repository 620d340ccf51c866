"""Progress bars: tqdm on long loops, silenced when TQDM_DISABLE is set (the pipeline sets it, since bars are
for terminals, not for the rendered book) even where a caller passed progress=True."""
import os


def show_progress(progress: bool = True) -> bool:
    return bool(progress) and os.environ.get("TQDM_DISABLE", "").lower() in ("", "0", "false")


def quiet_notebook_tqdm() -> None:
    """Import `tqdm.auto` once with its "IProgress not found" TqdmWarning silenced, so that libraries importing it
    later (diffusers, MONAI) print nothing to a notebook's stderr: the book shows no progress bars anyway."""
    import warnings

    from tqdm import TqdmExperimentalWarning, TqdmWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TqdmWarning)
        warnings.simplefilter("ignore", TqdmExperimentalWarning)
        import tqdm.auto  # noqa: F401
