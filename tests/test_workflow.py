"""The daily loop through the command line: where outputs go, what is printed, labels and knobs from the
command line, shipped configs from any directory, subcommand help."""

from __future__ import annotations

import json
import os

# Imported at collection: Lightning's log handler keeps the stream of its import (see test_cli.py).
import lightning.pytorch  # noqa: F401
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import Logger
from PIL import Image

from lit_gen import command
from lit_gen.cli import LitGenCLI, main, rewrite_arguments
from lit_gen.command import packaged_config
from tests.conftest import ROOT, TINY_FAMILIES, quiet_trainer_args, run_cli
from tests.test_cli import QUICKSTART, TINY_VAE, fit_tiny

EVAL = ["--trainer.limit_test_batches=1", "--trainer.limit_val_batches=1", "--evaluation.fid=false",
        "--evaluation.grid_size=4", "--evaluation.sample_batch_size=4"]


def test_fit_says_where_its_run_went(tmp_path, capsys):
    capsys.readouterr()
    run = fit_tiny(tmp_path, "summary")
    out = capsys.readouterr().out
    assert "where the run went" in out and f"run directory    {run}" in out
    best = next((run / "checkpoints").glob("best-*.ckpt"))
    assert f"best checkpoint  {best} (val/nll = " in out and str(run / "checkpoints" / "last.ckpt") in out
    assert f"samples          {run / 'samples'}" in out
    assert f"lit-gen test --config {QUICKSTART} --ckpt_path best" in out


def test_test_and_validate_write_beside_the_checkpoint_with_one_table(tmp_path, capsys):
    run = fit_tiny(tmp_path, "beside")
    common = ["--config", QUICKSTART, *quiet_trainer_args(tmp_path, "beside"), *TINY_VAE, *EVAL]
    capsys.readouterr()
    assert run_cli(["test", *common, "--ckpt_path=last"]) == 0
    out = capsys.readouterr().out
    assert "Test metric" not in out, "Lightning's own table is not printed beside lit-gen's"
    assert out.count("VAE on digits (test)") == 1
    test = json.loads((run / "eval" / "last" / "metrics.json").read_text())
    assert test["split"] == "test" and test["metrics"]["nll"]["kind"] == "estimate"
    assert list((run / "eval" / "last").glob("test_*.png")), "the test grid sits with its metrics"

    assert run_cli(["validate", *common, "--ckpt_path=last"]) == 0
    out = capsys.readouterr().out
    assert "VAE on digits (val)" in out and "Validate metric" not in out
    val = json.loads((run / "eval" / "last" / "metrics.json").read_text())
    assert val["split"] == "val" and val["metrics"]["nll"]["n"] == 64
    assert [p.name for p in (tmp_path / "beside").iterdir()] == [run.name], "no new version directory"

    elsewhere = tmp_path / "mine"
    assert run_cli(["test", *common, "--ckpt_path=last", f"--evaluation.output_dir={elsewhere}"]) == 0
    assert (elsewhere / "metrics.json").is_file()


def test_predict_writes_beside_the_checkpoint_in_the_data_mode(tmp_path, capsys):
    run = fit_tiny(tmp_path, "pred")
    common = ["predict", "--config", QUICKSTART, *quiet_trainer_args(tmp_path, "pred"), *TINY_VAE,
              "--ckpt_path=last", "--data.init_args.predict_num_samples=12"]
    capsys.readouterr()
    assert run_cli([*common, "--prediction.grid_size=8"]) == 0
    assert "grid.png: the first 8 of 12 samples" in capsys.readouterr().out
    out = run / "predict" / "last"
    png = Image.open(out / "samples" / "000003.png")
    assert png.mode == "L" and png.size == (8, 8)
    images = np.load(out / "samples.npz")["images"]
    assert np.array_equal(np.asarray(png), images[3, 0])

    assert run_cli([*common, "--prediction.enlarge=4"]) == 0
    big = Image.open(out / "samples" / "000003.png")
    assert big.size == (32, 32) and np.array_equal(np.asarray(big)[::4, ::4], images[3, 0])


def test_labels_from_the_command_line_draw_those_classes(tmp_path, capsys):
    conditional = [*TINY_VAE, "--model.init_args.conditional=true"]
    code = run_cli(["fit", "--config", QUICKSTART, *quiet_trainer_args(tmp_path, "cond"), *conditional,
                    "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
                    "--evaluation.every_n_epochs=0"])
    assert code == 0
    run = next((tmp_path / "cond").glob("version_*"))
    common = ["predict", "--config", QUICKSTART, *quiet_trainer_args(tmp_path, "cond"), *conditional,
              "--ckpt_path=last"]
    assert run_cli([*common, "--data.init_args.predict_per_class=2"]) == 0
    assert "2 samples of each of 10 classes, one row per class" in capsys.readouterr().out
    arrays = np.load(run / "predict" / "last" / "samples.npz")
    assert arrays["labels"].tolist() == [c for c in range(10) for _ in range(2)]

    # The samples are those of the model asked for these labels: sample j from seed j.
    from lit_gen.core.seeds import ExampleGenerators
    from lit_gen.models.vae import VAE

    model = VAE.load_from_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=True).eval()
    assert run_cli([*common, "--data.init_args.predict_labels=[7, 3]", "--data.init_args.predict_num_samples=3",
                    "--prediction.output_dir", str(tmp_path / "chosen")]) == 0
    chosen = np.load(tmp_path / "chosen" / "samples.npz")
    assert chosen["labels"].tolist() == [7, 3, 7]
    labels = torch.tensor([7, 3, 7])
    expected = model.sample(3, labels=labels, generator=ExampleGenerators(0, [0, 1, 2]), **model.sample_kwargs)
    assert np.array_equal(chosen["samples"], expected.numpy())


def test_chosen_labels_for_an_unconditional_model_or_unknown_classes_are_one_line_errors(tmp_path, capsys):
    fit_tiny(tmp_path, "uncond")
    common = ["predict", "--config", QUICKSTART, *quiet_trainer_args(tmp_path, "uncond"), *TINY_VAE,
              "--ckpt_path=last"]
    capsys.readouterr()
    assert run_cli([*common, "--data.init_args.predict_labels=[1]"]) == 1
    assert "VAE is unconditional" in capsys.readouterr().err
    assert run_cli([*common, "--data.init_args.predict_labels=[12]"]) == 1
    assert "[12] are not classes of digits" in capsys.readouterr().err
    assert run_cli([*common, "--data.init_args.predict_labels=[1]", "--data.init_args.predict_per_class=2"]) == 1
    assert "not both" in capsys.readouterr().err


def test_a_knob_dict_on_the_command_line_is_merged_into_the_configs():
    config = ROOT / "configs" / "diffusion" / "digits.yaml"
    cli = LitGenCLI(args=["--config", str(config), "--model.init_args.sample_kwargs={steps: 7}",
                          "--trainer.logger=false"], run=False)
    kwargs = cli.model.sample_kwargs
    assert kwargs["steps"] == 7 and len(kwargs) > 1, kwargs  # the config's other knobs are kept
    assert rewrite_arguments(["--model.init_args.sample_kwargs", "{a: 1, b: ddim}"]) == \
        ["--model.init_args.sample_kwargs.a=1", "--model.init_args.sample_kwargs.b=ddim"]
    assert rewrite_arguments(["--model.sample_kwargs={decode: sample, s: '10'}"]) == \
        ["--model.sample_kwargs.decode=sample", '--model.sample_kwargs.s="10"']
    assert rewrite_arguments(["--model.init_args.sample_kwargs={}"]) == ["--model.init_args.sample_kwargs={}"]


def test_shipped_configs_work_from_any_directory(tmp_path, monkeypatch, capsys):
    assert packaged_config("quickstart") is not None and packaged_config("vae/mnist") is not None
    assert packaged_config("../pyproject.toml") is None
    monkeypatch.chdir(tmp_path)
    main(["configs"])
    out = capsys.readouterr().out
    assert "quickstart" in out and "diffusion/mnist" in out and "GatedPixelCNN" in out
    assert run_cli(["fit", "--config", "quickstart", *quiet_trainer_args(tmp_path), *TINY_VAE,
                    "--trainer.fast_dev_run=true", "--evaluation.fid=false"]) == 0
    (tmp_path / "quickstart").write_text("not: a lit-gen config\n")  # a file of that name wins
    assert run_cli(["fit", "--config", "quickstart", "--trainer.fast_dev_run=true"]) != 0


def test_wheel_ships_the_configs(tmp_path):
    """A plain (non-editable) install has the configs: they are package data of the wheel."""
    import subprocess
    import sys
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "-q", "-w", str(tmp_path)], check=True, env={**os.environ, "PIP_NO_INDEX": "1"})
    wheel = next(tmp_path.glob("lit_gen-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "lit_gen/configs/quickstart.yaml" in names and "lit_gen/configs/diffusion/mnist.yaml" in names


@pytest.mark.parametrize("command,expected", [
    ([], "behind one protocol"),
    (["fit"], "Train a model"),
    (["predict"], "Draw seeded samples"),
    (["test"], "Evaluate a checkpoint on the test split"),
])
def test_help_says_what_each_subcommand_does(command, expected, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert expected in " ".join(out.split())
    assert "call the model forward" not in out and "Lightning Trainer command line tool" not in out


class ImageRecordingLogger(Logger):
    """A logger with WandbLogger's image API, recording what it is given."""

    images: list = []

    @property
    def name(self) -> str:
        return "recording"

    @property
    def version(self) -> int:
        return 0

    def log_metrics(self, metrics, step=None) -> None:
        pass

    def log_hyperparams(self, params, *args, **kwargs) -> None:
        pass

    def log_image(self, key, images, step=None, **kwargs) -> None:
        ImageRecordingLogger.images.append((key, images, step))


def test_grids_reach_a_csv_run_folder_and_any_logger_with_an_image_api(tmp_path):
    ImageRecordingLogger.images.clear()
    loggers = json.dumps([
        {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(tmp_path), "name": "csv"}},
        {"class_path": "tests.test_workflow.ImageRecordingLogger"}])
    assert run_cli(["fit", "--config", QUICKSTART, *TINY_VAE, f"--trainer.logger={loggers}",
                    "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
                    f"--trainer.default_root_dir={tmp_path}", "--trainer.max_epochs=1",
                    "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
                    "--evaluation.fid=false", "--evaluation.grid_size=9", "--evaluation.every_n_epochs=1"]) == 0
    run = next((tmp_path / "csv").glob("version_*"))
    assert list((run / "samples").glob("val_epoch0000_*.png")) and (run / "metrics.csv").is_file()
    (key, images, step), = ImageRecordingLogger.images
    assert key == "val/samples" and step == 2 and images[0].size[0] >= 3 * 8


def test_predict_interpolates_between_seeded_latents(tmp_path, capsys):
    fit_tiny(tmp_path, "interp")
    common = ["predict", "--config", QUICKSTART, *quiet_trainer_args(tmp_path, "interp"), *TINY_VAE,
              "--ckpt_path=last", "--data.init_args.predict_num_samples=3"]
    assert run_cli([*common, "--prediction.output_dir", str(tmp_path / "plain")]) == 0
    capsys.readouterr()
    assert run_cli([*common, "--data.init_args.predict_interpolate=5", "--data.init_args.batch_size=2",
                    "--prediction.output_dir", str(tmp_path / "rows")]) == 0
    assert "grid.png: 3 interpolations of 5 images, one per row" in capsys.readouterr().out
    rows = np.load(tmp_path / "rows" / "samples.npz")["samples"]
    plain = np.load(tmp_path / "plain" / "samples.npz")["samples"]
    assert rows.shape == (15, 1, 8, 8)
    # Row j starts at sample j of a plain predict (its first latent is the one sample j is drawn from).
    assert np.array_equal(rows[::5], plain)
    assert len(list((tmp_path / "rows" / "samples").glob("*.png"))) == 15
    assert not np.array_equal(rows[0], rows[4]), "a row moves from one latent to another"


def test_interpolation_of_a_family_without_latents_is_one_line(tmp_path, capsys):
    config, tiny = TINY_FAMILIES["diffusion"]
    args = ["--config", str(config), *tiny, *quiet_trainer_args(tmp_path, "diff")]
    assert run_cli(["fit", *args, "--trainer.max_epochs=1", "--trainer.limit_train_batches=1",
                    "--trainer.limit_val_batches=0", "--evaluation.every_n_epochs=0"]) == 0
    capsys.readouterr()
    assert run_cli(["predict", *args, "--ckpt_path=last", "--data.init_args.predict_interpolate=4",
                    "--data.init_args.predict_num_samples=2"]) == 1
    assert "Diffusion has no latent space" in capsys.readouterr().err


def test_the_entry_point_answers_help_and_configs_without_importing_torch():
    """``lit-gen``, ``lit-gen --help`` and ``lit-gen configs`` need no model: torch is not imported for them."""
    import subprocess
    import sys

    code = ("import sys; from lit_gen.command import main; main(sys.argv[1:]); "
            "assert 'torch' not in sys.modules and 'lightning' not in sys.modules, 'imported torch'")
    for args in ([], ["--help"], ["configs"]):
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True).stdout
        assert ("fit" in out and "evaluate" in out) if args != ["configs"] else "quickstart" in out
    assert command.SUBCOMMAND_HELP.keys() == {"fit", "validate", "test", "predict"}
