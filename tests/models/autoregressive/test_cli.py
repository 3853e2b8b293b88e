"""Every autoregressive config runs through ``lit-gen fit`` (fast_dev_run) on small data files; a short
fit + test on digits reports the NLL as exact in metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, quiet_trainer_args, run_cli
from tests.datamodules.conftest import make_idx_set, write_cifar_batch
from tests.models.recompute import split_nll

CONFIGS = ROOT / "configs" / "autoregressive"
FAST = ["--trainer.fast_dev_run=true", "--evaluation.fid=false"]
# Exercise sampling through the evaluation callback in the fast run too (a few samples).
SAMPLE = ["--evaluation.every_n_epochs=1", "--evaluation.grid_size=4", "--evaluation.sample_batch_size=4"]


def fit(config: str, tmp_path, extra: list[str]) -> int:
    return run_cli(
        [
            "fit",
            "--config",
            str(CONFIGS / config),
            *quiet_trainer_args(tmp_path),
            f"--trainer.default_root_dir={tmp_path}",
            *FAST,
            *extra,
        ]
    )


def test_fast_dev_run_digits(tmp_path):
    assert fit("digits.yaml", tmp_path, SAMPLE) == 0


def test_fast_dev_run_digits_class_conditional(tmp_path):
    assert fit("digits.yaml", tmp_path, ["--model.init_args.conditional=true", *SAMPLE]) == 0


def test_fast_dev_run_made_on_toy_2d(tmp_path):
    assert (
        fit(
            "made_toy.yaml",
            tmp_path,
            [
                "--data.init_args.num_train=512",
                "--evaluation.every_n_epochs=1",
                "--evaluation.grid_size=64",
                "--evaluation.sample_batch_size=64",
            ],
        )
        == 0
    )


@pytest.mark.parametrize("config", ["mnist.yaml", "fashion_mnist.yaml"])
def test_fast_dev_run_idx_configs(tmp_path, config):
    make_idx_set(tmp_path / "idx", n_train=12, n_test=4)
    assert (
        fit(
            config,
            tmp_path,
            [
                f"--data.init_args.root={tmp_path / 'idx'}",
                "--data.init_args.val_size=4",
                "--data.init_args.batch_size=4",
            ],
        )
        == 0
    )


def test_fast_dev_run_cifar10(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_batch(folder / name, rng.integers(0, 256, (2, 3072), dtype=np.uint8), [0, 1])
    # The config's width is for GPUs; a narrower net keeps the CPU test quick with the same wiring.
    assert (
        fit(
            "cifar10.yaml",
            tmp_path,
            [
                f"--data.init_args.root={tmp_path / 'cifar'}",
                "--data.init_args.val_size=2",
                "--data.init_args.batch_size=2",
                "--model.init_args.channels=24",
                "--model.init_args.num_layers=3",
                "--model.init_args.head_channels=24",
            ],
        )
        == 0
    )


def test_fit_then_test_reports_an_exact_nll(tmp_path):
    common = [
        "--config",
        str(CONFIGS / "digits.yaml"),
        *quiet_trainer_args(tmp_path, "ar"),
        "--model.init_args.channels=8",
        "--model.init_args.num_layers=2",
        "--model.init_args.head_channels=8",
    ]
    assert (
        run_cli(
            [
                "fit",
                *common,
                "--trainer.max_epochs=1",
                "--trainer.limit_train_batches=2",
                "--trainer.limit_val_batches=1",
                "--evaluation.every_n_epochs=0",
            ]
        )
        == 0
    )
    assert (
        run_cli(
            [
                "test",
                *common,
                "--ckpt_path=last",
                "--trainer.limit_test_batches=1",
                "--evaluation.fid=false",
                "--evaluation.grid_size=4",
                "--evaluation.sample_batch_size=4",
            ]
        )
        == 0
    )
    report = json.loads(max((tmp_path / "ar").glob("version_*/eval/*/metrics.json")).read_text())
    metrics = report["metrics"]
    assert metrics["nll"]["kind"] == "exact" and metrics["bpd"]["kind"] == "exact"
    assert metrics["bpd"]["value"] == pytest.approx(metrics["nll"]["value"] / (64 * np.log(2)))
    assert 0 < metrics["bpd"]["value"] < np.log2(17) + 0.5  # near-uniform after two steps, never negative
    # The number is the checkpoint's nll on the test split's first batch, recomputed outside the Trainer.
    assert metrics["nll"]["n"] == 64
    recomputed = split_nll(common, Path(report["checkpoint"]), num_batches=1)
    assert metrics["nll"]["value"] == pytest.approx(recomputed, rel=1e-6)
