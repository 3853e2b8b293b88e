"""The lit-gen command end to end: fit, test, predict, and its errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

# Imported at collection: Lightning's log handler keeps the stream of its import, which must not be one
# test's capsys (closed after that test: later log lines would print "Logging error" tracebacks).
import lightning.pytorch  # noqa: F401
import numpy as np
import pytest
import torch

from tests.conftest import ROOT, quiet_trainer_args, run_cli

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
TINY_VAE = ["--model.init_args.channels=8", "--model.init_args.latent_dim=4", "--model.init_args.iwae_samples=5"]


def fit_tiny(run_dir: Path, name: str, extra: list[str] = ()) -> Path:
    """A two-epoch VAE fit on digits (few batches); returns the run's version directory."""
    code = run_cli(["fit", "--config", QUICKSTART, *quiet_trainer_args(run_dir, name), *TINY_VAE,
                    "--trainer.max_epochs=2", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=2",
                    "--evaluation.every_n_epochs=2", "--evaluation.fid=false", "--evaluation.grid_size=16",
                    *extra])
    assert code == 0
    versions = sorted((run_dir / name).glob("version_*"))
    return versions[-1]


def test_fast_dev_run_vae_on_digits(tmp_path):
    assert run_cli(["fit", "--config", QUICKSTART, *quiet_trainer_args(tmp_path), *TINY_VAE,
                    "--trainer.fast_dev_run=true", "--evaluation.fid=false"]) == 0


def test_print_config_shows_linked_model_and_defaults(capsys):
    assert run_cli(["fit", "--config", QUICKSTART, "--print_config"]) == 0
    out = capsys.readouterr().out
    assert "class_path: lit_gen.models.vae.VAE" in out
    assert "class_path: lit_gen.datamodules.DigitsDataModule" in out
    assert "seed_everything: 1234" in out
    assert "save_last: true" in out


def test_fit_writes_config_checkpoints_and_grids_then_test_writes_metrics(tmp_path):
    run = fit_tiny(tmp_path, "vae")
    assert (run / "config.yaml").is_file()
    assert (run / "checkpoints" / "last.ckpt").is_file()
    assert list((run / "samples").glob("val_epoch0001_*.png")), "no sample grid after the 2nd epoch"
    # A rerun of the same config must not refuse to overwrite anything.
    fit_tiny(tmp_path, "vae")

    code = run_cli(["test", "--config", QUICKSTART, *quiet_trainer_args(tmp_path, "vae"), *TINY_VAE,
                    "--ckpt_path=last", "--trainer.limit_test_batches=2",
                    "--evaluation.test_num_samples=12", "--evaluation.sample_batch_size=6"])
    assert code == 0
    metrics_file = sorted((tmp_path / "vae").glob("version_*/eval/*/metrics.json"))[-1]
    report = json.loads(metrics_file.read_text())
    metrics = report["metrics"]
    assert report["split"] == "test" and report["checkpoint"].endswith("last.ckpt")
    assert metrics["nll"]["kind"] == "estimate" and metrics["bpd"]["kind"] == "estimate"
    assert metrics["elbo"]["kind"] == "bound"
    assert metrics["nll"]["n"] == 2 * 64  # two test batches
    assert metrics["bpd"]["value"] == pytest.approx(metrics["nll"]["value"] / (64 * np.log(2)))
    assert metrics["fid"]["n_generated"] == 12 and metrics["fid"]["real_split"] == "train"
    assert metrics["fid"]["value"] > 0
    assert metrics["fid"]["feature_extractor"].startswith("inception")


def test_predict_writes_grid_pngs_and_npz_reproducibly(tmp_path):
    fit_tiny(tmp_path, "pred")
    outputs = []
    for attempt in range(2):
        out_dir = tmp_path / f"predictions{attempt}"
        code = run_cli(["predict", "--config", QUICKSTART, *quiet_trainer_args(tmp_path, "pred"), *TINY_VAE,
                        "--ckpt_path=last", "--data.init_args.predict_num_samples=10",
                        "--data.init_args.batch_size=4", f"--prediction.output_dir={out_dir}",
                        "--model.init_args.sample_kwargs={temperature: 0.9, decode: sample}"])
        assert code == 0
        assert (out_dir / "grid.png").is_file()
        assert len(list((out_dir / "samples").glob("*.png"))) == 10
        arrays = np.load(out_dir / "samples.npz")
        assert arrays["images"].shape == (10, 1, 8, 8) and arrays["images"].dtype == np.uint8
        outputs.append(arrays["samples"])
    assert np.array_equal(outputs[0], outputs[1])
    assert not np.array_equal(outputs[0][:4], outputs[0][4:8]), "chunks must use distinct seeds"


# ------------------------------------------------------------------------------------------ bad input
def error_line(capsys) -> str:
    """The error on stderr: exactly one ``lit-gen: error:`` line, no traceback; returned from that line on
    (a few messages list places they looked on the lines after it)."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("lit-gen: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return err[err.index(lines[0]):].strip()


def test_unknown_key_is_a_short_error(capsys, tmp_path):
    code = run_cli(["fit", "--config", QUICKSTART, *quiet_trainer_args(tmp_path), "--model.init_args.latnt_dim=3"])
    assert code == 2
    assert "latnt_dim" in error_line(capsys)


def test_bad_value_is_a_short_error(capsys, tmp_path):
    code = run_cli(["fit", "--config", QUICKSTART, *quiet_trainer_args(tmp_path),
                    "--model.init_args.likelihood=gaussianish", "--trainer.fast_dev_run=true"])
    assert code != 0
    assert "gaussianish" in error_line(capsys)


def test_missing_dataset_names_the_files(capsys, tmp_path):
    code = run_cli(["fit", "--config", str(ROOT / "configs" / "vae" / "mnist.yaml"), *quiet_trainer_args(tmp_path),
                    f"--data.init_args.root={tmp_path / 'nowhere'}", "--trainer.fast_dev_run=true"])
    assert code == 1
    err = error_line(capsys)
    assert "lit-gen: error: MNIST" in err and "train-images-idx3-ubyte" in err and "download" in err
    assert not (tmp_path / "test").exists(), "a failed start must not leave a run directory behind"


def test_missing_checkpoint(capsys, tmp_path):
    code = run_cli(["test", "--config", QUICKSTART, *quiet_trainer_args(tmp_path),
                    f"--ckpt_path={tmp_path / 'missing.ckpt'}"])
    assert code == 1
    assert "does not exist" in error_line(capsys)


def test_last_without_a_run(capsys, tmp_path):
    code = run_cli(["test", "--config", QUICKSTART, *quiet_trainer_args(tmp_path, "never"), "--ckpt_path=last"])
    assert code == 1
    assert "no run with a last.ckpt" in error_line(capsys)


def test_corrupt_and_truncated_checkpoints(capsys, tmp_path):
    run = fit_tiny(tmp_path, "broken")
    good = (run / "checkpoints" / "last.ckpt").read_bytes()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good[: len(good) // 2])
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint at all")
    for path in (truncated, garbage):
        code = run_cli(["test", "--config", QUICKSTART, *quiet_trainer_args(tmp_path), f"--ckpt_path={path}"])
        assert code == 1
        line = error_line(capsys)
        assert str(path) in line and ("corrupt" in line or "truncated" in line)


def test_foreign_checkpoint_is_refused(capsys, tmp_path):
    run = fit_tiny(tmp_path, "foreign")
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    state["lit_gen"]["model"] = "lit_gen.models.factorized.FactorizedCategorical"
    other = tmp_path / "other.ckpt"
    torch.save(state, other)
    code = run_cli(["test", "--config", QUICKSTART, *quiet_trainer_args(tmp_path), f"--ckpt_path={other}"])
    assert code == 1
    assert "FactorizedCategorical" in error_line(capsys)

    plain = tmp_path / "plain.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, plain)
    assert run_cli(["test", "--config", QUICKSTART, *quiet_trainer_args(tmp_path), f"--ckpt_path={plain}"]) == 1
    assert "not a lit-gen checkpoint" in error_line(capsys)


def test_checkpoint_of_another_shape_is_refused(capsys, tmp_path):
    run = fit_tiny(tmp_path, "shape")
    code = run_cli(["test", "--config", QUICKSTART, *quiet_trainer_args(tmp_path), *TINY_VAE,
                    f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "--model.init_args.latent_dim=5"])
    assert code == 1
    # stderr is read once: the error names the hyperparameter that differs, with both values.
    assert "latent_dim=4 in the checkpoint, 5 in the config" in error_line(capsys)


def test_two_process_fit_and_test_with_sample_metrics(tmp_path):
    """DDP on CPU (gloo): every rank samples its chunks, features are gathered, no rank-zero-only collective."""
    ddp = ["--trainer.strategy=ddp_spawn", "--trainer.devices=2", "--trainer.accelerator=cpu"]
    small_eval = ["--evaluation.sample_batch_size=4", "--evaluation.grid_size=8"]
    code = run_cli(["fit", "--config", QUICKSTART, *quiet_trainer_args(tmp_path, "ddp"), *TINY_VAE, *ddp, *small_eval,
                    "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=2",
                    "--evaluation.every_n_epochs=1", "--evaluation.val_num_samples=10"])
    assert code == 0
    run = sorted((tmp_path / "ddp").glob("version_*"))[-1]
    assert list((run / "samples").glob("val_*.png"))
    code = run_cli(["test", "--config", QUICKSTART, *quiet_trainer_args(tmp_path, "ddp"), *TINY_VAE, *ddp,
                    *small_eval, "--ckpt_path=last", "--trainer.limit_test_batches=2",
                    "--evaluation.test_num_samples=10"])
    assert code == 0
    report = json.loads(sorted((tmp_path / "ddp").glob("version_*/eval/*/metrics.json"))[-1].read_text())
    assert report["metrics"]["fid"]["n_generated"] == 10
    assert report["metrics"]["nll"]["n"] == 2 * 2 * 64  # two batches on each of two ranks


def test_lightning_configuration_errors_are_one_line(capsys, tmp_path):
    """Trainer-level clipping does not apply to the GAN's manual optimization: say so, no traceback."""
    code = run_cli(["fit", "--config", str(ROOT / "configs" / "gan" / "digits.yaml"), *quiet_trainer_args(tmp_path),
                    "--trainer.gradient_clip_val=1.0", "--trainer.fast_dev_run=true"])
    assert code == 1
    assert "clipping" in error_line(capsys)


def test_knob_sweep_writes_a_table_a_plot_and_a_grid_per_value(tmp_path, capsys):
    """Each row of sweep.md holds the sample metrics of its own knob value: FID, precision and recall at
    temperature t equal those of a plain ``test`` with ``sample_kwargs: {temperature: t}``."""
    run = fit_tiny(tmp_path, "sweep")
    test = ["test", "--config", QUICKSTART, *quiet_trainer_args(tmp_path, "sweep"), *TINY_VAE,
            "--ckpt_path=last", "--trainer.limit_test_batches=1", "--evaluation.test_num_samples=12",
            "--evaluation.sample_batch_size=6", "--evaluation.grid_size=6", "--evaluation.precision_recall=true"]
    capsys.readouterr()
    assert run_cli([*test, "--evaluation.sweep=[0.5, 1.0]"]) == 0
    out = capsys.readouterr().out
    assert "sweep temperature=0.5 (1/2)" in out and "sweep temperature=1.0 (2/2)" in out  # progress
    assert "temperature sweep (N = 12 generated" in out  # its table, printed
    run = run / "eval" / "last"  # beside the checkpoint it evaluated
    sweep = json.loads((run / "metrics.json").read_text())["sweep"]
    assert sweep["knob"] == "temperature" and [row["temperature"] for row in sweep["rows"]] == [0.5, 1.0]
    table = (run / "sweep.md").read_text().splitlines()
    header = next(line for line in table if line.startswith("| temperature"))
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert {"fid", "precision", "recall"} <= set(columns)
    rows = {}
    for line in table:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if line.startswith("| ") and cells[0] in ("0.5", "1"):
            rows[cells[0]] = dict(zip(columns, cells))
    assert set(rows) == {"0.5", "1"}
    assert rows["0.5"]["fid"] != rows["1"]["fid"], "the two temperatures draw other samples"
    assert (run / "sweep.png").stat().st_size > 0
    assert len(list(run.glob("sweep_temperature_*.png"))) == 2

    # The sweep's test itself evaluated the config's sample_kwargs (temperature 1); then one at 0.5.
    from lit_gen.evaluation.report import format_value

    at = {"1": json.loads((run / "metrics.json").read_text())["metrics"]}
    assert run_cli([*test, "--model.init_args.sample_kwargs={temperature: 0.5}"]) == 0
    at["0.5"] = json.loads((run / "metrics.json").read_text())["metrics"]
    for value, metrics in at.items():
        for name in ("fid", "precision", "recall"):
            assert rows[value][name] == format_value(metrics[name]["value"]), (value, name)


def test_testing_a_checkpoint_twice_gives_the_same_metrics(tmp_path):
    run = fit_tiny(tmp_path, "twice")
    reports = []
    for _ in range(2):
        assert run_cli(["test", "--config", QUICKSTART, *quiet_trainer_args(tmp_path, "again"), *TINY_VAE,
                        f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}", "--trainer.limit_test_batches=2",
                        "--evaluation.test_num_samples=8", "--evaluation.sample_batch_size=4"]) == 0
        newest = max((tmp_path / "again").glob("version_*/eval/*/metrics.json"), key=lambda p: p.stat().st_mtime)
        metrics = json.loads(newest.read_text())["metrics"]
        reports.append({k: v["value"] for k, v in metrics.items() if k != "sample_sec_per_image"})  # a time
    assert reports[0] == reports[1]
    assert {"nll", "bpd", "elbo", "fid"} <= reports[0].keys()


def test_checkpoint_of_another_family_names_both(capsys, tmp_path):
    run = fit_tiny(tmp_path, "vae_run")
    code = run_cli(["test", "--config", str(ROOT / "configs" / "autoregressive" / "digits.yaml"),
                    *quiet_trainer_args(tmp_path), f"--ckpt_path={run / 'checkpoints' / 'last.ckpt'}"])
    assert code == 1
    line = error_line(capsys)
    assert "VAE" in line and "GatedPixelCNN" in line


def test_ckpt_path_best_evaluates_the_best_checkpoint_not_the_last(capsys, tmp_path):
    """``mode: max`` on val/nll makes the first epoch's (untrained, worst) checkpoint the best: ``--ckpt_path
    best`` must test that one, the file ModelCheckpoint recorded, and say so when it is gone."""
    run = fit_tiny(tmp_path, "best", ["--checkpoint.mode=max", "--evaluation.every_n_epochs=0"])
    last = run / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    recorded = next(v for k, v in state["callbacks"].items() if k.startswith("ModelCheckpoint"))
    best = Path(recorded["best_model_path"])
    assert best.parent == last.parent and best.is_file()
    assert torch.load(best, weights_only=True)["global_step"] == 3 < state["global_step"] == 6
    test = ["test", "--config", QUICKSTART, *quiet_trainer_args(tmp_path, "best"), *TINY_VAE,
            "--trainer.limit_test_batches=1", "--evaluation.fid=false", "--evaluation.grid_size=0"]
    assert run_cli([*test, "--ckpt_path=best"]) == 0
    report = json.loads((run / "eval" / best.stem / "metrics.json").read_text())
    assert report["checkpoint"] == str(best)
    assert run_cli([*test, f"--ckpt_path={last}"]) == 0
    assert json.loads((run / "eval" / "last" / "metrics.json").read_text())["metrics"]["nll"]["value"] != \
        report["metrics"]["nll"]["value"], "the best and the last checkpoint hold other weights"

    best.unlink()
    capsys.readouterr()
    assert run_cli([*test, "--ckpt_path=best"]) == 1
    assert f"--ckpt_path best: the run {run} recorded no best checkpoint that exists" in error_line(capsys)


def test_ckpt_path_best_without_a_best_checkpoint_is_an_error(capsys, tmp_path):
    run = fit_tiny(tmp_path, "nobest", ["--checkpoint.save_top_k=0", "--evaluation.every_n_epochs=0"])
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["last.ckpt"]
    capsys.readouterr()
    code = run_cli(["test", "--config", QUICKSTART, *quiet_trainer_args(tmp_path, "nobest"), *TINY_VAE,
                    "--ckpt_path=best"])
    assert code == 1
    assert "recorded no best checkpoint" in error_line(capsys)
    assert not (run / "eval").exists()


def test_lit_gen_debug_shows_the_traceback_instead_of_one_line(capsys, tmp_path, monkeypatch):
    from lit_gen.errors import CheckpointError

    missing = ["test", "--config", QUICKSTART, *quiet_trainer_args(tmp_path), f"--ckpt_path={tmp_path / 'no.ckpt'}"]
    assert run_cli(missing) == 1
    assert "does not exist" in error_line(capsys)
    monkeypatch.setenv("LIT_GEN_DEBUG", "1")
    # The error propagates out of main (Python prints its traceback), from where it was raised.
    with pytest.raises(CheckpointError, match="does not exist") as info:
        run_cli(missing)
    assert info.traceback[-1].name == "load_checkpoint"
    assert "lit-gen: error:" not in capsys.readouterr().err
    # A parse error shows jsonargparse's whole diagnosis, not the one-line summary.
    assert run_cli(["fit", "--config", QUICKSTART, "--model.init_args.latnt_dim=3"]) == 2
    err = capsys.readouterr().err
    assert "latnt_dim" in err and "lit-gen: error:" not in err and len(err.strip().splitlines()) > 1
