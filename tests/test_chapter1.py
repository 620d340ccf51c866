"""Chapter 1's instruments and tables: HU signature survival (saved and read back), the f_i CBMAT uses beside
the in-lung fractions, readable numbers, the HU colour bar and the scope box, on tiny hand-made inputs."""
import json

import numpy as np
import pandas as pd
import pytest

from difflung.data import phantom_dataset as cohort
from difflung.judging import instruments as I
from difflung import labels as L
from difflung.chapters import data_preparation as ch
from difflung.data.dataset import Volume, volumes_to_slices, write_dataset
from difflung.diffusion.ablation import ablation_frequencies
from difflung.plots import hu_colorbar, pct, plt, sig, table, window_name


def emphysema_slices(emph_hu):
    """(2, 8, 8) HU and labels: body, a lung block at -850 HU with a 2x2 emphysema patch at `emph_hu`."""
    lab = np.full((2, 8, 8), L.BODY, np.uint8)
    lab[:, 2:6, 2:6] = L.LUNG
    lab[:, 3:5, 3:5] = L.EMPHYSEMA
    hu = np.where(lab == L.BODY, 40.0, -850.0)
    hu[lab == L.EMPHYSEMA] = emph_hu
    return hu, lab


def test_signature_survival_flags_a_lost_signature_and_round_trips(tmp_path):
    full, blurred = emphysema_slices(-990.0), emphysema_slices(-900.0)  # after a resize: averaged with lung
    t = I.signature_survival(full, blurred, ["lung", "emphysema"], size=8)
    row = t.set_index("class").loc["emphysema"]
    assert row["full_ok"] and not row["size_ok"] and not row["measurable"]
    assert row["full_share_below_threshold"] == 1.0 and row["size_share_below_threshold"] == 0.0
    assert row["size_mean_hu"] == pytest.approx(-900.0) and row["reason"].startswith("at 8 px: HU signature lost")
    assert t.set_index("class").loc["lung", "measurable"]  # anatomy: no check
    path = I.write_signature(tmp_path, t, split="train")
    doc = json.loads(path.read_text())
    assert doc["size"] == 8 and doc["split"] == "train" and doc["classes"]["emphysema"]["measurable"] is False
    got = I.read_signature(tmp_path)
    assert got["emphysema"] == (False, row["reason"]) and got["lung"] == (True, "")


def test_read_signature_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="hu_signature.json: no HU signature check here"):
        I.read_signature(tmp_path)
    (tmp_path / "hu_signature.json").write_text('{"size": 8}')
    with pytest.raises(ValueError, match="hu_signature.json: not a HU signature file"):
        I.read_signature(tmp_path)


def tiny_dataset(tmp_path):
    """Three 16x16 patients (one per split), each with emphysema and fibrosis; no resize (size 16)."""
    vols = []
    for i in range(3):
        hu, lab = np.full((2, 16, 16), -1000.0), np.zeros((2, 16, 16), np.uint8)
        lab[:, 2:14, 2:14], hu[:, 2:14, 2:14] = L.BODY, 40.0
        lab[:, 4:12, 4:12], hu[:, 4:12, 4:12] = L.LUNG, -850.0
        lab[:, 5:7, 5:7], hu[:, 5:7, 5:7] = L.EMPHYSEMA, -990.0
        lab[:, 9:11, 9:9 + i + 1], hu[:, 9:11, 9:9 + i + 1] = L.FIBROSIS, -300.0
        vols.append(Volume(f"P{i}", hu.astype(np.float32), lab, (1.0, 1.0, 1.0)))
    slices, patients = volumes_to_slices(vols, 16)
    ds = write_dataset(tmp_path / "dataset", slices, source="test", params={}, seed=0, patients=patients,
                       split={"train": ["P0"], "val": ["P1"], "test": ["P2"]})
    return ds, vols


def test_chapter_signature_frequencies_and_scope(tmp_path):
    ds, vols = tiny_dataset(tmp_path)
    t = cohort.hu_signature(ds, vols, tmp_path)
    assert list(t["class"]) == ["lung", "emphysema", "fibrosis"]  # lung-field classes of the dataset
    assert (t["full_mean_hu"] == t["size_mean_hu"]).all() and t["measurable"].all()  # same size: same numbers
    assert I.read_signature(tmp_path)["emphysema"] == (True, "")
    shown = ch.table_signature(t, 16)
    assert shown.loc["emphysema", "16 px: % < -950 HU"] == "100 %"
    assert shown.loc["lung", "16 px: signature"] == "no check"

    freq = cohort.frequency_table(ds)
    cb = cohort.frequency_pivot(freq, "f_cbmat")
    np.testing.assert_allclose(cb.sum().to_numpy(), 1.0)  # shares of the non-background pixels
    f = ablation_frequencies(ds, "train")
    assert cb.loc["fibrosis", "train"] == pytest.approx(f["fibrosis"]) == pytest.approx(2 * 1 * 2 / (2 * 144))
    lung = cohort.frequency_pivot(freq, "f_in_lung")
    assert "body" not in lung.index and lung.loc["emphysema", "train"] == pytest.approx(4 / 64)

    lost = t.copy()
    lost.loc[lost["class"] == "emphysema", ["measurable", "reason"]] = [False, "at 16 px: lost"]
    box = ch.scope("smoke", ds, lost, real_ct=True).html()
    assert "emphysema at this size" in box and "at 16 px: lost" in box and "do not test the paper" in box
    assert "no such labels" in box and "fibrosis at 16 px" in box
    assert cohort.not_measurable(lost) == {"emphysema": "at 16 px: lost"}
    assert ch.signature_facts(lost) == {"sig_lost": "emphysema", "sig_verb": "loses"}
    assert ch.signature_facts(t) == {"sig_lost": "no class", "sig_verb": "lose"}
    assert ch.cohort_facts(ds, n_patients=3) == {"n_patients": 3, "n_slices_total": 6}


def test_real_ct_sections_show_and_write_nothing_when_the_profile_skips_them(tmp_path):
    ds, vols = tiny_dataset(tmp_path)
    run = tmp_path / "run"
    assert ch.open_real_ct(False) is None
    assert ch.real_ct_tables(None) == [] and ch.prepare_real(None, run, size=16, seed=0) == []
    assert ch.figure_real_vs_phantom(None, vols, run, seed=0) is None
    assert ch.figure_anatomy_overlays(None, run, seed=0) is None
    assert ch.lung_hu(None, vols, seed=0) is None and ch.table_lung_hu(None) is None
    assert ch.figure_real_vs_phantom_hu(None, run, seed=0) is None and not run.exists()
    checks = cohort.hu_checks(vols)
    sig = cohort.hu_signature(ds, vols, run)
    rows = ch.write_chapter_metrics(run, ds, checks, signature=sig, agreement=None, real=None, hu=None, seed=0)
    want = cohort.write_cohort_metrics(tmp_path / "direct", ds, checks, seed=0, signature=sig)
    pd.testing.assert_frame_equal(rows, want)  # the phantom's rows only, no real-CT rows
    assert (run / "metrics.csv").read_bytes() == (tmp_path / "direct" / "metrics.csv").read_bytes()


def test_real_ct_sections_on_toy_cases(tmp_path):
    """The real-CT wrappers on two toy chest CTs: the same numbers as `realct`'s own functions, a figure, and the
    rows `write_chapter_metrics` adds."""
    from _ct_fixtures import write_toy_case

    from difflung.data import realct as R
    from difflung.data.classmap import load_classmap
    from difflung.data.ct_anatomy import AnatomyConfig
    from difflung.data.prepare import Case, prepare_volume

    cases = []
    for name in ("r1", "r2"):
        img, lab, _ = write_toy_case(tmp_path / "in", name)
        cases.append(R.RealCase(*prepare_volume(Case(img, lab, name), load_classmap("nodule"), AnatomyConfig())))
    real = ch.RealCT(cases, R.lung_volume_table(cases))
    phantom = [c.volume for c in cases]
    hu = ch.lung_hu(real, phantom, seed=0)
    pd.testing.assert_frame_equal(hu.samples, R.hu_lung_samples(cases, phantom, seed=0))
    assert hu.stats.loc["real CT", "mean HU"] == pytest.approx(-860.0, abs=1.0)  # the toy lung is -860 HU
    assert ch.figure_real_vs_phantom_hu(hu, tmp_path / "run", seed=0) is not None
    assert (tmp_path / "run" / "real_vs_phantom_lung_hu.png").is_file()
    credit, shown = ch.real_ct_tables(real)
    assert "pyradiomics" in credit.data and "r1" in shown.to_html()
    ds, vols = tiny_dataset(tmp_path)
    checks, sig = cohort.hu_checks(vols), cohort.hu_signature(ds, vols, tmp_path / "run")
    rows = ch.write_chapter_metrics(tmp_path / "run", ds, checks, signature=sig, agreement=None, real=real, hu=hu,
                                    seed=0)
    lung = rows.query("model == 'real-ct' and metric == 'lung_volume_ml' and `class` == 'lung' and patient == 'r1'")
    assert lung["value"].item() == real.volumes.loc["r1", "lung field ml"]
    assert rows.query("model == 'real-ct' and metric == 'lung_hu_mean'")["value"].item() == pytest.approx(-860, abs=1)


def test_page_facts_come_from_the_library():
    f = ch.page_facts(size=32, phantom_size=128)
    assert f == {"size": 32, "phantom_size": 128, "lung_window": window_name(), "laa_hu": "-950"}
    assert float(f["laa_hu"]) == I.EMPHYSEMA_THRESHOLD_HU


def test_readable_numbers_and_tables():
    assert [sig(v) for v in (-816.6, 0.012345, 12345.6, 99.95, 0.0, 7, float("nan"), True)] == [
        "-817", "0.0123", "12,300", "100", "0", "7", "n/a", "yes"]
    assert pct(0.0777) == "7.77 %" and pct(1.0) == "100 %" and pct(None) == "n/a"
    html = table(pd.DataFrame({"share": [0.0777], "n": [3], "name": ["x"]}), percent=["share"]).to_html()
    assert "7.77 %" in html and ">3<" in html and ">x<" in html


def test_hu_colorbar_states_the_window():
    assert window_name() == "lung window W1500/L-600"
    fig, axes = plt.subplots(1, 2, layout="constrained")
    cb = hu_colorbar(fig, axes)
    assert cb.ax.get_ylabel() == "HU, lung window W1500/L-600" and cb.norm.vmin == L.LUNG_DISPLAY_WINDOW[0]
    plt.close(fig)
