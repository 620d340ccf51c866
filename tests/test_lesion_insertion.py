"""Chapter 7 on a toy chest and a tiny untrained patch model: the checks computed from the written files
(outside differences, seam score, lesion HU W1), several classes placed in one mask, the chapter's tables,
figure, metrics and scope. The real pyradiomics run is the notebook's."""
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi
from scipy.stats import wasserstein_distance

from _ct_fixtures import toy_chest
from difflung import labels as L
from difflung.insertion import checks as C
from difflung.chapters import lesion_insertion as ch
from difflung.data.ctio import read_label, read_volume, write_volume
from difflung.diffusion.patch_model import save_untrained_model
from difflung.insertion import InsertConfig, insert_lesions, pathology_volumes, synthesize_mask_file

SPACING = (5.0, 4.0, 4.0)
MODEL_MM = 3.0
CFG = InsertConfig(steps=4, jump_length=2, jump_n_sample=1, batch_size=8, spacing_mm=MODEL_MM)
CLASSES = [L.BACKGROUND, L.BODY, L.LUNG, L.AIRWAY, L.EMPHYSEMA, L.GGO, L.FIBROSIS]


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """A toy chest CT with GGO and fibrosis placed in one mask and inserted by a tiny untrained model."""
    root = tmp_path_factory.mktemp("ch7")
    hu, _, _ = toy_chest(shape=(8, 80, 80), spacing=SPACING, lesion=False)
    hu = hu + np.random.default_rng(0).normal(0, 25, hu.shape)
    ct = write_volume(root / "ct.nii.gz", hu.astype(np.int16), SPACING)
    model = save_untrained_model(root / "model", CLASSES, 16, spacing_mm=MODEL_MM)
    placed = synthesize_mask_file(ct, root / "mask.nii.gz", ["ggo", "fibrosis"], 8.0, seed=0)
    s = insert_lesions(ct, root / "out.nii.gz", model, lesion_mask=root / "mask.nii.gz", config=CFG, device="cpu")
    return root, ct, placed, {**s, "seconds_placement": 1.0}


def test_several_classes_are_placed_in_one_mask_with_the_cts_geometry(case):
    root, ct, placed, _ = case
    mask = read_label(root / "mask.nii.gz", read_volume(ct))  # the CT's geometry, else read_label refuses
    voxel_ml = float(np.prod(SPACING)) / 1000
    for name, c in (("ggo", L.GGO), ("fibrosis", L.FIBROSIS)):
        assert 7.2 <= placed[name] <= 8.0 and placed[name] == pytest.approx((mask == c).sum() * voxel_ml)
    again = synthesize_mask_file(ct, root / "mask2.nii.gz", ["ggo", "fibrosis"], 8.0, seed=0)
    assert again == placed and np.array_equal(read_label(root / "mask2.nii.gz", read_volume(ct)), mask)


def test_checks_from_the_written_files(case):
    _, ct, _, s = case
    ins = C.read_insertion(ct, s)
    assert C.outside_differences(ins) == 0 and ins.region[ins.lesions > 0].all()
    tampered = C.Insertion(**{**ins.__dict__, "after": ins.after.copy()})
    z, y, x = np.argwhere(~ins.region)[0]
    tampered.after[z, y, x] += 1.0
    assert C.outside_differences(tampered) == 1
    seams = C.seam_scores(ins, L.GGO)
    assert seams["seam_after"] > 0 and seams["seam_before"] > 0
    unchanged = C.Insertion(**{**ins.__dict__, "after": ins.before})
    same = C.seam_scores(unchanged, L.GGO)
    assert same["seam_after"] == same["seam_before"]  # the score reads the image it is given
    ref = np.linspace(-700, -500, 50, dtype=np.float32)
    rows = {r["class"]: r for r in C.lesion_hu_w1(ins, {L.GGO: ref, L.FIBROSIS: ref})}
    m = ins.lesions == L.GGO
    assert rows["ggo"]["w1_after"] == pytest.approx(wasserstein_distance(ins.after[m], ref))
    assert rows["ggo"]["w1_before"] == pytest.approx(wasserstein_distance(ins.before[m], ref))
    assert rows["ggo"]["voxels"] == int(m.sum())


def test_chapter_tables_metrics_figure_and_scope(case, tmp_path):
    _, ct, _, s = case
    ins = C.read_insertion(ct, s)
    phantom = pathology_volumes([L.GGO, L.FIBROSIS], 1, np.random.default_rng(0), slices_per_patient=4,
                                fraction=0.15, out_mm=4.0)
    assert [v.patient for v in phantom] == ["ggo0", "fibrosis0"]
    assert all((v.labels == c).any() for v, c in zip(phantom, (L.GGO, L.FIBROSIS)))
    checks = C.check_table(ins, phantom, seed=0)
    assert list(checks.index) == ["ggo", "fibrosis"] and (checks["outside_differences"] == 0).all()
    assert "outside differences" in ch.table_checks(checks).to_html()
    cost = C.cost_table(s, 2.0)
    assert cost.loc["lesions inserted", "value"] == s["lesions"]
    C.write_outputs(tmp_path, checks, cost, s, model=ch.MODEL, seed=0)
    first = (tmp_path / "metrics.csv").read_bytes()
    C.write_outputs(tmp_path, C.check_table(ins, phantom, seed=0), C.cost_table(s, 99.0), s, model=ch.MODEL, seed=0)
    assert (tmp_path / "metrics.csv").read_bytes() == first  # timings live in cost.json only
    assert b"seconds" not in first and "train_seconds" in (tmp_path / "cost.json").read_text()
    fig = ch.figure_insertions(ins, tmp_path, seed=0)
    assert len(fig.axes) >= 8 and (tmp_path / "figures" / "insertions.png").is_file()
    assert C.judge_table(tmp_path, ins, steps=0, seed=0) is None
    box = ch.scope("smoke", checks, per_class=1, patch_size=16, steps=4, judged=None).html()
    assert "What this run can and cannot show" in box and "bit-identical" in box and "Not measured" in box


def test_the_patch_judge_reads_windows_around_each_inserted_lesion(case, tmp_path):
    from difflung.insertion import build_patch_dataset

    _, ct, _, s = case
    ins = C.read_insertion(ct, s)
    rng = np.random.default_rng(0)
    phantom = pathology_volumes([L.GGO, L.FIBROSIS], 2, rng, slices_per_patient=4, fraction=0.15, out_mm=MODEL_MM)
    build_patch_dataset(tmp_path / "patches", phantom, size=16, rng=rng, per_slice=2, out_mm=MODEL_MM)
    after, before, labs = C.lesion_windows(ins, 16, MODEL_MM)
    assert after.shape == before.shape == labs.shape and after.shape[1:] == (16, 16)
    assert all(labs[i].any() for i in range(len(labs)))  # every window holds lesion pixels
    assert not np.array_equal(after, before)
    judged = C.judge_table(tmp_path, ins, steps=2, seed=0, device="cpu")
    assert list(judged.index) == ["ggo", "fibrosis"]
    assert judged["judge_windows"].sum() >= 2 and judged["judge_dice_after"].between(0, 1).all()
    assert "above its floor" in ch.table_judge(judged).to_html()
    box = ch.scope("standard", C.check_table(ins, phantom, seed=0), per_class=2, patch_size=16, steps=4,
                   judged=judged).html()
    assert "patch judge" in box


def test_z_continuity_table_coronal_figure_and_metrics_rows(case, tmp_path):
    from difflung.data.dataset import Volume

    _, ct, _, s = case
    ins = C.read_insertion(ct, s)
    lab = np.where(ins.lesions > 0, ins.lesions, np.where(ins.lung, L.LUNG, L.BODY)).astype(np.uint8)
    own = [Volume("same", ins.after, lab, ins.spacing)]  # the inserted lesions as "phantom": target met
    rng = np.random.default_rng(0)
    shuffled = [Volume("noise", rng.normal(-700, 50, ins.after.shape).astype(np.float32), lab, ins.spacing)]
    real = [Volume("real", ins.before, lab, ins.spacing)]
    zc = ch.z_continuity(ins, own, real)
    assert list(zc.index) == ["ggo", "fibrosis"]
    for name, c in (("ggo", L.GGO), ("fibrosis", L.FIBROSIS)):
        m = ins.lesions == c
        assert zc.loc[name, "zcont_inserted"] == pytest.approx(C.z_continuity(ins.after, m, ins.spacing))
        assert zc.loc[name, "zcont_inserted"] == zc.loc[name, "zcont_phantom"]
        comp, n = ndi.label(m, structure=np.ones((3, 3, 3), bool))
        spans = [sl[0].stop - sl[0].start for sl in ndi.find_objects(comp)]
        assert zc.loc[name, "slices_per_lesion"] == np.median(spans) and max(spans) > 1  # 3D lesions
    assert (zc["relative_difference"] == 0).all() and (zc["target"] == "met").all()
    assert zc["zcont_real_lung"].iloc[0] == pytest.approx(C.z_continuity(ins.before, lab == L.LUNG, ins.spacing))
    assert zc["zcont_scan_lung"].iloc[0] == pytest.approx(
        C.z_continuity(ins.before, ins.lung & (ins.lesions == 0), ins.spacing))
    other = ch.z_continuity(ins, shuffled, real)  # independent noise: correlation near 0, far from inserted
    assert (other["target"] == "missed").all() and (other["relative_difference"] > ch.ZCONT_TARGET).all()
    few = ch.z_continuity(ins, [Volume("none", ins.after, np.full_like(lab, L.BODY), ins.spacing)], real)
    assert few["zcont_phantom"].isna().all() and (few["target"] == "not measurable").all()
    html = ch.table_z_continuity(zc).to_html()
    assert "within 20% of phantom" in html and ">met<" in html and "0 %" in html
    f = ch.z_continuity_facts(other, ins, own)
    assert f == {"n_zcont_met": 0, "n_zcont_classes": 2, "n_zcont_met_scan_dz": 0, "scan_dz_mm": 5.0,
                 "phantom_dz_mm": 5.0}
    truthed = pd.DataFrame({"zcont_truth": [zc.loc["ggo", "zcont_inserted"] * 1.1, 0.0]}, index=["ggo", "fibrosis"])
    both = ch.z_continuity(ins, shuffled, real, truthed)  # the truth renders at the scan's spacing as reference
    assert both["target_scan_dz"].tolist() == ["met", "not measurable"] and (both["target"] == "missed").all()
    assert both.loc["ggo", "zcont_phantom_scan_dz"] == truthed.loc["ggo", "zcont_truth"]
    assert ch.z_continuity_facts(both, ins, own)["n_zcont_met_scan_dz"] == 1
    assert "target against it" in ch.table_z_continuity(both).to_html()

    fig = ch.figure_coronal(ins, tmp_path, seed=0)
    assert (tmp_path / "figures" / "insertions_coronal.png").is_file()
    ct_axes = [ax for ax in fig.axes if ax.images]
    assert len(ct_axes) == 6 and all(ax.get_aspect() == pytest.approx(5.0 / 4.0) for ax in ct_axes)
    y = C.coronal_row(ins.lesions, L.GGO)
    assert ct_axes[0].get_title() == f"ggo: before (coronal row {y})"
    assert ct_axes[0].images[0].get_array().shape[0] == ins.before.shape[0]  # every slice in z
    assert any("lung window" in ax.get_ylabel() for ax in fig.axes)  # the HU bar

    checks = C.check_table(ins, own, seed=0)
    cost = C.cost_table(s, 2.0)
    rows = ch.write_outputs(tmp_path, checks, cost, s, seed=0, judged=None, zcont=zc)
    z = rows[rows["metric"] == "zcont_inserted"].set_index("class")["value"]
    assert z.to_dict() == pytest.approx(zc["zcont_inserted"].to_dict())
    assert set(ch.ZCONT_METRICS) <= set(rows["metric"]) and "target" not in set(rows["metric"])
    first = (tmp_path / "metrics.csv").read_bytes()
    ch.write_outputs(tmp_path, checks, cost, s, seed=0, judged=None, zcont=ch.z_continuity(ins, own, real))
    assert (tmp_path / "metrics.csv").read_bytes() == first
    plain = ch.write_outputs(tmp_path / "plain", checks, cost, s, seed=0, judged=None)
    assert len(rows) == len(plain) + len(ch.ZCONT_METRICS) * len(zc)  # the old rows, unchanged, plus the new
    keys = ["metric", "class"]
    assert plain.set_index(keys)["value"].equals(rows.set_index(keys)["value"].loc[plain.set_index(keys).index])


def test_insertion_against_phantom_ground_truth_on_a_held_out_patient(tmp_path):
    from difflung.insertion.truth import LAA_HU

    px = 350.0 / 40
    model = save_untrained_model(tmp_path / "model", CLASSES, 16, spacing_mm=px)
    case = ch.truth_case(L.GGO, dz_mm=10.0, fraction=0.15, seed=0, slices=3, pixel_mm=px)
    assert case.truth.patient.startswith("truth-ggo") and case.base.hu.shape == (3, 40, 40)
    assert case.base.spacing == (10.0, px, px) and (case.lesions == L.GGO).sum() >= 50
    m = case.lesions == L.GGO
    tt = ch.truth(model, classes=["ggo"], dz_mm=10.0, fraction=0.15, insert_steps=2, jump_length=1, jump_n_sample=1,
                  margin_mm=2.0, seed=0, slices=3, pixel_mm=px, device="cpu")
    assert list(tt.index) == [("ggo", 0)]
    r = tt.loc[("ggo", 0)]
    assert r["voxels"] == m.sum()
    assert r["w1_base_to_truth"] == pytest.approx(wasserstein_distance(case.base.hu[m], case.truth.hu[m]))
    assert r["laa950_truth"] == pytest.approx(100.0 * (case.truth.hu[m] < LAA_HU).mean())
    lo, hi = sorted((r["seam_null"], r["seam_truth"]))
    assert r["seam_in_band"] == (lo <= r["seam_inserted"] <= hi)
    html = ch.table_truth(tt).to_html()
    assert "seam within null .. truth" in html and "HU W1 to truth" in html
    f = ch.truth_facts(tt)
    assert f["truth_n_classes"] == 1 and f["truth_w1_worst"] == r["w1_to_truth"] and np.isnan(f["truth_laa_gap"])
    assert f["truth_w1_met"] == ("ggo" if r["w1_to_truth"] <= 30 else "none")
    assert f["truth_seam_in_band"] == ("ggo" if r["seam_in_band"] else "none")
    checks = pd.DataFrame({"w1_after": [1.0]}, index=pd.Index(["ggo"], name="class"))
    s = {"lesion_ml": {"ggo": 1.0}, "seconds_by_stage": {"painting": 1.0}, "seconds_placement": 0.0, "seconds": 1.0,
         "lesions": 1, "windows": 1, "network_calls_per_window": 2, "device": "cpu", "config": {}}
    rows = ch.write_outputs(tmp_path, checks, C.cost_table(s, 0.0), s, seed=0, judged=None, truthed=tt)
    got = rows.set_index("metric")["value"]
    assert got["truth_w1_to_truth"] == r["w1_to_truth"] and got["truth_seam_in_band"] == float(r["seam_in_band"])
    # two held-out patients: the first is the one above, the second another patient with its own seed
    two = ch.truth(model, classes=["ggo"], dz_mm=10.0, fraction=0.15, insert_steps=2, jump_length=1,
                   jump_n_sample=1, margin_mm=2.0, seed=0, patients=2, slices=3, pixel_mm=px, device="cpu")
    assert list(two.index) == [("ggo", 0), ("ggo", 1)] and two.loc[("ggo", 0)].equals(r)
    other = ch.truth_case(L.GGO, dz_mm=10.0, fraction=0.15, seed=1, slices=3, pixel_mm=px)
    assert two.loc[("ggo", 1), "voxels"] == (other.lesions == L.GGO).sum()
    mean = ch.truth_summary(two).loc["ggo"]
    assert mean["w1_to_truth"] == pytest.approx(two["w1_to_truth"].mean()) and mean["patients"] == 2
    cells = ch.table_truth(two).data
    assert cells.loc["seam within null .. truth", "ggo"].endswith("of 2 patients")
    assert " to " in cells.loc["HU W1 to truth", "ggo"] and ch.truth_facts(two)["truth_patients"] == 2
    with pytest.raises(ValueError, match="patients=0"):
        ch.truth(model, classes=["ggo"], dz_mm=10.0, insert_steps=2, jump_length=1, jump_n_sample=1, margin_mm=2.0,
                 seed=0, patients=0, pixel_mm=px, device="cpu")


def test_scope_box_follows_z_continuity_and_truth():
    import pandas as pd

    checks = pd.DataFrame({"outside_differences": [0]})
    zc = pd.DataFrame({"target": ["met", "missed"]}, index=pd.Index(["fibrosis", "ggo"], name="class"))
    tt = pd.DataFrame({"w1_to_truth": [12.0, 80.0], "laa950_inserted": [float("nan"), 10.0],
                       "laa950_truth": [float("nan"), 40.0], "seam_in_band": [True, False]},
                      index=pd.Index(["fibrosis", "emphysema"], name="class"))
    box = ch.scope("laptop", checks, per_class=2, patch_size=64, steps=10, judged=None, zcont=zc, truthed=tt)
    assert any("inserted fibrosis is as continuous" in c for c in box.can)
    assert any("for ggo: their z-continuity misses" in c for c in box.cannot)
    assert any("HU W1 at most 30 HU for fibrosis" in c for c in box.can)
    assert any("Inserted emphysema with the HU of the rendered truth" in c for c in box.cannot)
    assert any("30 points off" in c for c in box.cannot)


def test_the_chapter_writes_a_reader_study_of_its_held_out_insertions(tmp_path):
    from difflung.chapters import lesion_insertion as ch

    rng = np.random.default_rng(0)
    truth_hu = rng.normal(-850, 40, (6, 100, 100)).astype(np.float32)
    inserted = truth_hu + 5
    lesions = np.zeros(truth_hu.shape, bool)
    lesions[1:4, 40:60, 70:95] = True  # near the edge: the crop is shifted inside the volume
    for cls in ("ggo", "fibrosis"):
        assert ch.study_crops(tmp_path / "reader_study", cls, truth_hu, inserted, lesions) == 3
    crop = np.load(tmp_path / "reader_study" / "real" / "ggo" / "ggo_z001.npy")
    assert crop.shape == (ch.STUDY_CROP, ch.STUDY_CROP) and np.array_equal(crop, truth_hu[1, 18:82, 36:100])
    key = ch.reader_study(tmp_path, seed=0)
    assert (tmp_path / "reader_study.html").is_file() and (tmp_path / "reader_study_key.json").is_file()
    t = ch.table_reader_study(key)
    assert t.to_dict() == {"rendered (truth)": {"fibrosis": 3, "ggo": 3}, "inserted": {"fibrosis": 3, "ggo": 3}}
    page = (tmp_path / "reader_study.html").read_text()
    assert "ggo_z001" not in page and "/real/" not in page  # nothing but the pixels tells the sides apart


def test_per_scan_table_sums_each_class_and_counts_changes_outside_the_region(tmp_path):
    rng = np.random.default_rng(0)
    before = rng.normal(-850, 30, (6, 24, 24)).astype(np.float32)
    lesions = np.zeros(before.shape, np.uint8)
    lesions[1:4, 4:8, 4:8] = L.GGO
    lesions[1:3, 14:18, 14:18] = L.GGO  # a second GGO lesion
    lesions[2:5, 4:10, 14:20] = L.EMPHYSEMA
    region = lesions > 0
    after = np.where(region, before + 200, before).astype(np.float32)
    ins = C.Insertion("ggo+emphysema", before, after, lesions, region, np.ones_like(region), (5.0, 1.0, 1.0), {})
    summary = {"per_lesion": [{"class": "ggo", "requested_ml": 0.048, "achieved_ml": 0.03, "mean_hu": -650.0},
                              {"class": "ggo", "requested_ml": 0.032, "achieved_ml": 0.01, "mean_hu": -610.0},
                              {"class": "emphysema", "requested_ml": 0.108, "achieved_ml": None, "mean_hu": -700.0}]}
    shifted = C.Insertion(ins.cls, before, after.copy(), lesions, region, ins.lung, ins.spacing, {})
    shifted.after[0, 0, :3] += 1.0  # three voxels changed outside the region
    ps = ch.per_scan({"lung2": (summary, ins), "lung1": (summary, shifted)})
    assert list(ps.index) == [("lung2", "ggo"), ("lung2", "emphysema"), ("lung1", "ggo"), ("lung1", "emphysema")]
    g = ps.loc[("lung2", "ggo")]
    assert g["lesions"] == 2 and g["requested_ml"] == pytest.approx(0.08) and g["achieved_ml"] == pytest.approx(0.04)
    assert g["mean_hu"] == pytest.approx((0.048 * -650 + 0.032 * -610) / 0.08) and g["slices_per_lesion"] == 2.5
    assert np.isnan(ps.loc[("lung2", "emphysema"), "achieved_ml"])  # no HU range: not "0 ml"
    assert ps.loc[("lung2", "ggo"), "outside_differences"] == 0 and ps.loc[("lung1", "ggo"), "outside_differences"] == 3
    shown = ch.table_scans(ps).data
    assert ("lung1 (training scan)", "ggo") in shown.index and "requested (ml)" in shown.columns
    checks = pd.DataFrame({"w1_after": [1.0, 2.0]}, index=pd.Index(["ggo", "emphysema"], name="class"))
    s = {"lesion_ml": {"ggo": 1.0}, "seconds_by_stage": {"painting": 1.0}, "seconds_placement": 0.0, "seconds": 1.0,
         "lesions": 3, "windows": 1, "network_calls_per_window": 2, "device": "cpu", "config": {}}
    rows = ch.write_outputs(tmp_path, checks, C.cost_table(s, 0.0), s, seed=0, judged=None, scanned=ps)
    got = rows.set_index(["metric", "class"])["value"]
    assert got[("lung1_outside_differences", "ggo")] == 3 and got[("lung2_lesions", "ggo")] == 2
