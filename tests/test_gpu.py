"""Every family on a CUDA GPU: fit in each precision, test and predict from the checkpoint, sample on the device,
exact likelihoods and FID features equal to the CPU's. Skipped where no GPU is visible (CI has none).

``LIT_GEN_TEST_ACCELERATOR=cpu`` runs the same tests on the CPU (fp16 left out: its flag is GPU-only), for
editing them on a machine without a GPU.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest
import torch
from torch import Tensor

from tests.conftest import TINY_FAMILIES, quiet_trainer_args, run_cli

ACCELERATOR = os.environ.get("LIT_GEN_TEST_ACCELERATOR", "gpu")
DEVICE = "cuda" if ACCELERATOR == "gpu" else "cpu"
PRECISIONS = ["32-true", "bf16-mixed", "16-mixed"] if ACCELERATOR == "gpu" else ["32-true", "bf16-mixed"]
pytestmark = pytest.mark.skipif(ACCELERATOR == "gpu" and not torch.cuda.is_available(), reason="no CUDA GPU")

ON_DEVICE = [f"--trainer.accelerator={ACCELERATOR}", "--trainer.devices=1"]
SMALL_EVAL = ["--evaluation.sample_batch_size=8", "--evaluation.grid_size=8", "--evaluation.fid=false"]
# Likelihoods with no Monte Carlo: equal on any device. (The flow's dequantization noise differs between
# devices; its density is compared on fixed inputs below.)
EXACT = ("autoregressive",)


def fit(tmp_path, family: str, precision: str, name: str) -> list[str]:
    """A 3-step fit of the family's tiny digits config on the device; returns its config arguments."""
    config, tiny = TINY_FAMILIES[family]
    base = ["--config", str(config), *tiny]
    assert run_cli(["fit", *base, *quiet_trainer_args(tmp_path, name), *ON_DEVICE, *SMALL_EVAL,
                    f"--trainer.precision={precision}", "--trainer.max_steps=3", "--trainer.limit_val_batches=1",
                    "--evaluation.every_n_epochs=0"]) == 0
    return base


def evaluate(tmp_path, base: list[str], name: str, accelerator: str) -> dict:
    assert run_cli(["test", *base, *quiet_trainer_args(tmp_path, name), f"--trainer.accelerator={accelerator}",
                    "--trainer.devices=1", *SMALL_EVAL, "--evaluation.test_num_samples=8",
                    "--trainer.limit_test_batches=2", f"--ckpt_path={checkpoint(tmp_path)}"]) == 0
    return json.loads(sorted((tmp_path / name).glob("version_*/eval/*/metrics.json"))[-1].read_text())["metrics"]


def checkpoint(tmp_path):
    return next((tmp_path / "fit").glob("version_*/checkpoints/last.ckpt"))


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("family", list(TINY_FAMILIES))
def test_fit_in_each_precision(tmp_path, family, precision):
    fit(tmp_path, family, precision, "fit")
    state = torch.load(checkpoint(tmp_path), map_location="cpu", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


@pytest.mark.parametrize("family", list(TINY_FAMILIES))
def test_test_and_predict_from_a_device_checkpoint(tmp_path, family):
    """The test split's metrics on the device equal the CPU's where the likelihood is exact; elsewhere they are
    finite (Monte Carlo estimates draw different numbers on each device). Predict writes its images."""
    base = fit(tmp_path, family, "32-true", "fit")
    on_device = evaluate(tmp_path, base, "device", ACCELERATOR)
    on_cpu = evaluate(tmp_path, base, "cpu", "cpu")
    assert set(on_device) == set(on_cpu)
    for key, entry in on_device.items():
        assert entry["value"] is None or np.isfinite(entry["value"]), (key, entry)
        if family in EXACT and "kind" in entry:  # the likelihood's entries (not timings or sample metrics)
            assert entry["value"] == pytest.approx(on_cpu[key]["value"], rel=1e-4), key
    out = tmp_path / "predictions"
    assert run_cli(["predict", *base, *quiet_trainer_args(tmp_path, "predict"), *ON_DEVICE,
                    f"--ckpt_path={checkpoint(tmp_path)}", "--data.init_args.predict_num_samples=6",
                    "--data.init_args.batch_size=4", f"--prediction.output_dir={out}"]) == 0
    images = np.load(out / "samples.npz")["images"]
    assert images.shape == (6, 1, 8, 8) and images.dtype == np.uint8


@pytest.mark.parametrize("family", list(TINY_FAMILIES))
def test_sampling_stays_on_the_device_and_is_seeded(family):
    from lit_gen.cli import LitGenCLI

    config, tiny = TINY_FAMILIES[family]
    model = LitGenCLI(args=["--config", str(config), *tiny, "--trainer.logger=false"], run=False).model
    model = model.to(DEVICE).eval()

    def draw(seed: int) -> torch.Tensor:
        with torch.no_grad():
            return model.sample(5, generator=torch.Generator(DEVICE).manual_seed(seed), **model.sample_kwargs)

    first, again, other = draw(0), draw(0), draw(1)
    assert first.device.type == DEVICE and first.shape == (5, 1, 8, 8)
    assert first.min() >= 0 and first.max() <= 1
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("family", ["flow", "autoregressive"])
def test_log_density_on_the_device_equals_the_cpu(family):
    """The same weights and inputs give the same log-density on the device as on the CPU in float64, under
    the full float32 convolutions that validation and test run the likelihood in; trained-looking weights,
    not the zero-initialised outputs. (With cuDNN's default TF32 convolutions an H200 was 1.9e-4 bits/dim
    off for the flow, 2.3e-5 for the PixelCNN: printed, not asserted.)"""
    from lit_gen.cli import LitGenCLI
    from lit_gen.core.numerics import full_float32_convolutions

    config, tiny = TINY_FAMILIES[family]
    model = LitGenCLI(args=["--config", str(config), *tiny, "--trainer.logger=false"], run=False).model.double()
    g = torch.Generator().manual_seed(0)
    levels = torch.randint(0, 17, (32, 1, 8, 8), generator=g).double()
    # The flow's input is dequantized, (level + uniform noise) / 17; the PixelCNN's the levels / 16.
    x = (levels + torch.rand(levels.shape, generator=g, dtype=levels.dtype)) / 17 if family == "flow" else levels / 16
    if family == "flow":
        model.loss(x)  # actnorm's data-dependent initialisation
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    reference = model.eval().log_prob(x)
    model, x = model.float().to(DEVICE), x.float().to(DEVICE)

    def error_in_bits_per_dim(log_prob: Tensor) -> float:
        # The scale of the reported numbers (a log-density near 0 has no relative scale).
        return ((log_prob.double().cpu() - reference).abs() / (x[0].numel() * math.log(2))).max().item()

    with torch.no_grad():
        default = error_in_bits_per_dim(model.log_prob(x))
        with full_float32_convolutions():
            error = error_in_bits_per_dim(model.log_prob(x))
    print(f"{family} on {DEVICE}, float32 vs float64 on the CPU, largest log-density error: {error:.1e} bits/dim "
          f"({default:.1e} with the default convolution precision)")
    assert error < 1e-4, error


def test_inception_features_and_fid_equal_the_cpu():
    """float32 convolutions on the GPU (lit-gen turns cuDNN's TF32 off): the same features as the CPU's."""
    from lit_gen.errors import WeightsNotFoundError
    from lit_gen.evaluation.features import InceptionFeatures
    from lit_gen.evaluation.metrics import fid

    try:
        cpu_net = InceptionFeatures()
    except WeightsNotFoundError:
        pytest.skip("no Inception weights on this machine")
    device_net = InceptionFeatures(cpu_net.weights_path).to(DEVICE)
    g = torch.Generator().manual_seed(0)
    real, fake = torch.rand(24, 1, 28, 28, generator=g), torch.rand(24, 3, 32, 32, generator=g).pow(2)
    cpu_real, cpu_fake = cpu_net(real), cpu_net(fake)
    device_real, device_fake = device_net(real), device_net(fake)
    assert device_real.device.type == DEVICE
    relative = (device_real.cpu() - cpu_real).norm() / cpu_real.norm()
    assert relative < 1e-4, relative
    assert fid(device_real, device_fake) == pytest.approx(fid(cpu_real, cpu_fake), rel=1e-4)


def test_fit_with_fid_evaluation_on_the_device(tmp_path):
    """The evaluation callback samples on the device and embeds real and generated images there."""
    from lit_gen.errors import WeightsNotFoundError
    from lit_gen.evaluation.features import resolve_inception_weights

    try:
        resolve_inception_weights()
    except WeightsNotFoundError:
        pytest.skip("no Inception weights on this machine")
    config, tiny = TINY_FAMILIES["diffusion"]
    assert run_cli(["fit", "--config", str(config), *tiny, *quiet_trainer_args(tmp_path, "eval"), *ON_DEVICE,
                    "--trainer.max_epochs=1", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
                    "--trainer.check_val_every_n_epoch=1", "--checkpoint.monitor=null",
                    "--evaluation.every_n_epochs=1", "--evaluation.val_num_samples=16", "--evaluation.num_real=16",
                    "--evaluation.sample_batch_size=8", "--evaluation.grid_size=8"]) == 0
    run = next((tmp_path / "eval").glob("version_*"))
    assert list((run / "samples").glob("val_*.png"))
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run)).Reload()
    fids = [e.value for e in events.Scalars("val/fid")]
    assert fids and all(np.isfinite(fids))
