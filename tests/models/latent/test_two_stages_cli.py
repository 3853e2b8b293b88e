"""The two commands in order, as a user runs them: a first stage trained for a few steps, a second stage
that finds it by its run name and trains on it, then ``test`` and ``predict`` from the second stage's
checkpoint alone (the first stage's run moved away)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.conftest import ROOT, quiet_trainer_args, run_cli

CONFIGS = ROOT / "configs" / "latent"
FIRST = ["--config", str(CONFIGS / "vqvae_digits.yaml"), "--model.init_args.channels=8",
         "--model.init_args.code_dim=4", "--model.init_args.num_codes=16", "--model.init_args.restart_every=2"]
SECOND = ["--config", str(CONFIGS / "vqvae_pixelcnn_digits.yaml"), "--model.init_args.channels=4",
          "--model.init_args.num_layers=2", "--model.init_args.head_channels=8",
          "--model.init_args.conditional=true"]
SHORT = ["--trainer.max_epochs=1", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1"]
SAMPLES = ["--evaluation.fid=false", "--evaluation.grid_size=4", "--evaluation.sample_batch_size=4"]


def quiet(tmp_path, name: str) -> list[str]:
    # each config's own run name, both under one save_dir: as `lit-gen fit` leaves them in runs/
    return [arg for arg in quiet_trainer_args(tmp_path / "runs", name) if "logger.init_args.name" not in arg]


def metrics(run_root) -> dict:
    return json.loads(max(run_root.glob("version_*/eval/*/metrics.json")).read_text())["metrics"]


def test_first_stage_then_second_stage_then_test_and_predict_from_its_checkpoint_alone(tmp_path):
    runs = tmp_path / "runs"
    assert run_cli(["fit", *FIRST, *quiet(tmp_path, "first"), *SHORT]) == 0
    assert (runs / "vqvae-digits" / "version_0" / "checkpoints" / "last.ckpt").is_file()
    assert run_cli(["test", *FIRST, *quiet(tmp_path, "first"), "--ckpt_path=last",
                    "--trainer.limit_test_batches=1"]) == 0
    first = metrics(runs / "vqvae-digits")
    assert first["nll"]["kind"] == "not available" and first["nll"]["value"] is None
    assert first["recon_nats"]["unit"] == "nats" and first["recon_nats"]["value"] > 0
    assert 1 <= first["perplexity"]["value"] <= 16

    # first_stage: vqvae-digits (the config's) is found under the same save_dir
    assert run_cli(["fit", *SECOND, *quiet(tmp_path, "second"), *SHORT, "--evaluation.every_n_epochs=1",
                    "--evaluation.val_num_samples=4", *SAMPLES]) == 0
    second_run = runs / "vqvae-pixelcnn-digits"
    assert list((second_run / "version_0" / "samples").glob("val_*.png"))

    (runs / "vqvae-digits").rename(tmp_path / "elsewhere")  # only the second stage's checkpoint is left
    assert run_cli(["test", *SECOND, *quiet(tmp_path, "second"), "--ckpt_path=last",
                    "--trainer.limit_test_batches=1", "--evaluation.test_num_samples=4", *SAMPLES]) == 0
    result = metrics(second_run)
    assert result["nll"]["kind"] == "bound" and result["bpd"]["kind"] == "bound" and result["nll"]["n"] == 64
    # the test split's mean nll is the mean reconstruction nats plus the mean prior nats
    assert result["nll"]["value"] == pytest.approx(result["recon_nats"]["value"] + result["prior_nats"]["value"],
                                                   rel=1e-6)
    assert result["bpd"]["value"] == pytest.approx(result["nll"]["value"] / (64 * math.log(2)))
    assert 0 < result["recon_nats"]["value"] < 2 * 64 * math.log(17)

    out = tmp_path / "predicted"
    assert run_cli(["predict", *SECOND, *quiet(tmp_path, "second"), "--ckpt_path=last",
                    "--data.init_args.predict_num_samples=6", "--data.init_args.eval_batch_size=3",
                    f"--prediction.output_dir={out}"]) == 0
    written = np.load(out / "samples.npz")
    samples = written["samples"].astype(np.float64)  # data space [0, 1]
    assert samples.shape == (6, 1, 8, 8) and np.allclose(samples * 16, np.round(samples * 16))  # 17 levels
    assert written["labels"].tolist() == [0, 1, 2, 3, 4, 5]  # conditional: balanced labels by default
