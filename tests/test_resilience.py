"""No run loses work: exact resume, SIGTERM checkpoints, NaN losses, checkpoints that carry code."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, TINY_FAMILIES, quiet_trainer_args, run_cli

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
SHORT = ["--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=1",
         "--trainer.check_val_every_n_epoch=1", "--evaluation.every_n_epochs=0",
         "--checkpoint.monitor=null", "--checkpoint.every_n_epochs=1"]

# Every family, with what makes resuming hard for it: optimizer and scheduler state (autoregressive:
# cosine schedule), the flow's data-initialised actnorm, EMA weights, two GAN optimizers, the EBM's
# replay buffer, and the random streams that draw data order and noise.
EMA_FROM_STEP_1 = """
trainer:
  callbacks:
    - class_path: lightning.pytorch.callbacks.EMAWeightAveraging
      init_args: {decay: 0.9, update_starting_at_step: 1}
"""


def last_checkpoint(run_root: Path) -> Path:
    return sorted(run_root.glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)[-1]


def assert_same_tensors(a, b, where: str) -> None:
    if isinstance(a, torch.Tensor):
        # Float tolerance, not bits: kept for runs on other machines' kernels (the tests run on one thread).
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=f"{where} differs")
        else:
            assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys differ"
        for key in a:
            assert_same_tensors(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tensors(x, y, f"{where}[{i}]")


@pytest.fixture
def one_thread():
    """Multi-threaded CPU kernels may sum in another order from run to run; the EBM's Langevin chains amplify
    that past any tolerance within a few steps (seen in CI). One thread makes the runs repeatable."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def straight_and_resumed(tmp_path: Path, common: list[str], epochs: int) -> tuple[dict, dict]:
    """Last checkpoints of a run of ``epochs`` epochs and of one stopped after 2 and resumed to ``epochs``."""
    runs = (("straight", epochs, []), ("resumed", 2, []), ("resumed", epochs, ["--ckpt_path=last"]))
    for run, stop, resume in runs:
        assert run_cli(["fit", *common, *quiet_trainer_args(tmp_path, run), f"--trainer.max_epochs={stop}",
                        *resume]) == 0
    straight = torch.load(last_checkpoint(tmp_path / "straight"), weights_only=True)
    resumed = torch.load(last_checkpoint(tmp_path / "resumed"), weights_only=True)
    assert straight["global_step"] == resumed["global_step"] > 0
    return straight, resumed


@pytest.mark.parametrize("family", list(TINY_FAMILIES))
def test_resumed_run_equals_an_uninterrupted_one(tmp_path, family, one_thread):
    config, tiny = TINY_FAMILIES[family]
    ema = tmp_path / "ema.yaml"
    ema.write_text(EMA_FROM_STEP_1)
    configs = ["--config", str(config), *(["--config", str(ema)] if family in ("diffusion", "gan") else [])]
    straight, resumed = straight_and_resumed(tmp_path, [*configs, *tiny, *SHORT], epochs=4)
    # Same weights after the same steps means the resumed run saw the same losses and gradients.
    assert_same_tensors(straight["state_dict"], resumed["state_dict"], "state_dict")
    assert_same_tensors(straight["optimizer_states"], resumed["optimizer_states"], "optimizer_states")
    for key in ("current_model_state", "averaging_state", "lit_gen_replay_buffer"):  # EMA, EBM buffer
        assert (key in straight) == (key in resumed)
        if key in straight:
            assert_same_tensors(straight[key], resumed[key], key)
    if family in ("diffusion", "gan"):
        assert "current_model_state" in straight  # the EMA really was part of the comparison
    if family == "ebm":
        assert "lit_gen_replay_buffer" in straight


def test_two_process_ebm_resumes_every_ranks_chains(tmp_path):
    """Under DDP each rank runs its own persistent Langevin chains: the checkpoint keeps all of them and a
    resumed 2-process run continues each rank's own (and its random stream), as an uninterrupted one."""
    config, tiny = TINY_FAMILIES["ebm"]
    ddp = ["--trainer.strategy=ddp_spawn", "--trainer.devices=2", "--trainer.accelerator=cpu"]
    common = ["--config", str(config), *tiny, *SHORT, *ddp]
    straight, resumed = straight_and_resumed(tmp_path, common, epochs=3)
    buffers = [straight["lit_gen_replay_buffer"], *straight["lit_gen_replay_buffers_other_ranks"]]
    assert len(buffers) == 2 and not torch.equal(buffers[0]["samples"], buffers[1]["samples"])
    for key in ("state_dict", "optimizer_states", "lit_gen_replay_buffer", "lit_gen_replay_buffers_other_ranks"):
        assert_same_tensors(straight[key], resumed[key], key)


def test_sigterm_saves_last_checkpoint_and_the_run_resumes(tmp_path):
    """A SIGTERM (preemption) mid-fit writes last.ckpt at the next batch boundary; fit --ckpt_path last goes on."""
    args = [*quiet_trainer_args(tmp_path, "preempted"), "--model.init_args.channels=8",
            "--model.init_args.latent_dim=4", "--evaluation.every_n_epochs=0", "--trainer.max_epochs=1000",
            "--trainer.limit_val_batches=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "lit_gen.cli", "fit", "--config", QUICKSTART, *args],
                            cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    ckpt_dir = tmp_path / "preempted" / "version_0" / "checkpoints"
    deadline = time.monotonic() + 120
    while not (ckpt_dir / "last.ckpt").is_file():  # at least one epoch done: the run is well under way
        assert proc.poll() is None and time.monotonic() < deadline, "fit ended or stalled before a checkpoint"
        time.sleep(0.2)
    first = torch.load(ckpt_dir / "last.ckpt", weights_only=True)["global_step"]
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    assert "SIGTERM" in err and "--ckpt_path last" in err
    saved = torch.load(ckpt_dir / "last.ckpt", weights_only=True)
    assert saved["global_step"] > first, "the SIGTERM checkpoint must hold the steps since the last epoch"

    stop = saved["epoch"] + 2
    code = run_cli(["fit", "--config", QUICKSTART, *quiet_trainer_args(tmp_path, "preempted"),
                    "--model.init_args.channels=8", "--model.init_args.latent_dim=4",
                    "--evaluation.every_n_epochs=0", f"--trainer.max_epochs={stop}",
                    "--trainer.limit_val_batches=1", "--ckpt_path=last"])
    assert code == 0
    resumed = torch.load(last_checkpoint(tmp_path / "preempted"), weights_only=True)
    assert resumed["global_step"] > saved["global_step"]


def test_nan_loss_stops_naming_the_step_and_keeps_the_good_checkpoint(tmp_path, capsys):
    tiny = ["--model.init_args.channels=8", "--model.init_args.latent_dim=4", "--evaluation.every_n_epochs=0",
            "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1"]
    assert run_cli(["fit", "--config", QUICKSTART, *quiet_trainer_args(tmp_path, "nan"), *tiny,
                    "--trainer.max_epochs=1"]) == 0
    good = tmp_path / "nan" / "version_0" / "checkpoints" / "last.ckpt"
    digest = hashlib.sha256(good.read_bytes()).hexdigest()

    # Adam moves every weight by ~lr per step whatever the gradient: lr 1e30 makes the next loss non-finite.
    code = run_cli(["fit", "--config", QUICKSTART, *quiet_trainer_args(tmp_path, "nan"), *tiny,
                    "--trainer.max_epochs=1", "--model.init_args.optimizer.init_args.lr=1e30"])
    assert code == 1
    err = capsys.readouterr().err
    assert "non-finite loss" in err and "global step" in err
    assert hashlib.sha256(good.read_bytes()).hexdigest() == digest
    assert not list((tmp_path / "nan" / "version_1").glob("checkpoints/*.ckpt")), "NaN weights were saved"
    for ckpt in (tmp_path / "nan").glob("version_*/checkpoints/*.ckpt"):
        weights = torch.load(ckpt, weights_only=True)["state_dict"]
        assert all(torch.isfinite(w).all() for w in weights.values())


class NotATensor:
    """Stands for arbitrary code pickled into a checkpoint."""


def test_checkpoint_with_pickled_objects_is_refused_unless_trusted(tmp_path, capsys):
    tiny = ["--model.init_args.channels=8", "--model.init_args.latent_dim=4", "--model.init_args.iwae_samples=2",
            "--evaluation.every_n_epochs=0", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1"]
    assert run_cli(["fit", "--config", QUICKSTART, *quiet_trainer_args(tmp_path, "pickled"), *tiny,
                    "--trainer.max_epochs=1"]) == 0
    state = torch.load(last_checkpoint(tmp_path / "pickled"), weights_only=True)
    state["extra"] = NotATensor()
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save(state, unsafe)
    test = ["test", "--config", QUICKSTART, *quiet_trainer_args(tmp_path, "pickled"), *tiny,
            "--trainer.limit_test_batches=1", "--evaluation.fid=false", f"--ckpt_path={unsafe}"]
    assert run_cli(test) == 1
    assert "refusing to execute" in capsys.readouterr().err
    assert run_cli([*test, "--weights_only=false"]) == 0
