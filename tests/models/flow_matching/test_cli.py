"""Every flow-matching config through the lit-gen command (fast_dev_run); a fit -> test -> predict round trip
whose test likelihood is recomputed outside the Trainer and whose metrics.json records how it was computed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ROOT, quiet_trainer_args, run_cli
from tests.models.diffusion.test_cli import FASHION, data_root
from tests.models.recompute import split_nll

CONFIGS = ROOT / "configs" / "flow_matching"
SMALL = ["--model.init_args.backbone.init_args.channels=8", "--data.init_args.batch_size=4",
         "--data.init_args.eval_batch_size=4"]


@pytest.mark.parametrize("name", ["digits", "digits_conditional", "mnist", "fashion_mnist", "cifar10"])
def test_fast_dev_run_of_every_config(name, tmp_path):
    if name == "fashion_mnist" and not Path(FASHION).is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    args = ["fit", "--config", str(CONFIGS / f"{name}.yaml"), *quiet_trainer_args(tmp_path), *SMALL,
            *data_root(name, tmp_path), "--trainer.fast_dev_run=true", "--evaluation.fid=false"]
    if name == "cifar10":
        args.append("--trainer.precision=32-true")  # bf16 autocast on a CPU without bf16 units is slow
    assert run_cli(args) == 0


def test_fit_test_predict_round_trip_of_a_conditional_model(tmp_path):
    config = str(CONFIGS / "digits_conditional.yaml")
    # A fixed-step likelihood solver keeps the test's ODE cheap; the default dopri5 is checked on a closed form.
    common = [*quiet_trainer_args(tmp_path, "fm"), "--model.init_args.backbone.init_args.channels=8",
              "--model.init_args.likelihood_solver=rk4", "--model.init_args.likelihood_steps=3"]
    assert run_cli(["fit", "--config", config, *common, "--trainer.max_epochs=2",
                    "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1",
                    "--evaluation.every_n_epochs=2", "--evaluation.fid=false",
                    "--evaluation.grid_size=8", "--evaluation.sample_batch_size=8"]) == 0
    run = max((tmp_path / "fm").glob("version_*"))
    assert list((run / "samples").glob("val_epoch0001_*.png"))

    assert run_cli(["test", "--config", config, *common, "--ckpt_path=last", "--trainer.limit_test_batches=1",
                    "--data.init_args.eval_batch_size=8", "--evaluation.test_num_samples=8",
                    "--evaluation.sample_batch_size=8", "--evaluation.fid=false", "--evaluation.grid_size=8"]) == 0
    report = json.loads(max((tmp_path / "fm").glob("version_*/eval/*/metrics.json")).read_text())
    nll = report["metrics"]["nll"]
    assert nll["kind"] == "bound" and nll["n"] == 8
    assert {k: nll[k] for k in ("solver", "steps", "divergence", "path")} == {
        "solver": "rk4", "steps": 3, "divergence": "exact", "path": "straight"}
    assert report["metrics"]["sample_nfe"]["value"] == 40  # the config's Heun, 20 steps of 2 evaluations
    assert report["metrics"]["bpd"]["kind"] == "bound" and 0 < report["metrics"]["bpd"]["value"] < 20
    # The test's number is the checkpoint's on the first test batch (dequantization seeded per example).
    recomputed = split_nll(["--config", config, *common, "--data.init_args.eval_batch_size=8"],
                           Path(report["checkpoint"]), num_batches=1)
    assert nll["value"] == pytest.approx(recomputed, rel=1e-6)

    knobs = "{solver: euler, steps: 4, guidance_scale: 3.0}"
    outputs = []
    for attempt in range(2):
        out_dir = tmp_path / f"pred{attempt}"
        assert run_cli(["predict", "--config", config, *common, "--ckpt_path=last",
                        "--data.init_args.predict_num_samples=6", "--data.init_args.eval_batch_size=3",
                        f"--prediction.output_dir={out_dir}", f"--model.init_args.sample_kwargs={knobs}"]) == 0
        outputs.append(np.load(out_dir / "samples.npz")["samples"])
    assert outputs[0].shape == (6, 1, 8, 8) and np.array_equal(outputs[0], outputs[1])


def test_a_bad_solver_in_the_config_fails_at_parse_time(tmp_path, capsys):
    code = run_cli(["fit", "--config", str(CONFIGS / "digits.yaml"), *quiet_trainer_args(tmp_path),
                    "--model.init_args.sample_kwargs={solver: rk5}"])
    assert code == 1
    assert "solver must be one of euler, midpoint, heun, rk4, dopri5, got 'rk5'" in capsys.readouterr().err
    assert not list(tmp_path.rglob("*.ckpt"))


def test_a_sweep_of_cads_noise_at_a_fixed_guidance_scale(tmp_path, capsys):
    """evaluation.sweep_knob turns condition-annealed sampling's noise; its row at 0 is the plain guided
    sampler's (the same FID as a test without CADS), the row at 1 other samples."""
    config = str(CONFIGS / "digits_conditional.yaml")
    common = [*quiet_trainer_args(tmp_path, "cads"), "--model.init_args.backbone.init_args.channels=8",
              "--model.init_args.sample_kwargs={solver: euler, steps: 3, guidance_scale: 2.0}"]
    # No EMA: the config's average starts at step 100 and would evaluate the initial (zero-output) U-Net.
    assert run_cli(["fit", "--config", config, *common, "--trainer.callbacks=[]", "--trainer.max_epochs=1",
                    "--trainer.limit_train_batches=5", "--trainer.limit_val_batches=1",
                    "--evaluation.every_n_epochs=0"]) == 0
    test = ["test", "--config", config, *common, "--ckpt_path=last", "--trainer.limit_test_batches=1",
            "--model.init_args.likelihood_solver=euler", "--model.init_args.likelihood_steps=1",
            "--evaluation.test_num_samples=10", "--evaluation.sample_batch_size=5", "--evaluation.grid_size=5"]
    assert run_cli([*test, "--evaluation.sweep_knob=cads_noise_scale", "--evaluation.sweep=[0.0, 1.0]"]) == 0
    run = max((tmp_path / "cads").glob("version_*")) / "eval" / "last"
    report = json.loads((run / "metrics.json").read_text())
    sweep = report["sweep"]
    assert sweep["knob"] == "cads_noise_scale" and [r["cads_noise_scale"] for r in sweep["rows"]] == [0.0, 1.0]
    assert sweep["rows"][0]["fid"] == pytest.approx(report["metrics"]["fid"]["value"], rel=1e-9)
    assert sweep["rows"][1]["fid"] != sweep["rows"][0]["fid"]
    assert sweep["rows"][0]["sample_nfe"] == 3
    assert len(list(run.glob("sweep_cads_noise_scale_*.png"))) == 2

    capsys.readouterr()
    assert run_cli([*test, "--evaluation.sweep_knob=cads_noise", "--evaluation.sweep=[0.0]"]) == 1
    assert "evaluation.sweep_knob: FlowMatching.sample has no knob 'cads_noise' (did you mean 'cads_noise_scale'?)" \
        in capsys.readouterr().err
