"""difflung.core.parallel: jobs in single-thread worker processes give what single-thread runs here give, in order."""
import numpy as np
import pytest
import torch

from difflung.augment import experiment as A
from difflung.core.parallel import run_jobs
from difflung.segmentation import SegConfig


def _data(n=8, size=16):
    rng = np.random.default_rng(0)
    labels = np.zeros((n, size, size), np.uint8)
    labels[:, 4:12, 3:8] = 1  # a lung-like block, one class besides background
    images = np.where(labels > 0, -0.7, -1.0).astype(np.float32) + rng.normal(0, 0.05, labels.shape).astype(np.float32)
    return images, labels


def test_workers_match_single_thread_runs_here_in_order(tmp_path, monkeypatch):
    images, labels = _data()
    cfg = SegConfig(channels=(4, 8), strides=(2,), num_res_units=0, steps=3, batch_size=4)
    job = lambda s, folder=None: (images, labels, [0, 1], cfg, s, "cpu", images[:3], folder, "sha")
    pooled = run_jobs(A._fit_and_predict, [job(0, tmp_path / "seg0"), job(1), job(2)], workers=2)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        here = run_jobs(A._fit_and_predict, [job(s) for s in (0, 1, 2)], workers=1)
    finally:
        torch.set_num_threads(threads)
    assert [p.shape for p, _ in pooled] == [(3, 16, 16)] * 3
    for (p, t), (q, u) in zip(pooled, here):
        assert np.array_equal(p, q) and t["n_train"] == u["n_train"] == 8
    assert (tmp_path / "seg0" / "segmenter.json").is_file()
    import difflung.segmentation as S

    monkeypatch.setattr(S, "train_segmenter", lambda *a, **k: pytest.fail("retrained a kept segmenter"))
    reused, _ = A._fit_and_predict(*job(0, tmp_path / "seg0"))  # the kept segmenter, not a new training
    assert np.array_equal(reused, pooled[0][0])
    with pytest.raises(pytest.fail.Exception):  # another training set: not reused
        A._fit_and_predict(*job(0, tmp_path / "seg0")[:-1], "another sha")


def _fail(x):
    if x == 2:
        raise ValueError(f"job {x} is bad")
    return x * 10


def test_job_forms_and_errors_reach_the_caller():
    assert run_jobs(_fail, [0, {"x": 3}, (1,)], workers=1) == [0, 30, 10]  # one argument, keywords, a tuple
    with pytest.raises(ValueError, match="job 2 is bad"):
        run_jobs(_fail, [1, 2], workers=2)
    with pytest.raises(ValueError, match="workers=0"):
        run_jobs(_fail, [1], workers=0)
