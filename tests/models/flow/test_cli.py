"""Every flow config through the lit-gen command: fast_dev_run fit on small files in the dataset's format."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, quiet_trainer_args, run_cli
from tests.datamodules.conftest import make_idx_set, write_cifar_batch
from tests.models.recompute import split_nll

CONFIGS = ROOT / "configs" / "flow"


def cifar_files(root):
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_batch(folder / name, rng.integers(0, 256, (4, 3072), dtype=np.uint8), [0, 1, 2, 3])


def data_args(config: str, root) -> list[str]:
    """Small data for the config: digits are bundled; the others get tiny files in ``root``."""
    if config == "digits":
        return []
    if config == "cifar10":
        cifar_files(root)
    else:
        make_idx_set(root, n_train=12, n_test=4)
    return [f"--data.init_args.root={root}", "--data.init_args.val_size=4", "--data.init_args.batch_size=4"]


@pytest.mark.parametrize("config", ["digits", "mnist", "fashion_mnist", "cifar10", "realnvp_mnist"])
def test_fast_dev_run(config, tmp_path):
    args = ["fit", "--config", str(CONFIGS / f"{config}.yaml"), *quiet_trainer_args(tmp_path / "runs"),
            *data_args(config, tmp_path / "data"), "--trainer.fast_dev_run=true", "--evaluation.fid=false"]
    assert run_cli(args) == 0


def test_bad_choice_is_rejected_at_parse_time(capsys, tmp_path):
    code = run_cli(["fit", "--config", str(CONFIGS / "digits.yaml"), *quiet_trainer_args(tmp_path),
                    "--model.init_args.dequantization=gaussianish", "--trainer.fast_dev_run=true"])
    assert code != 0 and "gaussianish" in capsys.readouterr().err


@pytest.mark.parametrize("dequantization,kind", [("variational", "bound"), ("uniform", "exact")])
def test_fit_then_test_reports_the_configured_likelihood_kind(dequantization, kind, tmp_path):
    config = ["--config", str(CONFIGS / "digits.yaml"), *quiet_trainer_args(tmp_path, "flow"),
              f"--model.init_args.dequantization={dequantization}", "--evaluation.fid=false",
              "--evaluation.grid_size=0"]
    assert run_cli(["fit", *config, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                    "--trainer.limit_val_batches=1"]) == 0
    assert run_cli(["test", *config, "--ckpt_path=last", "--trainer.limit_test_batches=1"]) == 0
    report = json.loads(sorted((tmp_path / "flow").glob("version_*/eval/*/metrics.json"))[-1].read_text())
    metrics = report["metrics"]
    assert metrics["nll"]["kind"] == kind and metrics["bpd"]["kind"] == kind
    assert metrics["bpd"]["value"] == pytest.approx(metrics["nll"]["value"] / (64 * math.log(2)))
    assert 0 < metrics["bpd"]["value"] < math.log2(17) + 1, "an untrained flow is near the uniform 4.09 bits"
    # The number is the checkpoint's nll (its dequantization noise seeded per example) on the test split's
    # first batch, recomputed outside the Trainer.
    assert metrics["nll"]["n"] == 64
    recomputed = split_nll(config, Path(report["checkpoint"]), num_batches=1)
    assert metrics["nll"]["value"] == pytest.approx(recomputed, rel=1e-6)
