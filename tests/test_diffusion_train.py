"""Training the mask-guided DDPM: golden losses, bit-exact resume, saved model, loading errors."""
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from difflung.data.dataset import write_dataset
from difflung.diffusion.train import ModelLoadError, TrainConfig, load_model, train_diffusion

TINY = dict(preset="tiny", batch_size=4, checkpoint_every=2)


@pytest.fixture
def ds(toy_ds):  # tests/conftest.py's toy dataset
    return toy_ds


def losses(path):
    rows = [line.split(",") for line in path.read_text().splitlines()[1:]]
    return [float(r[1]) for r in rows]


def test_three_step_loss_sequence_is_golden(ds, tmp_path):
    rng = torch.get_rng_state()
    # epsilon pinned: the golden values predate the v-prediction default
    r = train_diffusion(ds, TrainConfig(steps=3, prediction_type="epsilon", **TINY), tmp_path / "m", device="cpu",
                        progress=False)
    assert torch.equal(rng, torch.get_rng_state())  # explicit generators only: the global RNG is left alone
    assert r.finished and r.steps == 3 and not r.reused
    # golden values of the toy dataset as split by `split_patients` with rare-class strata
    assert losses(r.loss_csv) == pytest.approx([1.1103686, 1.1618084, 1.0944176], abs=1e-5)
    assert r.images_per_s > 0 and r.peak_mem_bytes > 0 and r.device.startswith("cpu")


def test_killed_and_resumed_run_ends_with_identical_weights(ds, tmp_path):
    cfg = TrainConfig(steps=7, strategy="cbmat", **TINY)
    full = train_diffusion(ds, cfg, tmp_path / "full", device="cpu", progress=False)
    part = train_diffusion(ds, cfg, tmp_path / "cut", device="cpu", progress=False, stop_after=3)
    assert not part.finished and part.steps == 3
    assert not (tmp_path / "cut" / "difflung_config.json").exists()
    assert [p.name for p in (tmp_path / "cut" / "checkpoints").iterdir()] == ["step_00000003.pt"]
    resumed = train_diffusion(ds, cfg, tmp_path / "cut", device="cpu", progress=False)
    assert resumed.finished and resumed.steps == 7
    a = load_file(tmp_path / "full" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "cut" / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "full" / "loss.csv").read_text() == (tmp_path / "cut" / "loss.csv").read_text()
    assert not (tmp_path / "cut" / "checkpoints").exists()  # removed once finished


def test_saved_model_loads_with_diffusers_alone_and_records_its_setup(ds, tmp_path):
    from diffusers import UNet2DModel

    r = train_diffusion(ds, TrainConfig(steps=2, mask_mode="single", strategy="uniform", seed=5, **TINY),
                        tmp_path / "m", device="cpu", progress=False)
    unet = UNet2DModel.from_pretrained(r.model_dir)
    assert unet.config.in_channels == 2
    meta = json.loads((r.model_dir / "difflung_config.json").read_text())
    assert meta["classes"] == ds.classes and meta["mask_mode"] == "single" and meta["seed"] == 5
    assert meta["ablation"]["strategy"] == "uniform" and meta["train_config"]["preset"] == "tiny"
    assert meta["frequencies"]["background"] == 0 and sum(meta["frequencies"].values()) == pytest.approx(1)
    assert meta["dataset"]["sha256"] == ds.manifest["splits"]["train"]["sha256"]
    assert {"git_revision", "versions", "device"} <= set(meta["provenance"])
    unet2, meta2 = load_model(r.model_dir, ds)
    assert meta2 == meta and not unet2.training


def test_finished_model_is_reused_and_a_different_config_is_refused(ds, tmp_path):
    cfg = TrainConfig(steps=2, **TINY)
    first = train_diffusion(ds, cfg, tmp_path / "m", device="cpu", progress=False)
    again = train_diffusion(ds, TrainConfig(steps=2, preset="tiny", batch_size=4, checkpoint_every=50),
                            tmp_path / "m", device="cpu", progress=False)
    assert again.reused and again.wall_s == first.wall_s
    with pytest.raises(FileExistsError, match="another config.*overwrite=True"):
        train_diffusion(ds, TrainConfig(steps=3, **TINY), tmp_path / "m", device="cpu", progress=False)
    third = train_diffusion(ds, TrainConfig(steps=3, **TINY), tmp_path / "m", device="cpu", progress=False,
                            overwrite=True)
    assert not third.reused and third.steps == 3 and len(losses(third.loss_csv)) == 3


def test_model_saved_before_run_keys_were_stored_is_reused(ds, tmp_path):
    cfg = TrainConfig(steps=2, **TINY)
    first = train_diffusion(ds, cfg, tmp_path / "m", device="cpu", progress=False)
    mpath = first.model_dir / "difflung_config.json"
    meta = json.loads(mpath.read_text())
    assert meta["run_key"]["dataset_sha256"] == ds.manifest["splits"]["train"]["sha256"]
    del meta["run_key"]  # as written before the training shell: the key is recomputed from train_config
    mpath.write_text(json.dumps(meta))
    assert train_diffusion(ds, cfg, tmp_path / "m", device="cpu", progress=False).reused


def test_resume_with_another_config_is_refused(ds, tmp_path):
    train_diffusion(ds, TrainConfig(steps=4, **TINY), tmp_path / "m", device="cpu", progress=False, stop_after=2)
    with pytest.raises(ValueError, match=r"another config.*'lr': \(0.0001, 0.001\)"):
        train_diffusion(ds, TrainConfig(steps=4, lr=1e-3, **TINY), tmp_path / "m", device="cpu", progress=False)
    r = train_diffusion(ds, TrainConfig(steps=4, lr=1e-3, **TINY), tmp_path / "m", device="cpu", progress=False,
                        overwrite=True)  # starts afresh
    assert r.finished and json.loads((r.model_dir / "difflung_config.json").read_text())["train_config"]["lr"] == 1e-3


def test_bad_config_values(ds, tmp_path):
    with pytest.raises(ValueError, match="warmup=5 must be smaller than steps=3"):
        train_diffusion(ds, TrainConfig(steps=3, warmup=5, **TINY), tmp_path / "m", device="cpu", progress=False)
    with pytest.raises(ValueError, match="steps=0"):
        train_diffusion(ds, TrainConfig(steps=0, **TINY), tmp_path / "m", device="cpu", progress=False)
    with pytest.raises(ValueError, match="low_res_share=1"):
        train_diffusion(ds, TrainConfig(steps=3, low_res_share=1.0, **TINY), tmp_path / "m", device="cpu")
    with pytest.raises(FileNotFoundError, match="01_data_preparation"):
        train_diffusion(tmp_path / "nothing", TrainConfig(steps=2, **TINY), tmp_path / "m", device="cpu")


def test_loading_refuses_pickles_and_other_class_maps(ds, tmp_path):
    r = train_diffusion(ds, TrainConfig(steps=2, **TINY), tmp_path / "m", device="cpu", progress=False)
    unet, _ = load_model(r.model_dir)
    pickled = tmp_path / "pickled"
    unet.save_pretrained(pickled, safe_serialization=False)  # diffusion_pytorch_model.bin
    shutil.copy(r.model_dir / "difflung_config.json", pickled)
    with pytest.raises(ModelLoadError, match=r"pickle-based weights \(diffusion_pytorch_model.bin\)"):
        load_model(pickled)
    # a dataset whose class map lacks fibrosis
    tr = ds.split("train")
    other = tr.subset(np.arange(len(tr)))
    other.labels = np.where(other.labels == 6, 2, other.labels).astype(np.uint8)
    ds2 = write_dataset(tmp_path / "ds2", other, source="toy", params={}, seed=0)
    with pytest.raises(ModelLoadError, match=r"trained on classes \[0, 1, 2, 4, 5, 6\].*has classes \[0, 1, 2, 4, 5\]"):
        load_model(r.model_dir, ds2)
    with pytest.raises(ModelLoadError, match="difflung_config.json: missing"):
        (tmp_path / "bare").mkdir()
        unet.save_pretrained(tmp_path / "bare")
        load_model(tmp_path / "bare")


@pytest.mark.gpu
def test_bf16_channels_last_training_on_cuda(ds, tmp_path):
    r = train_diffusion(ds, TrainConfig(steps=3, **TINY), tmp_path / "m", device="cuda", progress=False)
    assert r.finished and r.device.startswith("cuda") and np.isfinite(losses(r.loss_csv)).all()
    meta = json.loads((r.model_dir / "difflung_config.json").read_text())
    assert meta["train_config"]["mixed_precision"] == "auto" and meta["training"]["device"].startswith("cuda")


@pytest.mark.gpu
def test_compiled_training_on_cuda(ds, tmp_path):
    r = train_diffusion(ds, TrainConfig(steps=3, compile=True, **TINY), tmp_path / "m", device="cuda", progress=False)
    assert r.finished


@pytest.mark.slow
def test_two_processes_train_the_same_model_as_one(ds, tmp_path):
    """torchrun with 2 CPU processes (gloo): each takes half of the same global batch."""
    import subprocess
    import sys

    script = tmp_path / "run.py"
    script.write_text(
        "import sys, torch\ntorch.set_num_threads(1)\n"
        "from difflung.diffusion import TrainConfig, train_diffusion\n"
        f"train_diffusion({str(ds.root)!r}, TrainConfig(preset='tiny', steps=4, batch_size=4, checkpoint_every=2), "
        "sys.argv[1], device='cpu', progress=False)\n")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2"]
    subprocess.run(torchrun + [str(script), str(tmp_path / "two")], check=True, capture_output=True)
    subprocess.run([sys.executable, str(script), str(tmp_path / "one")], check=True, capture_output=True)
    a = load_file(tmp_path / "one" / "diffusion_pytorch_model.safetensors")
    b = load_file(tmp_path / "two" / "diffusion_pytorch_model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-6  # gradient all-reduce order only
    assert losses(tmp_path / "one" / "loss.csv") == pytest.approx(losses(tmp_path / "two" / "loss.csv"), abs=1e-6)


# ---------------------------------------------------------------------------------------------------------------
# recipe levers: v-prediction, min-SNR-gamma weighting, lesion-focused loss

def test_new_recipe_fields_at_their_defaults_keep_the_run_key():
    from dataclasses import fields

    new = {"prediction_type", "snr_gamma", "lesion_weight", "lesion_classes", "beta_schedule", "low_t_share",
           "init_from", "low_res_share"}
    old = {f.name for f in fields(TrainConfig)} - new - {"checkpoint_every", "keep_checkpoints", "log_every"}
    assert set(TrainConfig(prediction_type="epsilon").result_key()) == old
    assert TrainConfig().result_key()["prediction_type"] == "v_prediction"  # the default since the benchmark
    assert TrainConfig(snr_gamma=5.0).result_key()["snr_gamma"] == 5.0
    assert TrainConfig(lesion_classes=[4, 6]).result_key()["lesion_classes"] == [4, 6]
    assert TrainConfig(beta_schedule="squaredcos_cap_v2").result_key()["beta_schedule"] == "squaredcos_cap_v2"


def test_cosine_schedule_model_trains_samples_and_inpaints_with_its_betas(ds, tmp_path):
    from difflung.diffusion.inpaint import make_repaint_scheduler
    from difflung.diffusion.sample import make_scheduler, sample

    lin = train_diffusion(ds, TrainConfig(steps=2, **TINY), tmp_path / "lin", device="cpu", progress=False)
    cos = train_diffusion(ds, TrainConfig(steps=2, beta_schedule="squaredcos_cap_v2", **TINY), tmp_path / "cos",
                          device="cpu", progress=False)
    assert losses(cos.loss_csv) != losses(lin.loss_csv)  # same draws, other noise levels
    unet, meta = load_model(cos.model_dir, ds)
    assert meta["noise_schedule"]["beta_schedule"] == "squaredcos_cap_v2"
    labels = ds.split("test").labels[:2]
    for sampler in ("ddim", "dpm", "ddpm"):
        sched = make_scheduler(sampler, meta["noise_schedule"])
        assert sched.config.beta_schedule == "squaredcos_cap_v2" and sched.alphas_cumprod[-1] < 1e-3
        x = sample(unet, meta, labels, generator=torch.Generator().manual_seed(0), sampler=sampler, steps=3)
        assert x.shape == labels.shape and np.isfinite(x).all() and np.abs(x).max() <= 1
    assert make_repaint_scheduler(meta["noise_schedule"]).config.beta_schedule == "squaredcos_cap_v2"
    with pytest.raises(ValueError, match="beta_schedule='cosine'"):
        train_diffusion(ds, TrainConfig(steps=2, beta_schedule="cosine", **TINY), tmp_path / "x", device="cpu")


def test_v_prediction_model_trains_and_samples_with_every_sampler(ds, tmp_path):
    from difflung.diffusion.sample import make_scheduler, sample

    cfg = TrainConfig(steps=2, prediction_type="v_prediction", **TINY)
    r = train_diffusion(ds, cfg, tmp_path / "v", device="cpu", progress=False)
    eps = train_diffusion(ds, TrainConfig(steps=2, prediction_type="epsilon", **TINY), tmp_path / "eps", device="cpu", progress=False)
    assert r.finished and np.isfinite(losses(r.loss_csv)).all()
    assert losses(r.loss_csv)[0] != losses(eps.loss_csv)[0]  # same noise and model, another target
    unet, meta = load_model(r.model_dir, ds)
    assert meta["noise_schedule"]["prediction_type"] == "v_prediction"
    labels = ds.split("test").labels[:2]
    for sampler in ("ddim", "dpm", "ddpm"):
        assert make_scheduler(sampler, meta["noise_schedule"]).config.prediction_type == "v_prediction"
        x = sample(unet, meta, labels, generator=torch.Generator().manual_seed(0), sampler=sampler, steps=2)
        assert x.shape == labels.shape and np.isfinite(x).all() and np.abs(x).max() <= 1
    snr = train_diffusion(ds, TrainConfig(steps=2, prediction_type="v_prediction", snr_gamma=5.0, **TINY),
                          tmp_path / "v_snr", device="cpu", progress=False)
    assert np.isfinite(losses(snr.loss_csv)).all() and losses(snr.loss_csv) != losses(r.loss_csv)
    with pytest.raises(ValueError, match="prediction_type='x0'"):
        train_diffusion(ds, TrainConfig(steps=2, prediction_type="x0", **TINY), tmp_path / "x", device="cpu")


def test_v_target_is_diffusers_velocity():
    from diffusers import DDPMScheduler

    from difflung.diffusion.train import NOISE_SCHEDULE

    sched = DDPMScheduler(**{**NOISE_SCHEDULE, "prediction_type": "v_prediction"})
    x0, noise, t = torch.full((1, 1, 2, 2), 0.5), torch.full((1, 1, 2, 2), -1.0), torch.tensor([10])
    a = sched.alphas_cumprod[10]
    assert torch.allclose(sched.get_velocity(x0, noise, t), a.sqrt() * noise - (1 - a).sqrt() * x0)


def test_min_snr_weights_equal_known_values():
    from diffusers import DDPMScheduler

    from difflung.diffusion.train import NOISE_SCHEDULE, min_snr_weights

    sched = DDPMScheduler(**NOISE_SCHEDULE)
    t = torch.tensor([0, 999])
    # linear betas 1e-4..0.02: a_0 = 1 - 1e-4, so SNR(0) = 9999; SNR(999) = a_999 / (1 - a_999) with a_999 ~ 4.04e-5
    a999 = float(np.prod(1 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64)))
    snr999 = a999 / (1 - a999)
    eps = min_snr_weights(sched, t, 5.0, "epsilon")
    v = min_snr_weights(sched, t, 5.0, "v_prediction")
    assert eps.tolist() == pytest.approx([5 / 9999, 1.0], rel=1e-3)  # high SNR clipped to gamma; low SNR: weight 1
    assert v.tolist() == pytest.approx([5 / 10000, snr999 / (snr999 + 1)], rel=1e-3)
    assert min_snr_weights(sched, torch.tensor([0]), 1e6, "epsilon").item() == pytest.approx(1.0)  # gamma -> inf: off


def test_lesion_weighting_zero_is_the_plain_loss_bit_for_bit_and_weights_lesions(ds, tmp_path):
    from diffusers import DDPMScheduler

    from difflung.diffusion.train import NOISE_SCHEDULE, diffusion_loss

    plain = train_diffusion(ds, TrainConfig(steps=3, **TINY), tmp_path / "plain", device="cpu", progress=False)
    zero = train_diffusion(ds, TrainConfig(steps=3, lesion_weight=0.0, lesion_classes=(4, 6), **TINY),
                           tmp_path / "zero", device="cpu", progress=False)
    assert plain.loss_csv.read_text() == zero.loss_csv.read_text()
    a = load_file(plain.model_dir / "diffusion_pytorch_model.safetensors")
    b = load_file(zero.model_dir / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    heavy = train_diffusion(ds, TrainConfig(steps=3, lesion_weight=4.0, lesion_classes=(4, 6), **TINY),
                            tmp_path / "heavy", device="cpu", progress=False)
    assert losses(heavy.loss_csv)[0] != losses(plain.loss_csv)[0]
    # by hand: one image, errors 1 on the lesion pixel, 0 elsewhere: weight 5 / (5 + 3)
    pred, target = torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 0], [0, 0]]]])
    lab = torch.tensor([[[4, 1], [1, 0]]], dtype=torch.uint8)
    sched, t = DDPMScheduler(**NOISE_SCHEDULE), torch.tensor([5])
    cfg = TrainConfig(lesion_weight=4.0, lesion_classes=(4,))
    assert diffusion_loss(pred, target, t, lab, cfg, sched).item() == pytest.approx(5 / 8)
    assert diffusion_loss(pred, target, t, lab, TrainConfig(), sched).item() == pytest.approx(1 / 4)


def test_trained_with_recognises_the_same_run(toy_ds, tmp_path):
    """A finished model is recognised for its own config and data only (how chapter 3 takes chapter 2's CBMAT run)."""
    from difflung.diffusion.train import TrainConfig, train_diffusion, trained_with

    ds = toy_ds
    cfg = TrainConfig(preset="tiny", steps=2, batch_size=2, checkpoint_every=1)
    assert not trained_with(tmp_path / "m", ds, cfg)
    train_diffusion(ds, cfg, tmp_path / "m", device="cpu", progress=False)
    assert trained_with(tmp_path / "m", ds, cfg)
    assert trained_with(tmp_path / "m", ds, TrainConfig(preset="tiny", steps=2, batch_size=2, checkpoint_every=7))
    assert not trained_with(tmp_path / "m", ds, TrainConfig(preset="tiny", steps=3, batch_size=2))


def test_draw_timesteps_low_share():
    from difflung.diffusion.train import TrainConfig, _check, draw_timesteps

    plain = draw_timesteps(4096, 1000, 0.0, torch.Generator().manual_seed(0))
    assert torch.equal(plain, torch.randint(0, 1000, (4096,), generator=torch.Generator().manual_seed(0)))
    t = draw_timesteps(4096, 1000, 0.5, torch.Generator().manual_seed(0))
    assert t.min() >= 0 and t.max() < 1000
    assert (t < 100).float().mean().item() == pytest.approx(0.5 + 0.5 * 0.1, abs=0.03)  # half low + uniform's tenth
    assert (plain < 100).float().mean().item() == pytest.approx(0.1, abs=0.02)
    with pytest.raises(ValueError, match="low_t_share"):
        _check(TrainConfig(low_t_share=1.0))
    assert "low_t_share" not in TrainConfig().result_key() and TrainConfig(low_t_share=0.3).result_key()["low_t_share"] == 0.3


def test_progressive_resolution_trains_half_size_first_then_full_size(ds, tmp_path):
    from difflung.diffusion.train import _Batches, _accelerator
    from difflung.core.training import seed_streams

    cfg = TrainConfig(steps=4, low_res_share=0.5, lesion_weight=1.0, lesion_classes=[4], **TINY)
    batches = _Batches(ds, cfg, seed_streams(0, ("init", "data", "ablation", "noise")), _accelerator("cpu", "no"))
    inp, t, target, lesion = batches.draw(0)
    assert inp.shape[-2:] == target.shape[-2:] == lesion.shape[-2:] == (ds.size // 2, ds.size // 2)
    assert inp[:, 1:].sum(1).max() <= 1 + 1e-6  # pooled one-hot: each class's share of a pixel
    assert batches.draw(2)[0].shape[-1] == ds.size
    r = train_diffusion(ds, cfg, tmp_path / "prog", device="cpu", progress=False)
    plain = train_diffusion(ds, TrainConfig(steps=4, lesion_weight=1.0, lesion_classes=[4], **TINY), tmp_path / "p",
                            device="cpu", progress=False)
    assert r.finished and losses(r.loss_csv)[:2] != losses(plain.loss_csv)[:2]
    assert TrainConfig(low_res_share=0.5).result_key()["low_res_share"] == 0.5


def test_bf16_autocast_on_the_cpu_when_asked(ds, tmp_path):
    from difflung.diffusion.train import _accelerator

    assert _accelerator("cpu", "auto").mixed_precision == "no" and _accelerator("cpu", "bf16").mixed_precision == "bf16"
    a = train_diffusion(ds, TrainConfig(steps=2, **TINY), tmp_path / "a", device="cpu", progress=False)
    b = train_diffusion(ds, TrainConfig(steps=2, mixed_precision="bf16", **TINY), tmp_path / "b", device="cpu",
                        progress=False)
    la, lb = losses(a.loss_csv), losses(b.loss_csv)
    assert la != lb and np.allclose(la, lb, rtol=0.05)  # bf16 rounding only
