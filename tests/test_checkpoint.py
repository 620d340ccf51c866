"""Training-state checkpoints: bit-exact resume of model, optimizer, schedule and every generator."""
import numpy as np
import pytest
import torch

from difflung.core.checkpoint import latest_checkpoint, load_training_state, save_training_state


def _train(steps, model, opt, sched, g, n, start=0):
    for _ in range(start, steps):
        x = torch.randn(4, 3, generator=g) + float(n.random())
        loss = model(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()


def _fresh():
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, 10)
    return model, opt, sched, torch.Generator().manual_seed(1), np.random.default_rng(2)


def test_resume_equals_uninterrupted(tmp_path):
    m1, o1, s1, g1, n1 = _fresh()
    _train(8, m1, o1, s1, g1, n1)
    m2, o2, s2, g2, n2 = _fresh()
    _train(3, m2, o2, s2, g2, n2)
    save_training_state(tmp_path / "step_3.pt", step=3, modules={"model": m2, "opt": o2, "sched": s2},
                        generators={"data": g2, "np": n2}, extra={"note": "x"})
    m3, o3, s3, g3, n3 = _fresh()
    _train(1, m3, o3, s3, g3, n3)  # a different state that the load must overwrite
    info = load_training_state(latest_checkpoint(tmp_path), modules={"model": m3, "opt": o3, "sched": s3},
                               generators={"data": g3, "np": n3})
    assert info == {"step": 3, "extra": {"note": "x"}}
    _train(8, m3, o3, s3, g3, n3, start=3)
    for a, b in zip(m1.parameters(), m3.parameters()):
        assert torch.equal(a, b)


def test_bad_checkpoints_are_named(tmp_path):
    bad = tmp_path / "step_1.pt"
    bad.write_bytes(b"not a checkpoint")
    m, o, s, g, n = _fresh()
    with pytest.raises(ValueError, match="step_1.pt: not a readable difflung checkpoint"):
        load_training_state(bad, modules={"model": m})
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_training_state(tmp_path / "missing.pt", modules={"model": m})
    assert latest_checkpoint(tmp_path / "none") is None
