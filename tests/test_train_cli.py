"""`python -m difflung train`: the multi-GPU entry point trains, saves, reuses, and refuses bad input."""
import json

from difflung.cli import main
from difflung.diffusion import load_model


def test_train_command_saves_a_loadable_model_and_reuses_it(toy_ds, tmp_path, capsys):
    ds = toy_ds
    args = ["train", "--dataset", str(ds.root), "--out", str(tmp_path / "m"), "--preset", "tiny", "--steps", "3",
            "--batch-size", "2", "--warmup", "none", "--strategy", "uniform", "--device", "cpu"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["finished"] is True and out["steps"] == 3 and out["reused"] is False
    unet, meta = load_model(tmp_path / "m", dataset=ds)
    assert meta["train_config"]["strategy"] == "uniform" and meta["train_config"]["warmup"] is None
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["reused"] is True


def test_train_command_names_a_missing_dataset(tmp_path, capsys):
    assert main(["train", "--dataset", str(tmp_path / "none"), "--out", str(tmp_path / "m")]) == 1
    assert "none/manifest.json: no dataset manifest" in capsys.readouterr().err


def test_train_command_parses_the_recipe_levers():
    import argparse

    from difflung.cli.train import configure_parser

    p = argparse.ArgumentParser()
    configure_parser(p)
    base = ["--dataset", "d", "--out", "o"]
    args = p.parse_args(base + ["--prediction-type", "epsilon", "--snr-gamma", "5", "--lesion-weight", "2",
                                "--lesion-classes", "4,6"])
    assert (args.prediction_type, args.snr_gamma, args.lesion_weight, args.lesion_classes) == ("epsilon", 5.0, 2.0, (4, 6))
    d = p.parse_args(base)
    assert (d.prediction_type, d.snr_gamma, d.lesion_weight, d.lesion_classes) == ("v_prediction", None, 0.0, ())


def test_every_command_parses_in_the_cli_package():
    import importlib

    from difflung.cli import COMMANDS, build_parser

    mine = ["run", "fetch-data", "prepare", "train", "export-nnunet", "check-book", "archive"]
    assert all(COMMANDS[c][0] == "difflung.cli." + c.replace("-", "_") for c in mine)
    for lib in ("difflung.run.pipeline", "difflung.data.realdata", "difflung.data.prepare", "difflung.data.nnunet",
                "difflung.run.bookcheck", "difflung.run.archive"):  # argument parsing left the library
        mod = importlib.import_module(lib)
        assert not hasattr(mod, "run_cli") and not hasattr(mod, "configure_parser"), lib
    p = build_parser()
    a = p.parse_args(["run", "--set", "a=1", "--set", "b=2", "--only", "01_x"])
    assert (a.profile, a.overrides, a.only, a.runs_dir) == ("smoke", ["a=1", "b=2"], ["01_x"], "runs")
    a = p.parse_args(["prepare", "x.nii.gz", "--out", "o"])
    assert (a.size, a.seed, a.min_lung_fraction, a.labels) == (128, 0, 0.01, None)
    a = p.parse_args(["export-nnunet", "--dataset", "d", "--out", "o", "--id", "7", "--name", "n"])
    assert (a.dataset_id, a.splits, a.spacing, a.overwrite) == (7, ["train"], (1.0, 1.0), False)
    assert p.parse_args(["archive", "--profile", "smoke"]).note is None
    assert p.parse_args(["check-book"]).profile == "smoke"
    assert p.parse_args(["fetch-data", "--force"]).force is True
