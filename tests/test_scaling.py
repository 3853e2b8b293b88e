"""The same YAML on more processes and in mixed precision: trainer configs, DDP equivalence, bf16."""

from __future__ import annotations

import json

import pytest
import torch

from tests.conftest import ROOT, TINY_FAMILIES, quiet_trainer_args, run_cli

TRAINER_CONFIGS = ROOT / "configs" / "trainer"
DDP_CPU = ["--trainer.strategy=ddp_spawn", "--trainer.devices=2", "--trainer.accelerator=cpu"]
NO_EVAL = ["--evaluation.every_n_epochs=0"]


@pytest.mark.parametrize("name, expected", [
    ("cpu", {"accelerator": "cpu", "devices": 1, "precision": "32-true"}),
    ("gpu", {"accelerator": "gpu", "devices": 1, "precision": "32-true"}),
    ("ddp", {"accelerator": "gpu", "devices": -1, "strategy": "ddp"}),
    ("bf16", {"precision": "bf16-mixed"}),
    ("multinode", {"accelerator": "gpu", "devices": 4, "num_nodes": 2, "strategy": "ddp"}),
])
def test_trainer_configs_compose_with_a_model_config(name, expected, capsys):
    """A trainer file changes how the run is executed and nothing else: the model config's EMA callback,
    logger and model survive it."""
    model_config = ROOT / "configs" / "diffusion" / "mnist.yaml"
    assert run_cli(["fit", "--config", str(model_config), "--config", str(TRAINER_CONFIGS / f"{name}.yaml"),
                    "--print_config"]) == 0
    import yaml

    config = yaml.safe_load(capsys.readouterr().out)
    trainer = config["trainer"]
    for key, value in expected.items():
        assert trainer[key] == value, key
    assert any("EMAWeightAveraging" in c["class_path"] for c in trainer["callbacks"])
    assert trainer["logger"]["init_args"]["name"] == "diffusion-mnist"
    assert config["model"]["class_path"] == "lit_gen.models.diffusion.Diffusion"


def test_cpu_and_bf16_trainer_configs_run(tmp_path):
    config, tiny = TINY_FAMILIES["vae"]
    assert run_cli(["fit", "--config", str(config), "--config", str(TRAINER_CONFIGS / "cpu.yaml"),
                    "--config", str(TRAINER_CONFIGS / "bf16.yaml"), *quiet_trainer_args(tmp_path), *tiny,
                    *NO_EVAL, "--trainer.fast_dev_run=true"]) == 0


@pytest.mark.parametrize("family", list(TINY_FAMILIES))
def test_bf16_mixed_fit_for_every_family(tmp_path, family):
    config, tiny = TINY_FAMILIES[family]
    assert run_cli(["fit", "--config", str(config), *quiet_trainer_args(tmp_path), *tiny, *NO_EVAL,
                    "--trainer.precision=bf16-mixed", "--trainer.fast_dev_run=true"]) == 0


@pytest.mark.parametrize("family", list(TINY_FAMILIES))
def test_16_mixed_fit_for_every_family(tmp_path, family):
    """16-mixed = fp16 autocast + a GradScaler. Lightning's ``precision: 16-mixed`` flag is GPU-only, so the
    same plugin is built for the CPU here: the scaled backward, unscaling, skipped steps and (GAN) manual
    optimization all run for real."""
    config, tiny = TINY_FAMILIES[family]
    fp16 = TRAINER_CONFIGS / "fp16_cpu.yaml"
    assert run_cli(["fit", "--config", str(config), "--config", str(fp16), *quiet_trainer_args(tmp_path),
                    *tiny, *NO_EVAL, "--trainer.max_steps=3", "--trainer.limit_val_batches=1"]) == 0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("family", ["vae", "autoregressive", "flow", "diffusion"])
def test_mixed_precision_nll_matches_float32(family, dtype):
    """Networks may run in bf16 / fp16; likelihood terms and log-dets stay float32/64, so the NLL barely
    moves. (The 16-mixed training path, with its loss scaler, is fitted by test_16_mixed_fit_for_every_family.)

    Weights are perturbed away from their initialisation first: zero-initialised output layers (flows,
    diffusion) would make the comparison trivially exact.
    """
    from lit_gen.cli import LitGenCLI

    config, tiny = TINY_FAMILIES[family]
    cli = LitGenCLI(args=["--config", str(config), *tiny, "--trainer.enable_progress_bar=false"], run=False)
    model, data = cli.model.eval(), cli.datamodule
    x, _ = next(iter(data.val_dataloader()))
    if family == "flow":
        model.loss(x)  # actnorm's data-dependent initialisation
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    kwargs = model.eval_nll_kwargs("test")
    torch.manual_seed(0)
    full = model.nll(x, None, **kwargs).nats
    with torch.autocast("cpu", dtype=dtype):
        torch.manual_seed(0)
        mixed = model.nll(x, None, **kwargs).nats
    assert full.dtype == mixed.dtype == torch.float64
    assert torch.isfinite(mixed).all()
    # bf16 has 8 significand bits (0.4% per value); a bf16 sum over the 64 dims would be off by ~0.5 nats.
    relative = ((mixed - full).abs() / full.abs()).mean().item()
    assert relative < 2e-3, relative


@pytest.mark.parametrize("family", list(TINY_FAMILIES))
def test_two_process_fit_for_every_family(tmp_path, family):
    config, tiny = TINY_FAMILIES[family]
    # ddp_spawn pickles the trainer's callbacks, and Lightning's EMAWeightAveraging holds a local function
    # that cannot be pickled; the `ddp` strategy users run (a process per device) does not pickle them.
    no_ema = ["--trainer.callbacks=[]"] if family in ("diffusion", "gan") else []
    assert run_cli(["fit", "--config", str(config), *quiet_trainer_args(tmp_path), *tiny, *NO_EVAL, *DDP_CPU, *no_ema,
                    "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                    "--trainer.limit_val_batches=1"]) == 0
    assert list((tmp_path / "test").glob("version_*/checkpoints/last.ckpt"))


def test_one_and_two_processes_report_the_same_metrics(tmp_path):
    """Same checkpoint, test split and seeds: 1 and 2 processes give the same NLL, bpd and FID.

    Under DDP each example of the split is evaluated exactly once, and the FID's sample set is made of
    the same seeded chunks whichever rank draws them. The autoregressive NLL is exact (no Monte Carlo).
    """
    config, tiny = TINY_FAMILIES["autoregressive"]
    # An odd split: Lightning's default DistributedSampler would pad it with a repeated example.
    base = ["--config", str(config), *tiny, "--data.init_args.test_size=301"]
    assert run_cli(["fit", *base, *quiet_trainer_args(tmp_path, "fit"), *NO_EVAL, "--trainer.max_epochs=1",
                    "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1"]) == 0
    ckpt = next((tmp_path / "fit").glob("version_*/checkpoints/last.ckpt"))
    evaluation = ["--evaluation.test_num_samples=12", "--evaluation.sample_batch_size=4", "--evaluation.num_real=12",
                  "--evaluation.kid=true", "--evaluation.kid_subset_size=6", "--evaluation.kid_subsets=10",
                  "--evaluation.precision_recall=true", f"--ckpt_path={ckpt}"]
    reports = {}
    for name, devices in (("one", []), ("two", DDP_CPU)):
        assert run_cli(["test", *base, *quiet_trainer_args(tmp_path, name), *evaluation, *devices]) == 0
        reports[name] = json.loads(next((tmp_path / name).glob("version_*/metrics.json")).read_text())["metrics"]
    one, two = reports["one"], reports["two"]
    assert one["nll"]["n"] == two["nll"]["n"] == 301
    for key in ("nll", "bpd", "fid", "kid_mean", "precision", "recall"):
        assert two[key]["value"] == pytest.approx(one[key]["value"], rel=1e-5, abs=1e-6), key



def test_gradient_accumulation_and_clipping_from_yaml(tmp_path):
    """Trainer-level: 4 batches accumulated 2 at a time are 2 optimizer steps, with clipping on."""
    config, tiny = TINY_FAMILIES["vae"]
    assert run_cli(["fit", "--config", str(config), *quiet_trainer_args(tmp_path), *tiny, *NO_EVAL,
                    "--trainer.max_epochs=1", "--trainer.limit_train_batches=4", "--trainer.limit_val_batches=1",
                    "--trainer.accumulate_grad_batches=2", "--trainer.gradient_clip_val=0.5"]) == 0
    ckpt = torch.load(next((tmp_path / "test").glob("version_*/checkpoints/last.ckpt")), weights_only=True)
    assert ckpt["global_step"] == 2
