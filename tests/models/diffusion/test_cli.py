"""Every diffusion config through the lit-gen command (fast_dev_run); a fit -> test -> predict round trip."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, quiet_trainer_args, run_cli
from tests.datamodules.conftest import make_idx_set, write_cifar_batch
from tests.models.recompute import split_nll

CONFIGS = ROOT / "configs" / "diffusion"
FASHION = "/usr/share/datasets/fashion-mnist"
# Shrink the networks, not the configs' structure: one step of each configured model, in seconds.
SMALL = ["--model.init_args.backbone.init_args.channels=8", "--data.init_args.batch_size=4",
         "--data.init_args.eval_batch_size=4", "--model.init_args.val_vlb_terms=3"]


def data_root(name: str, tmp_path) -> list[str]:
    if name in ("mnist", "cfg_mnist"):
        make_idx_set(tmp_path / "idx", n_train=12, n_test=4)
        return [f"--data.init_args.root={tmp_path / 'idx'}", "--data.init_args.val_size=4"]
    if name == "cifar10":
        folder = tmp_path / "cifar" / "cifar-10-batches-py"
        rng = np.random.default_rng(0)
        for batch in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
            write_cifar_batch(folder / batch, rng.integers(0, 256, (4, 3072), dtype=np.uint8), [0, 1, 2, 3])
        return [f"--data.init_args.root={tmp_path / 'cifar'}", "--data.init_args.val_size=4"]
    if name == "fashion_mnist":
        return [f"--data.init_args.root={tmp_path / 'nowhere'}"]  # falls back to Debian's package
    return []


@pytest.mark.parametrize("name", ["digits", "mnist", "fashion_mnist", "cifar10", "cfg_mnist"])
def test_fast_dev_run_of_every_config(name, tmp_path):
    if name == "fashion_mnist" and not Path(FASHION).is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    args = ["fit", "--config", str(CONFIGS / f"{name}.yaml"), *quiet_trainer_args(tmp_path), *SMALL,
            *data_root(name, tmp_path), "--trainer.fast_dev_run=true", "--evaluation.fid=false"]
    if name == "cifar10":
        args.append("--trainer.precision=32-true")  # bf16 autocast on a CPU without bf16 units is slow
    assert run_cli(args) == 0


def test_fit_test_predict_round_trip_of_a_conditional_model(tmp_path):
    """Train two short epochs, test (the bound with every term, its kind in metrics.json), then predict with
    DDIM and classifier-free guidance from the command line, twice, with the same samples."""
    config = str(CONFIGS / "digits.yaml")
    common = [*quiet_trainer_args(tmp_path, "diff"), "--model.init_args.backbone.init_args.channels=8",
              "--model.init_args.num_timesteps=20", "--model.init_args.conditional=true"]
    assert run_cli(["fit", "--config", config, *common, "--trainer.max_epochs=2",
                    "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1",
                    "--trainer.check_val_every_n_epoch=1",
                    "--evaluation.every_n_epochs=2", "--evaluation.fid=false",
                    "--evaluation.grid_size=8", "--evaluation.sample_batch_size=8"]) == 0
    run = max((tmp_path / "diff").glob("version_*"))
    assert list((run / "samples").glob("val_epoch0001_*.png"))

    assert run_cli(["test", "--config", config, *common, "--ckpt_path=last", "--trainer.limit_test_batches=1",
                    "--evaluation.test_num_samples=8", "--evaluation.sample_batch_size=8",
                    "--evaluation.fid=false",
                    "--evaluation.grid_size=8"]) == 0
    report = json.loads(max((tmp_path / "diff").glob("version_*/eval/*/metrics.json")).read_text())
    metrics = report["metrics"]
    assert metrics["nll"]["kind"] == "bound" and metrics["bpd"]["kind"] == "bound"
    assert metrics["nll"]["n"] == 64 and 0 < metrics["bpd"]["value"] < 20
    # The bound is the checkpoint's (every term, x_t seeded per example, labels of the data) on the test
    # split's first batch, recomputed outside the Trainer.
    recomputed = split_nll(["--config", config, *common], Path(report["checkpoint"]), num_batches=1)
    assert metrics["nll"]["value"] == pytest.approx(recomputed, rel=1e-6)

    knobs = "{sampler: ddim, steps: 5, eta: 0.0, guidance_scale: 2.0}"
    outputs = []
    for attempt in range(2):
        out_dir = tmp_path / f"pred{attempt}"
        assert run_cli(["predict", "--config", config, *common, "--ckpt_path=last",
                        "--data.init_args.predict_num_samples=6", "--data.init_args.eval_batch_size=3",
                        f"--prediction.output_dir={out_dir}",
                        f"--model.init_args.sample_kwargs={knobs}"]) == 0
        outputs.append(np.load(out_dir / "samples.npz")["samples"])
    assert outputs[0].shape == (6, 1, 8, 8) and np.array_equal(outputs[0], outputs[1])
