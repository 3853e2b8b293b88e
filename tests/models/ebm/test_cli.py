"""Every EBM config through the lit-gen command (fast_dev_run), sampling inside the validation loop."""

from __future__ import annotations

import pytest

from tests.conftest import ROOT, quiet_trainer_args, run_cli
from tests.models.gan.test_cli import data_args

CONFIGS = ROOT / "configs" / "ebm"
FAST = ["--trainer.fast_dev_run=true", "--evaluation.fid=false"]
TINY = ["--model.init_args.channels=4", "--model.init_args.langevin_steps=2", "--model.init_args.buffer_size=16"]


@pytest.mark.parametrize("config", ["digits", "mnist", "fashion_mnist", "cifar10"])
def test_fast_dev_run_of_every_config(tmp_path, config):
    args = ["fit", "--config", str(CONFIGS / f"{config}.yaml"), *quiet_trainer_args(tmp_path), *FAST, *TINY,
            *data_args(config, tmp_path)]
    assert run_cli(args) == 0


@pytest.mark.parametrize("init", ["noise", "buffer"])
def test_fast_dev_run_samples_during_validation(tmp_path, init):
    # every_n_epochs=1 draws a grid inside Lightning's validation loop (inference mode): Langevin needs grads.
    args = ["fit", "--config", str(CONFIGS / "digits.yaml"), *quiet_trainer_args(tmp_path), *FAST, *TINY,
            "--evaluation.every_n_epochs=1", "--evaluation.grid_size=8",
            f"--model.init_args.sample_kwargs={{init: {init}, steps: 3}}"]
    assert run_cli(args) == 0


def test_conditional_ebm_is_refused(tmp_path, capsys):
    args = ["fit", "--config", str(CONFIGS / "digits.yaml"), *quiet_trainer_args(tmp_path), *FAST,
            "--model.init_args.conditional=true"]
    assert run_cli(args) == 1
    assert "unconditional" in capsys.readouterr().err
