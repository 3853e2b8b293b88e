"""Every latent config through ``lit-gen fit`` (fast_dev_run) on small data files; a second stage's config
runs on a first-stage checkpoint of the data's shape written beside it."""

from __future__ import annotations

from pathlib import Path

import pytest

from lit_gen.models.latent import VQVAE
from tests.conftest import ROOT, quiet_trainer_args, run_cli
from tests.datamodules.conftest import make_idx_set
from tests.models.latent.helpers import save_first_stage

CONFIGS = ROOT / "configs" / "latent"
FAST = ["--trainer.fast_dev_run=true", "--evaluation.fid=false", "--data.init_args.batch_size=4"]
SMALL_FIRST = ["--model.init_args.channels=8", "--model.init_args.code_dim=4", "--model.init_args.num_codes=16"]
SMALL_PRIOR = ["--model.init_args.channels=4", "--model.init_args.num_layers=2", "--model.init_args.head_channels=8"]


def data_args(dataset: str, tmp_path: Path) -> list[str]:
    if dataset == "digits":
        return []
    make_idx_set(tmp_path / "idx", n_train=12, n_test=4)
    return [f"--data.init_args.root={tmp_path / 'idx'}", "--data.init_args.val_size=4"]


def first_stage_for(dataset: str, tmp_path: Path) -> Path:
    shape, levels = ((1, 8, 8), 17) if dataset == "digits" else ((1, 28, 28), 256)
    vqvae = VQVAE(data_shape=shape, num_levels=levels, num_classes=10, num_codes=16, code_dim=4, channels=8,
                  num_downsamples=1 if dataset == "digits" else 2)
    return save_first_stage(vqvae, tmp_path / "first" / "last.ckpt")


@pytest.mark.parametrize("dataset", ["digits", "mnist", "fashion_mnist"])
def test_fast_dev_run_of_the_first_stage(dataset, tmp_path):
    args = ["fit", "--config", str(CONFIGS / f"vqvae_{dataset}.yaml"), *quiet_trainer_args(tmp_path), *FAST,
            *SMALL_FIRST, *data_args(dataset, tmp_path)]
    assert run_cli(args) == 0


@pytest.mark.parametrize("dataset", ["digits", "mnist", "fashion_mnist"])
def test_fast_dev_run_of_the_second_stage(dataset, tmp_path):
    args = ["fit", "--config", str(CONFIGS / f"vqvae_pixelcnn_{dataset}.yaml"), *quiet_trainer_args(tmp_path),
            *FAST, *SMALL_PRIOR, *data_args(dataset, tmp_path),
            f"--model.init_args.first_stage={first_stage_for(dataset, tmp_path)}"]
    assert run_cli(args) == 0


def test_a_second_stage_without_its_first_stage_stops_in_one_line(tmp_path, capsys):
    args = ["fit", "--config", str(CONFIGS / "vqvae_pixelcnn_digits.yaml"), *quiet_trainer_args(tmp_path), *FAST,
            *SMALL_PRIOR]
    assert run_cli(args) == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("lit-gen: error:")]
    assert len(lines) == 1 and "first_stage 'vqvae-digits'" in lines[0] and "fit the first stage" in lines[0], err
    assert "Traceback" not in err
