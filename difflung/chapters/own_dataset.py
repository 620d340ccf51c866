"""Chapter 1 on your own data: the figures and tables of `notebooks/01_own_dataset.py`.

With the profile key `dataset` set (`python -m difflung run --set dataset=DIR`), the pipeline fills chapter 1's
page with this notebook instead of the phantom's: it adopts the prepared artifact (`difflung.data.own_dataset`)
as the run's dataset and shows what later chapters train and judge on: patients and slices per split, spacing,
class frequencies, and each class's HU signature at the run's size (the check that makes a class measurable).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from difflung import labels as L
from difflung.chapters.data_preparation import (figure_frequencies, figure_mask_synthesis, frequency_table,  # noqa: F401
                                                table_frequencies, table_labels, table_mask_synthesis)  # the page's
from difflung.chapters.scope import Scope, glue_facts, smoke_caveat  # noqa: F401  (glue_facts: for the page)
from difflung.core.metrics_csv import write_metrics
from difflung.data import own_dataset
from difflung.data.dataset import SPLITS, Dataset, unwindow
from difflung.judging import instruments as I
from difflung.plots import hu_colorbar, legend_handles, pct, plt, save_figure, show_ct, sig, table, window_name


def adopt(dataset: str, run_dir, *, size: int) -> Dataset:
    """Check the prepared artifact at `dataset` and copy it in as the run's dataset (`own_dataset.adopt`)."""
    return own_dataset.adopt(dataset, run_dir, size=size)


def dataset_facts(ds: Dataset, run_dir) -> dict:
    """Values the page quotes: the dataset's name and sha256, patients, slices, size, the display window."""
    src = own_dataset.describe(Path(run_dir).parent) or {}
    # as code: glued Markdown of a bare string that names an existing path would be read from that path
    return {"dataset_name": f"`{src.get('name', str(ds.root))}`", "dataset_sha": f"`{src.get('sha256', '')[:16]}`",
            "n_patients": sum(len(ds.manifest["splits"][s]["patients"]) for s in SPLITS),
            "n_slices_total": sum(ds.manifest["splits"][s]["n_slices"] for s in SPLITS), "size": ds.size,
            "lung_window": window_name(), "laa_hu": f"{I.EMPHYSEMA_THRESHOLD_HU:g}"}


def table_splits(ds: Dataset) -> pd.DataFrame:
    """Patients and slices per split, and the classes present in each."""
    rows = []
    for s in SPLITS:
        part = ds.split(s)
        present = [c for c in L.names(np.unique(part.labels).tolist()) if c != "background"]
        rows.append({"split": s, "patients": len(np.unique(part.patient)), "slices": len(part),
                     "classes present": ", ".join(present)})
    return pd.DataFrame(rows).set_index("split")


def table_patients(ds: Dataset):
    """Per patient: split, slices kept, source spacing, lung volume (`own_dataset.patient_table`)."""
    t = own_dataset.patient_table(ds)
    if t.empty:
        return pd.DataFrame({"note": ["the manifest records no per-patient rows"]}).set_index("note")
    return table(t.set_index("patient"))


def figure_levels(ds: Dataset, run_dir, *, seed: int):
    """Apex, middle and base slices of the first training patient at the run's size, without and with labels."""
    part = ds.split("train")
    pid = sorted(np.unique(part.patient).tolist())[0]
    idx = np.flatnonzero(part.patient == pid)
    idx = idx[np.argsort(part.z[idx])]
    picks = {"apex": int(idx[int(0.12 * (len(idx) - 1))]), "middle": int(idx[len(idx) // 2]),
             "base": int(idx[int(0.88 * (len(idx) - 1))])}
    fig, axes = plt.subplots(2, 3, figsize=(9, 6.6), layout="constrained")
    hu = unwindow(part.images)
    for j, (name, k) in enumerate(picks.items()):
        show_ct(axes[0, j], hu[k], title=f"patient {pid}, {name}")
        show_ct(axes[1, j], hu[k], part.labels[k], alpha=0.45)
    hu_colorbar(fig, axes, shrink=0.8)
    present = sorted(set(np.unique(part.labels[list(picks.values())]).tolist()) - {L.BACKGROUND, L.BODY})
    if present:
        fig.legend(handles=legend_handles(present), loc="outside lower center", ncol=len(present), frameon=False)
    fig.suptitle(f"The run's dataset at {ds.size} px, {window_name()}: top CT, bottom label overlay")
    save_figure(fig, Path(run_dir) / "dataset_levels.png", config={"patient": str(pid)}, seed=seed)
    return fig


def hu_signature(ds: Dataset, run_dir) -> pd.DataFrame:
    """Which lung-field classes hold their HU signature at the run's size, on the training slices (there is no
    higher resolution to compare with: the artifact is at the run's size). Writes `hu_signature.json`, which later
    chapters read exactly as they read the phantom's."""
    part = ds.split("train")
    at_size = (unwindow(part.images), part.labels)
    classes = [c for c in ds.classes if L.BY_ID[c].in_lung]
    sigtab = I.signature_survival(at_size, at_size, classes, ds.size)
    I.write_signature(run_dir, sigtab, split="train", full_size=ds.size, source=ds.manifest.get("source", ""))
    return sigtab


def table_signature(signature: pd.DataFrame) -> pd.DataFrame:
    """The signature check at the run's size: mean HU, share below the LAA threshold, kept or lost, per class."""
    thr = f"% < {I.EMPHYSEMA_THRESHOLD_HU:g} HU"
    out = pd.DataFrame({"class": signature["class"], "check": signature["check"],
                        "mean HU": signature["size_mean_hu"].map(sig),
                        thr: signature["size_share_below_threshold"].map(pct)})
    out["signature"] = [("kept" if ok else "lost") if chk != "none (anatomy)" else "no check"
                        for ok, chk in zip(signature["size_ok"], signature["check"])]
    return out.set_index("class")


def mask_synthesis(ds: Dataset, run_dir, *, boost: dict, seed: int, n_masks: int):
    """Chapter 1's mask synthesis on the dataset's training masks, boosting only the classes it holds."""
    held = {c: v for c, v in boost.items() if L.BY_NAME[c].id in ds.classes}
    return figure_mask_synthesis(ds.split("train").labels, run_dir, boost=held, seed=seed, n_masks=n_masks)


def absent_classes(ds: Dataset) -> list[str]:
    """The project's pathology classes of the paper (emphysema, fibrosis, GGO) this dataset does not hold: their
    claims read "not measurable: absent from this dataset"."""
    return [n for n in ("emphysema", "fibrosis", "ggo") if L.BY_NAME[n].id not in ds.classes]


def write_chapter_metrics(run_dir, ds: Dataset, signature: pd.DataFrame, *, seed: int) -> pd.DataFrame:
    """`<run_dir>/metrics.csv`: slices and patients per split, CBMAT's f_i, and each class's HU signature."""
    rows = []
    for s in SPLITS:
        info = ds.manifest["splits"][s]
        rows += [{"model": "dataset", "metric": "slices", "class": "all", "split": s, "value": info["n_slices"]},
                 {"model": "dataset", "metric": "patients", "class": "all", "split": s,
                  "value": len(info["patients"])}]
    for r in frequency_table(ds).itertuples():
        rows.append({"model": "dataset", "metric": "f_cbmat", "class": r[2], "split": r[1], "value": r[3]})
    for r in signature.itertuples():
        rows += [{"model": "dataset", "metric": "signature_mean_hu", "class": r[1], "split": "train",
                  "value": r.size_mean_hu},
                 {"model": "dataset", "metric": "signature_kept", "class": r[1], "split": "train",
                  "value": float(r.size_ok)}]
    for r in rows:
        r["seed"] = seed
    write_metrics(run_dir, rows)
    return pd.DataFrame(rows)


def scope(profile: str, ds: Dataset, signature: pd.DataFrame) -> Scope:
    """The chapter's "What this run can and cannot show" box, from its own numbers."""
    lost = {r["class"]: r["reason"] for r in signature.to_dict("records") if not r["measurable"]}
    kept = [c for c in signature["class"] if c not in lost and I.signature_check(c) != "none (anatomy)"]
    n_test = len(ds.manifest["splits"]["test"]["patients"])
    s = Scope(profile, facts={"image size": f"{ds.size} px", "test patients": str(n_test),
                              "patients": str(sum(len(ds.manifest["splits"][x]["patients"]) for x in SPLITS))})
    s.can.append("Every later chapter's comparisons on this dataset's own patients, split as `prepare` split them.")
    if kept:
        s.can.append(f"Texture (HU) of {', '.join(kept)} at {ds.size} px: the signature holds at this size.")
    s.cannot += [f"Texture (HU) of {c}, so later chapters report it as not measurable: {why}." for c, why in lost.items()]
    s.cannot += [f"Anything about {c}: absent from this dataset." for c in absent_classes(ds)]
    s.cannot.append("Whether the labels are right: the book takes the dataset's labels as its truth.")
    s.cannot += smoke_caveat(profile)
    return s
