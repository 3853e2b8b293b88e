"""Every GAN config and every loss through the lit-gen command (fast_dev_run), and a fit -> test round trip
that checkpoints by val/fid with EMA weights."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.conftest import ROOT, quiet_trainer_args, run_cli
from tests.datamodules.conftest import make_idx_set, write_cifar_batch

CONFIGS = ROOT / "configs" / "gan"
FAST = ["--trainer.fast_dev_run=true", "--evaluation.fid=false"]
TINY = ["--model.init_args.generator_channels=8", "--model.init_args.discriminator_channels=8"]


def write_tiny_cifar(root):
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_batch(folder / name, rng.integers(0, 256, (4, 3072), dtype=np.uint8), [0, 1, 2, 3])


def data_args(config: str, tmp_path) -> list[str]:
    """Point a config's datamodule at small files the test writes (digits are bundled)."""
    if "digits" in config:
        return []
    if "cifar" in config:
        write_tiny_cifar(tmp_path)
        return [f"--data.init_args.root={tmp_path}", "--data.init_args.val_size=4", "--data.init_args.batch_size=4"]
    make_idx_set(tmp_path, n_train=20, n_test=7)
    return [f"--data.init_args.root={tmp_path}", "--data.init_args.val_size=4", "--data.init_args.batch_size=4"]


@pytest.mark.parametrize("config", ["digits", "mnist", "fashion_mnist", "cifar10", "wgan_gp_mnist", "sngan_cifar10"])
def test_fast_dev_run_of_every_config(tmp_path, config):
    args = ["fit", "--config", str(CONFIGS / f"{config}.yaml"), *quiet_trainer_args(tmp_path), *FAST, *TINY,
            *data_args(config, tmp_path)]
    assert run_cli(args) == 0


@pytest.mark.parametrize("loss_args", [
    ["--model.init_args.loss=non_saturating", "--model.init_args.r1_penalty=1.0"],
    ["--model.init_args.loss=wasserstein", "--model.init_args.gradient_penalty=10", "--model.init_args.n_critic=5"],
    ["--model.init_args.loss=hinge", "--model.init_args.spectral_norm=true", "--model.init_args.architecture=resnet"],
])
def test_fast_dev_run_of_each_loss_samples_during_validation(tmp_path, loss_args):
    # every_n_epochs=1 draws a sample grid inside Lightning's validation loop (inference mode).
    args = ["fit", "--config", str(CONFIGS / "digits.yaml"), *quiet_trainer_args(tmp_path), *FAST, *TINY,
            *loss_args, "--evaluation.every_n_epochs=1", "--evaluation.grid_size=8"]
    assert run_cli(args) == 0


def test_conditional_gan_and_bad_loss_name(tmp_path, capsys):
    args = ["fit", "--config", str(CONFIGS / "digits.yaml"), *quiet_trainer_args(tmp_path), *FAST, *TINY,
            "--model.init_args.conditional=true"]
    assert run_cli(args) == 0
    bad = ["fit", "--config", str(CONFIGS / "digits.yaml"), *quiet_trainer_args(tmp_path), *FAST,
           "--model.init_args.loss=least_squares"]
    assert run_cli(bad) == 2
    assert "least_squares" in capsys.readouterr().err


def test_fit_checkpoints_by_fid_then_test_reports_fid_without_nll(tmp_path):
    common = ["--config", str(CONFIGS / "digits.yaml"), *quiet_trainer_args(tmp_path, "gan"), *TINY,
              "--evaluation.val_num_samples=10", "--evaluation.sample_batch_size=10", "--evaluation.grid_size=10"]
    code = run_cli(["fit", *common, "--trainer.max_epochs=2", "--trainer.limit_train_batches=2",
                    "--trainer.limit_val_batches=1", "--evaluation.every_n_epochs=2", "--checkpoint.every_n_epochs=2"])
    assert code == 0
    run = max((tmp_path / "gan").glob("version_*"))
    best = list((run / "checkpoints").glob("best-*.ckpt"))
    assert len(best) == 1 and (run / "checkpoints" / "last.ckpt").is_file()
    state = torch.load(best[0], weights_only=True)  # EMA weights; no pickled optimizer factories
    assert "current_model_state" in state and "generator_optimizer" not in state["hyper_parameters"]
    monitor = next(v for k, v in state["callbacks"].items() if k.startswith("ModelCheckpoint"))
    assert monitor["monitor"] == "val/fid" and monitor["best_model_score"] > 0

    code = run_cli(["test", *common, "--ckpt_path=last", "--trainer.limit_test_batches=1",
                    "--evaluation.test_num_samples=10"])
    assert code == 0
    metrics = json.loads(max((tmp_path / "gan").glob("version_*/eval/*/metrics.json")).read_text())["metrics"]
    assert metrics["fid"]["n_generated"] == 10 and metrics["fid"]["value"] > 0
    assert metrics["nll"]["value"] is None and metrics["nll"]["kind"] == "not available"
    assert "bpd" not in metrics
