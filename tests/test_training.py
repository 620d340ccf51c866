"""The training shell: RNG scope, batch order, run key, loss log, checkpoints, save and load convention."""
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from difflung.core.training import (BatchOrder, FolderSpec, LossLog, ModelLoadError, RunFolder, open_folder,
                               read_log_rows, result_fields, rng_scope, run_key, save_model_folder, seed_streams,
                               state_dict_writer)

SPEC = FolderSpec("difflung-test/1", "meta.json", "model.safetensors", "a test model")


def test_rng_scope_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    with rng_scope(5):
        a = torch.rand(3)
    with rng_scope(torch.Generator().manual_seed(1)):  # draws its seed from the generator
        b = torch.rand(3)
    assert torch.equal(torch.get_rng_state(), before)
    with rng_scope(5):
        assert torch.equal(torch.rand(3), a)
    assert not torch.equal(a, b)


def test_seed_streams_are_independent_and_prefix_stable():
    s = seed_streams(3, ("a", "b"))
    t = seed_streams(3, ("a", "b", "c", "d"))
    assert s["a"].initial_seed() == t["a"].initial_seed() and s["b"].initial_seed() == t["b"].initial_seed()
    assert len({g.initial_seed() for g in t.values()}) == 4


def test_batch_order_covers_every_slice_per_pass_and_resumes():
    order = BatchOrder(7, torch.Generator().manual_seed(0))
    first = torch.cat([order.next(3) for _ in range(7)])  # 21 = three passes, batches straddle passes
    for k in range(3):
        assert sorted(first[7 * k:7 * (k + 1)].tolist()) == list(range(7))
    order = BatchOrder(7, torch.Generator().manual_seed(0))
    head = [order.next(3) for _ in range(2)]
    state = order.state_dict()
    again = BatchOrder(7, torch.Generator().manual_seed(99))
    again.load_state_dict(state)
    assert torch.equal(torch.cat(head + [again.next(3) for _ in range(5)]), first)
    with pytest.raises(ValueError, match="covers 7 slices, the dataset has 5"):
        BatchOrder(5, torch.Generator()).load_state_dict(state)


def test_epoch_seeded_order_seeks_and_weighted_order_follows_weights():
    a = BatchOrder(5, epoch_seed=2)
    full = torch.cat([a.next(4) for _ in range(4)])
    b = BatchOrder(5, epoch_seed=2)
    b.seek(8)
    assert torch.equal(torch.cat([b.next(4) for _ in range(2)]), full[8:])
    w = BatchOrder(4, torch.Generator().manual_seed(0), weights=[0, 1, 0, 1])
    assert set(w.next(50).tolist()) == {1, 3}
    with pytest.raises(ValueError, match="sample_weights"):
        BatchOrder(3, torch.Generator(), weights=[0, 0, 0])


@dataclass
class _Cfg:
    lr: float = 1e-3
    log_every: int = 10
    new_lever: float = 0.0
    classes: tuple = (1, 2)


def test_run_key_drops_execution_fields_and_optional_defaults():
    key = run_key(_Cfg(), "abc", execution=("log_every",), optional={"new_lever": 0.0}, seed=1)
    assert key == {"config": {"lr": 1e-3, "classes": [1, 2]}, "dataset_sha256": "abc", "seed": 1}
    stored = {"lr": 1e-3, "log_every": 5, "classes": [1, 2]}  # a config saved before `new_lever` existed
    assert result_fields(stored, execution=("log_every",), optional={"new_lever": 0.0}) == key["config"]
    assert result_fields(_Cfg(new_lever=0.5), execution=("log_every",), optional={"new_lever": 0.0})["new_lever"] == 0.5


def test_loss_log_round_trip_is_byte_identical(tmp_path):
    log = LossLog(tmp_path / "loss.csv")
    for s in range(1, 4):
        log.append(s, loss=1 / 3 + s, lr=2e-4 * s)
    log.write()
    text = (tmp_path / "loss.csv").read_text()
    assert text.splitlines()[:2] == ["step,loss,lr", "1,1.3333333,0.0002"]
    again = LossLog(tmp_path / "loss.csv")
    again.read(upto=2)
    assert [r["step"] for r in again.rows] == [1, 2]
    again.append(3, loss=1 / 3 + 3, lr=6e-4)
    again.write()
    assert (tmp_path / "loss.csv").read_text() == text
    assert read_log_rows(tmp_path / "nothing.csv", missing_ok=True) == []
    with pytest.raises(FileNotFoundError, match="nothing.csv"):
        read_log_rows(tmp_path / "nothing.csv")


def test_run_folder_checkpoints_resume_and_finish(tmp_path):
    key = run_key(_Cfg(), "abc")
    run = RunFolder(tmp_path / "m", key, SPEC, keep=2)
    lin, g = torch.nn.Linear(2, 1), torch.Generator().manual_seed(0)
    for step in (1, 2, 3):
        run.log.append(step, loss=float(step))
        run.save_checkpoint(step, {"lin": lin}, {"g": g})
    assert sorted(p.name for p in run.ckpt_dir.iterdir()) == ["step_00000002.pt", "step_00000003.pt"]
    again = RunFolder(tmp_path / "m", key, SPEC)
    assert again.resume({"lin": torch.nn.Linear(2, 1)}, {"g": torch.Generator()}) == 3
    assert [r["step"] for r in again.log.rows] == [1, 2, 3]
    other = RunFolder(tmp_path / "m", run_key(_Cfg(lr=1.0), "abc"), SPEC)
    with pytest.raises(ValueError, match=r"another config.*'lr': \(0.001, 1.0\)"):
        other.resume({"lin": torch.nn.Linear(2, 1)}, {"g": torch.Generator()})
    other_data = RunFolder(tmp_path / "m", run_key(_Cfg(), "xyz"), SPEC)
    with pytest.raises(ValueError, match="other training data"):
        other_data.resume({"lin": torch.nn.Linear(2, 1)}, {"g": torch.Generator()})
    assert run.finished() is None
    run.save(state_dict_writer(lin, SPEC.weights_file), {"note": "x"})
    assert not run.ckpt_dir.exists()
    meta = RunFolder(tmp_path / "m", key, SPEC).finished()
    assert meta["format"] == SPEC.format and meta["run_key"] == key and meta["note"] == "x"
    assert other.finished() is None and other.meta() is not None
    assert open_folder(tmp_path / "m", SPEC) == meta


def test_open_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder.*meta.json"):
        open_folder(tmp_path / "none", SPEC)
    (tmp_path / "p").mkdir()
    (tmp_path / "p" / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelLoadError, match=r"pickle-based weights \(weights.bin\)"):
        open_folder(tmp_path / "p", SPEC)
    save_model_folder(tmp_path / "f", SPEC, state_dict_writer(torch.nn.Linear(1, 1), SPEC.weights_file), {})
    (tmp_path / "f" / "meta.json").write_text('{"format": "other/1"}')
    with pytest.raises(ModelLoadError, match="format 'other/1'"):
        open_folder(tmp_path / "f", SPEC)
    (tmp_path / "f" / "meta.json").unlink()
    with pytest.raises(FileNotFoundError, match="meta.json: missing"):
        open_folder(tmp_path / "f", SPEC)


def test_fit_segmenter_reuses_a_finished_segmenter_of_the_same_key(tmp_path):
    from difflung.segmentation import SegConfig, fit_segmenter

    rng = np.random.default_rng(0)
    img = rng.uniform(-1, 1, (6, 8, 8)).astype(np.float32)
    lab = (img > 0).astype(np.uint8)
    cfg = SegConfig(channels=(4, 8), strides=(2,), num_res_units=0, steps=2, batch_size=2, augment=False)
    a = fit_segmenter(tmp_path / "s", img, lab, [0, 1], cfg, 0, dataset_sha256="abc", progress=False)
    stamp = (tmp_path / "s" / "model.safetensors").stat().st_mtime_ns
    b = fit_segmenter(tmp_path / "s", img, lab, [0, 1], cfg, 0, dataset_sha256="abc", progress=False)
    assert (tmp_path / "s" / "model.safetensors").stat().st_mtime_ns == stamp
    assert b.predict_proba(img).tobytes() == a.predict_proba(img).tobytes()
    fit_segmenter(tmp_path / "s", img, lab, [0, 1], cfg, 1, dataset_sha256="abc", progress=False)  # new seed
    assert (tmp_path / "s" / "model.safetensors").stat().st_mtime_ns != stamp
