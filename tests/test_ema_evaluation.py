"""Evaluation with an EMA callback scores the averaged weights (validation metrics, samples, test), a stop
during validation saves the raw weights beside the average, and non-finite samples are an error."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import WeightAveraging
from lightning.pytorch.utilities.exceptions import SIGTERMException

from lit_gen.core.requests import draw_samples
from lit_gen.models.factorized import FactorizedCategorical
from lit_gen.models.vae import VAE
from tests.conftest import ROOT, quiet_trainer_args, run_cli
from tests.models.recompute import split_nll

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
TINY_VAE = ["--model.init_args.channels=8", "--model.init_args.latent_dim=4", "--model.init_args.iwae_samples=5",
            "--model.init_args.val_iwae_samples=3"]
# decay 0.5: the average is far from the raw weights after a few steps, so using one for the other shows.
EMA = """
trainer:
  callbacks:
    - class_path: lit_gen.averaging.EMAWeightAveraging
      init_args: {decay: 0.5}
"""


def config_args(tmp_path: Path, name: str) -> list[str]:
    ema = tmp_path / "ema.yaml"
    ema.write_text(EMA)
    return ["--config", QUICKSTART, "--config", str(ema), *quiet_trainer_args(tmp_path, name), *TINY_VAE,
            "--trainer.max_epochs=2", "--trainer.limit_train_batches=3", "--trainer.num_sanity_val_steps=0",
            "--evaluation.every_n_epochs=1", "--evaluation.val_num_samples=0", "--evaluation.grid_size=8",
            "--evaluation.sample_batch_size=8", "--evaluation.fid=false"]


def ema_callback(trainer: L.Trainer) -> WeightAveraging:
    return next(c for c in trainer.callbacks if isinstance(c, WeightAveraging))


def weights(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class RecordValidation(L.Callback):
    """val/nll and val/loss after each validation epoch (every hook of it has run by on_validation_end)."""

    def __init__(self) -> None:
        self.metrics: list[dict[str, float]] = []

    def on_validation_end(self, trainer, pl_module) -> None:
        self.metrics.append({k: float(trainer.callback_metrics[k]) for k in ("val/nll", "val/loss")})


def test_validation_samples_and_test_use_the_averaged_weights(tmp_path, monkeypatch):
    """During fit, the samples the evaluation callback draws and val/nll are those of a model holding the
    checkpoint's ``state_dict`` (the average), not its ``current_model_state`` (the raw weights); ``lit-gen
    test`` of that checkpoint reports the average's test NLL and draws the average's samples."""
    from lit_gen.cli import LitGenCLI

    drawn: list[tuple[str, torch.Tensor]] = []
    original = VAE.sample

    def recording_sample(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        drawn.append((self.trainer.state.stage.value if self._trainer is not None else "", out.clone()))
        return out

    monkeypatch.setattr(VAE, "sample", recording_sample)
    args = [*config_args(tmp_path, "ema"), "--trainer.limit_val_batches=1"]
    cli = LitGenCLI(args=args, run=False)
    record = RecordValidation()
    cli.trainer.callbacks.append(record)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    last = Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt"
    state = torch.load(last, weights_only=True)
    assert state["global_step"] == 6 and "averaging_state" in state  # saved right after the last validation
    assert any(not torch.equal(state["state_dict"][k], state["current_model_state"][k]) for k in state["state_dict"])
    fit_samples = [x for stage, x in drawn if stage == "validate"]
    assert len(fit_samples) == 2 and len(record.metrics) == 2

    def model_with(entry: str) -> VAE:
        model = LitGenCLI(args=args, run=False).model.eval()
        model.load_state_dict(state[entry])
        return model

    average, raw = model_with("state_dict"), model_with("current_model_state")
    expected = draw_samples(average, 0, 8, 0, {})  # evaluation.seed 0, the first chunk of 8
    assert torch.equal(fit_samples[-1], expected)
    assert not torch.equal(draw_samples(raw, 0, 8, 0, {}), expected), "the raw weights draw other samples"
    val = {entry: split_nll(args, last, 1, split="val", weights=entry) for entry in ("state_dict", "current_model_state")}
    assert record.metrics[-1]["val/nll"] == pytest.approx(val["state_dict"], rel=1e-6)
    assert val["current_model_state"] != pytest.approx(val["state_dict"], rel=1e-3)

    drawn.clear()
    assert run_cli(["test", *args, "--ckpt_path=last", "--trainer.limit_test_batches=1"]) == 0
    metrics = json.loads((last.parent.parent / "eval" / "last" / "metrics.json").read_text())["metrics"]
    test_nll = {entry: split_nll(args, last, 1, weights=entry) for entry in ("state_dict", "current_model_state")}
    assert metrics["nll"]["value"] == pytest.approx(test_nll["state_dict"], rel=1e-6)
    assert test_nll["current_model_state"] != pytest.approx(test_nll["state_dict"], rel=1e-3)
    assert torch.equal(next(x for stage, x in drawn if stage == "test"), expected)


class SigtermInValidation(L.Callback):
    """Snapshot the raw weights and the average after every training batch (after the EMA's update: this
    callback comes last), and SIGTERM this process after validation batch ``batch``."""

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.raw = self.average = None
        self.validating_when_stopped = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.raw = weights(pl_module)
        self.average = weights(ema_callback(trainer)._average_model.module)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if batch_idx == self.batch:
            os.kill(os.getpid(), signal.SIGTERM)

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.validating_when_stopped = trainer.validating


@pytest.mark.parametrize("batch", [0, 1], ids=["mid-validation", "last-validation-batch"])
def test_a_sigterm_during_validation_saves_the_raw_weights_and_the_average(tmp_path, batch):
    """What Lightning does with a SIGTERM that lands in epoch 0's validation (two batches): after batch 0 it
    stops at that evaluation batch boundary, inside the validation loop, with the average swapped into the
    module (the checkpoint's epoch is still 0); after the last batch the validation ends (and swaps back),
    the epoch completes and the stop comes at the epoch boundary (epoch 1 in the checkpoint). Either way
    last.ckpt holds, bit for bit, the raw weights of the last training step as ``current_model_state`` and
    the average as ``state_dict``."""
    from lit_gen.cli import LitGenCLI

    cli = LitGenCLI(args=[*config_args(tmp_path, "stop"), "--trainer.limit_val_batches=2"], run=False)
    probe = SigtermInValidation(batch)
    cli.trainer.callbacks.append(probe)
    with pytest.raises(SIGTERMException):
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert probe.validating_when_stopped is (batch == 0)
    state = torch.load(Path(cli.trainer.log_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    assert state["global_step"] == 3 and state["epoch"] == (0 if batch == 0 else 1)
    assert state["current_model_state"].keys() == probe.raw.keys() == state["state_dict"].keys()
    for name in probe.raw:
        assert torch.equal(state["current_model_state"][name], probe.raw[name]), name
        assert torch.equal(state["state_dict"][name], probe.average[name]), name
    assert any(not torch.equal(probe.raw[k], probe.average[k]) for k in probe.raw), "the test needs them apart"
    assert int(state["averaging_state"]["n_averaged"]) == 3


class NaNSampler(FactorizedCategorical):
    """The factorized baseline with one NaN pixel in every sample: a sampler that diverged somewhere."""

    def sample(self, num_samples, *, labels=None, generator=None, temperature=1.0):
        x = super().sample(num_samples, generator=generator, temperature=temperature)
        x[:, 0, 0, 0] = float("nan")
        return x


def test_non_finite_samples_stop_the_evaluation_with_one_line(tmp_path, capsys):
    config = tmp_path / "nan.yaml"
    config.write_text("""
model:
  class_path: tests.test_ema_evaluation.NaNSampler
data:
  class_path: lit_gen.datamodules.DigitsDataModule
evaluation:
  every_n_epochs: 1
  fid: false
  grid_size: 4
  sample_batch_size: 4
""")
    code = run_cli(["validate", "--config", str(config), *quiet_trainer_args(tmp_path), "--ckpt_path=none",
                    "--trainer.limit_val_batches=1"])
    assert code == 1
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("lit-gen: error:")]
    assert lines == ["lit-gen: error: NaNSampler.sample() returned non-finite values"], err

