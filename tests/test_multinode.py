"""Beyond one launcher on one machine: torchrun across "nodes", SLURM jobs, and one rank failing.

Two torchrun agents on this machine stand for two nodes (node ranks 0 and 1, one process each, rendezvous
on localhost); SLURM is its job's environment variables and a stand-in ``scontrol`` on PATH.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import ROOT, TINY_FAMILIES, run_cli
from tests.scaling_helpers import callback_arg, launch_env, tiny_args

TRAINER_CONFIGS = ROOT / "configs" / "trainer"
DIFFUSION = ROOT / "configs" / "diffusion" / "digits.yaml"
VAE = ROOT / "configs" / "vae" / "digits.yaml"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun() -> list[str]:
    script = Path(sys.executable).with_name("torchrun")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "torch.distributed.run"]


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_torchrun_two_nodes_of_one_process_each_fit_and_checkpoint_once(tmp_path):
    """configs/trainer/multinode.yaml (overridden to one CPU process per node) under torchrun with
    --nnodes 2: Lightning reads torchrun's environment, both processes train as ranks 0 and 1 of one run on
    nodes 0 and 1, and only node 0 (global rank 0) writes the checkpoint, which holds their weights."""
    port = free_port()
    fit = ["-m", "lit_gen.cli", "fit", "--config", str(DIFFUSION),
           "--config", str(TRAINER_CONFIGS / "multinode.yaml"), "--trainer.accelerator=cpu",
           "--trainer.devices=1", *tiny_args(DIFFUSION, tmp_path), "--trainer.limit_train_batches=3",
           "--trainer.logger.init_args.save_dir=runs", "--trainer.default_root_dir=runs",
           callback_arg("tests.scaling_helpers.RankDump", directory=str(tmp_path / "ranks"))]
    nodes = []
    for node_rank in (0, 1):
        cwd = tmp_path / f"node{node_rank}"
        cwd.mkdir()
        command = [*torchrun(), "--nnodes=2", "--nproc_per_node=1", f"--node_rank={node_rank}",
                   "--master_addr=127.0.0.1", f"--master_port={port}", *fit]
        with open(cwd / "output.txt", "w") as output:  # files, not pipes: an undrained pipe blocks its writer
            nodes.append(subprocess.Popen(command, cwd=cwd, env=launch_env(), stdout=output,
                                          stderr=subprocess.STDOUT))
    deadline = time.monotonic() + 240
    while any(node.poll() is None for node in nodes) and time.monotonic() < deadline:
        time.sleep(0.2)
    for node in nodes:
        node.kill()
        node.wait()
    for node_rank, node in enumerate(nodes):
        output = (tmp_path / f"node{node_rank}" / "output.txt").read_text()
        assert node.returncode == 0, f"node {node_rank} (exit {node.returncode}):\n{output[-3000:]}"

    ranks = [load(tmp_path / "ranks" / f"rank{r}.pt") for r in (0, 1)]
    for rank, state in enumerate(ranks):
        assert state["cluster_environment"] == "TorchElasticEnvironment"
        place = (state["global_rank"], state["node_rank"], state["world_size"], state["num_nodes"])
        assert place == (rank, rank, 2, 2)
        assert state["global_step"] == 3
    for key, value in ranks[0]["raw"].items():
        assert torch.equal(value, ranks[1]["raw"][key]), key
    saved = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.ckpt"))
    assert saved == [Path("node0/runs/diffusion-digits/version_0/checkpoints/last.ckpt")]
    ckpt = load(tmp_path / saved[0])
    assert ckpt["global_step"] == 3
    for key, value in ranks[0]["raw"].items():
        assert torch.equal(ckpt["current_model_state"][key], value), key  # the EMA keeps the raw apart
    for key, value in ranks[1]["averaged"][0].items():
        assert torch.equal(ckpt["state_dict"][key], value), key


# ------------------------------------------------------------------ SLURM
SINGLE_TASK_JOB = {"SLURM_JOB_ID": "4242", "SLURM_JOB_NAME": "lit-gen-test", "SLURM_NTASKS": "1",
                   "SLURM_NTASKS_PER_NODE": "1", "SLURM_NNODES": "1", "SLURM_NODEID": "0",
                   "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODELIST": "localhost"}


@pytest.fixture
def slurm_job(monkeypatch):
    """The variables of a single-task SLURM job (SLURMEnvironment also writes MASTER_ADDR / MASTER_PORT)."""
    for key, value in SINGLE_TASK_JOB.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))


def test_slurm_environment_is_read_from_the_job_variables(slurm_job, tmp_path):
    from lightning.fabric.plugins.environments import SLURMEnvironment

    from lit_gen.cli import LitGenCLI

    config, tiny = TINY_FAMILIES["vae"]
    cli = LitGenCLI(args=["--config", str(config), *tiny, "--trainer.enable_progress_bar=false",
                          "--trainer.accelerator=cpu", f"--trainer.default_root_dir={tmp_path}"], run=False)
    environment = cli.trainer._accelerator_connector.cluster_environment  # what Lightning detected
    assert isinstance(environment, SLURMEnvironment)
    assert environment.auto_requeue and environment.job_id() == 4242
    assert (environment.world_size(), environment.global_rank(), environment.local_rank(),
            environment.node_rank()) == (1, 0, 0, 0)


def test_slurm_tasks_that_do_not_match_the_devices_are_a_one_line_error(slurm_job, tmp_path, capsys):
    config, tiny = TINY_FAMILIES["vae"]
    code = run_cli(["fit", "--config", str(config), *tiny, "--trainer.enable_progress_bar=false",
                    "--trainer.accelerator=cpu", "--trainer.devices=2",
                    f"--trainer.default_root_dir={tmp_path}",
                    f"--trainer.logger.init_args.save_dir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 1
    lines = [line for line in err.splitlines() if line.startswith("lit-gen: error:")]
    assert len(lines) == 1 and "--ntasks-per-node=1" in lines[0] and "Traceback" not in err


def test_slurm_requeue_signal_saves_and_requeues_and_the_requeued_job_resumes(slurm_job, tmp_path,
                                                                              monkeypatch):
    """SIGUSR1 (sbatch --signal=SIGUSR1@90) makes Lightning's SLURM handler save hpc_ckpt_1.ckpt and run
    `scontrol requeue <job id>`; SLURM's SIGTERM then ends the job (lit-gen saves last.ckpt, exit 143).
    The same command run again, as the requeued job, resumes from the hpc checkpoint by itself."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "scontrol.log"}\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    config, tiny = TINY_FAMILIES["vae"]
    job = ["fit", "--config", str(config), *tiny, "--trainer.enable_progress_bar=false",
           "--trainer.accelerator=cpu", "--evaluation.every_n_epochs=0", "--trainer.max_epochs=1",
           "--trainer.limit_train_batches=5", "--trainer.limit_val_batches=1",
           f"--trainer.default_root_dir={tmp_path / 'job'}",
           f"--trainer.logger.init_args.save_dir={tmp_path / 'job'}"]
    signals = [callback_arg("tests.scaling_helpers.SignalAt", signal_name="SIGUSR1", step=2),
               callback_arg("tests.scaling_helpers.SignalAt", signal_name="SIGTERM", step=3)]
    assert run_cli([*job, *signals]) == 143
    hpc = load(tmp_path / "job" / "hpc_ckpt_1.ckpt")
    assert hpc["global_step"] == 2
    assert (tmp_path / "scontrol.log").read_text().split() == ["requeue", "4242"]
    assert signal.getsignal(signal.SIGUSR1) in (signal.SIG_DFL, None)  # Lightning put the handler back

    dump = callback_arg("tests.scaling_helpers.RankDump", directory=str(tmp_path / "requeued"))
    assert run_cli([*job, dump]) == 0
    requeued = load(tmp_path / "requeued" / "rank0.pt")
    assert (requeued["start_step"], requeued["global_step"]) == (2, 5)
    assert requeued["cluster_environment"] == "SLURMEnvironment"


# ------------------------------------------------------------------ one rank fails
FAILURES = {
    # rank 0 hosts the process group's store and is the process the user started
    "nan-on-rank-0": (0, ["--model=tests.scaling_helpers.NaNOnRankVAE", "--model.init_args.nan_rank=0",
                          "--model.init_args.nan_step=2"], "non-finite loss (nan) at global step 2"),
    "data-error-on-rank-1": (1, ["--data=tests.scaling_helpers.RankFailingDigits",
                                 "--data.init_args.fail_rank=1", "--data.init_args.fail_after=2"],
                             "is unreadable on rank 1 (injected)"),
}


@pytest.mark.parametrize("failure", list(FAILURES))
def test_a_failure_on_one_rank_ends_every_rank_with_one_line(failure, tmp_path):
    """Under 2-process ddp one rank raises while the other waits for it in a collective: both end within
    seconds with exit code 1 and one `lit-gen: error:` line each (the other rank's names the failed rank
    and its error), no traceback and no backend message."""
    failed, inject, message = FAILURES[failure]
    command = [sys.executable, "-m", "lit_gen.cli", "fit", "--config", str(VAE), "--config",
               str(TRAINER_CONFIGS / "ddp_cpu.yaml"), *inject, *tiny_args(VAE, tmp_path),
               "--trainer.limit_train_batches=5", "--trainer.logger.init_args.save_dir=runs",
               "--trainer.default_root_dir=runs"]
    start = time.monotonic()
    proc = subprocess.run(command, cwd=tmp_path, env=launch_env(), capture_output=True, text=True,
                          timeout=180, check=False)
    assert time.monotonic() - start < 120  # the backend's own timeout is 30 minutes
    assert proc.returncode == 1, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("lit-gen: error:")]
    other = 1 - failed
    assert len(lines) == 2, proc.stderr[-3000:]
    assert lines[0].startswith(f"lit-gen: error: rank {failed}: ") and message in lines[0]
    assert lines[1].startswith(f"lit-gen: error: rank {other}: stopped because rank {failed} failed: ")
    assert message in lines[1]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "Connection closed by peer" not in proc.stderr, proc.stderr[-3000:]
    assert not list(tmp_path.rglob("*.ckpt"))  # failed before the first checkpoint: nothing half-written
