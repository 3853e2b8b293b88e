"""No run loses work: exact resume, SIGTERM checkpoints, NaN losses, checkpoints that carry code."""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
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
    - class_path: lit_gen.averaging.EMAWeightAveraging
      init_args: {decay: 0.9, update_starting_at_step: 1}
"""


def last_checkpoint(run_root: Path) -> Path:
    runs = sorted(run_root.glob("version_*/checkpoints/last.ckpt"), key=lambda p: int(p.parts[-3].split("_")[1]))
    return runs[-1]


def assert_same(a, b, where: str = "checkpoint") -> None:
    """Every leaf equal, bit for bit: tensors, numbers, strings and the structure around them."""
    assert type(a) is type(b), f"{where}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys differ ({set(a) ^ set(b)})"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), f"{where}: lengths differ"
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and math.isnan(a):
        assert math.isnan(b), f"{where}: nan vs {b}"
    else:
        assert a == b, f"{where}: {a!r} vs {b!r}"


def comparable(checkpoint: dict, run_dir: Path) -> dict:
    """The checkpoint with its run directory's path replaced by a placeholder (two runs live in two
    directories; everything else must agree)."""
    def swap(value):
        if isinstance(value, str):
            return value.replace(str(run_dir), "<run>")
        if isinstance(value, dict):
            return {swap(k): swap(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(swap(v) for v in value)
        return value
    return swap(checkpoint)


def test_the_runs_model_checkpoint_restores_all_it_saves_where_lightnings_drops_the_current_score(tmp_path):
    """The score of the last validation is part of the callback's saved state: a resumed run whose next save
    comes before a new score (or with one that does not improve) must write what the straight run writes."""
    from lightning.pytorch.callbacks import ModelCheckpoint as LightningModelCheckpoint

    from lit_gen.cli import LitGenCLI
    from lit_gen.lifecycle import ModelCheckpoint

    def saved(kind):
        callback = kind(dirpath=tmp_path, monitor="val/loss", save_last=True)
        callback.best_model_score, callback.current_score = torch.tensor(0.25), torch.tensor(0.5)
        callback.best_model_path = str(tmp_path / "best.ckpt")
        return callback.state_dict()

    for kind in (ModelCheckpoint, LightningModelCheckpoint):
        resumed = kind(dirpath=tmp_path, monitor="val/loss", save_last=True)
        resumed.load_state_dict(saved(kind))
        if kind is ModelCheckpoint:
            assert_same(resumed.state_dict(), saved(kind))
        else:  # why lit-gen has its own
            assert resumed.current_score is None
    assert ModelCheckpoint(monitor="val/loss").state_key == LightningModelCheckpoint(monitor="val/loss").state_key

    cli = LitGenCLI(args=["--config", QUICKSTART, "--trainer.logger=false"], run=False)
    assert type(cli.trainer.checkpoint_callback) is ModelCheckpoint


@pytest.fixture
def one_thread(monkeypatch):
    """Multi-threaded CPU kernels may sum in another order from run to run; the EBM's Langevin chains amplify
    that past any tolerance within a few steps (seen in CI). One thread, here and in every process a test
    spawns (the variable is read when a worker starts), makes the runs repeatable bit for bit."""
    threads = torch.get_num_threads()
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def straight_and_resumed(tmp_path: Path, common: list[str], epochs: int) -> tuple[dict, dict]:
    """Last checkpoints of a run of ``epochs`` epochs and of one stopped after 2 and resumed to ``epochs``."""
    runs = (("straight", epochs, []), ("resumed", 2, []), ("resumed", epochs, ["--ckpt_path=last"]))
    for run, stop, resume in runs:
        assert run_cli(["fit", *common, *quiet_trainer_args(tmp_path, run), f"--trainer.max_epochs={stop}",
                        *resume]) == 0
    assert [p.name for p in (tmp_path / "resumed").iterdir()] == ["version_0"], "a resumed run is one run"
    straight = torch.load(last_checkpoint(tmp_path / "straight"), weights_only=True)
    resumed = torch.load(last_checkpoint(tmp_path / "resumed"), weights_only=True)
    assert straight["global_step"] == resumed["global_step"] > 0
    return (comparable(straight, tmp_path / "straight" / "version_0"),
            comparable(resumed, tmp_path / "resumed" / "version_0"))


# The two-stage families' second stages, each on a tiny untrained first stage written for the test (the
# first stages themselves are single-stage models like the others).
LATENT_FAMILIES = {
    "latent_vq": (ROOT / "configs" / "latent" / "vqvae_pixelcnn_digits.yaml", "VQVAE",
                  ["--model.init_args.channels=4", "--model.init_args.num_layers=2",
                   "--model.init_args.head_channels=8"]),
    "latent_diffusion": (ROOT / "configs" / "latent" / "latent_diffusion_digits.yaml", "Autoencoder",
                         ["--model.init_args.latent_model.init_args.num_timesteps=10",
                          "--model.init_args.latent_model.init_args.backbone.init_args.channels=8"]),
}
WITH_EMA = ("diffusion", "gan", "flow_matching", "latent_diffusion")


def family_args(family: str, tmp_path: Path) -> list[str]:
    if family in LATENT_FAMILIES:
        from tests.scaling_helpers import tiny_first_stage

        config, first_stage_class, tiny = LATENT_FAMILIES[family]
        first_stage = tiny_first_stage("DigitsDataModule", tmp_path, first_stage_class)
        tiny = [*tiny, f"--model.init_args.first_stage={first_stage}"]
    else:
        config, tiny = TINY_FAMILIES[family]
    ema = tmp_path / "ema.yaml"
    ema.write_text(EMA_FROM_STEP_1)
    return ["--config", str(config), *(["--config", str(ema)] if family in WITH_EMA else []), *tiny]


def logged_scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar the logger wrote in a run directory (all its event files), by tag, in step order."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    events.Reload()
    # hp_metric is TensorBoardLogger's placeholder, written again at every start of a process
    return {tag: sorted((e.step, e.value) for e in events.Scalars(tag))
            for tag in events.Tags()["scalars"] if tag != "hp_metric"}


MID_EPOCH = ["--trainer.limit_train_batches=4", "--trainer.limit_val_batches=1", "--trainer.num_sanity_val_steps=1",
             "--evaluation.every_n_epochs=0", "--checkpoint.monitor=val/loss", "--trainer.log_every_n_steps=1",
             "--checkpoint.every_n_epochs=1", "--trainer.check_val_every_n_epoch=1"]


def probe(name: str, **init_args) -> list[str]:
    args = [f"--trainer.callbacks+=tests.run_probes.{name}"]
    return args + [f"--trainer.callbacks.init_args.{key}={value}" for key, value in init_args.items()]


@pytest.mark.parametrize("family", [*TINY_FAMILIES, *LATENT_FAMILIES])
def test_a_run_stopped_anywhere_and_resumed_is_the_uninterrupted_run(tmp_path, family, one_thread):
    """Straight: 3 epochs of 4 batches. Interrupted: SIGTERM after batch 5 (mid-epoch 1), resumed to the
    end of epoch 2 (an epoch boundary), resumed again to 3 epochs. Both end bit for bit the same in
    everything the checkpoint holds (weights, optimizer and scheduler state, EMA, replay buffers, random
    streams, loop counters, ModelCheckpoint's best path and score), saw the same batches in the same order
    (each example once per epoch), logged the same curves, and the interrupted run is one directory."""
    from tests.run_probes import recorded_batches

    common = [*family_args(family, tmp_path), *MID_EPOCH]
    if family == "gan":  # the stop lands between a critic step and its generator step
        common.append("--model.init_args.n_critic=2")
    def record(name: str) -> list[str]:
        return probe("RecordBatches", path=tmp_path / f"{name}.jsonl")

    straight_cli = ["fit", *common, *quiet_trainer_args(tmp_path, "straight"), "--trainer.max_epochs=3"]
    assert run_cli([*straight_cli, *record("straight")]) == 0
    stopped = ["fit", *common, *quiet_trainer_args(tmp_path, "stopped")]
    assert run_cli([*stopped, "--trainer.max_epochs=3", *probe("StopAfterBatches", batches=5),
                    *record("stopped")]) == 143
    assert run_cli([*stopped, "--trainer.max_epochs=2", "--ckpt_path=last", *record("stopped")]) == 0
    assert run_cli([*stopped, "--trainer.max_epochs=3", "--ckpt_path=last", *record("stopped")]) == 0

    assert [p.name for p in (tmp_path / "stopped").iterdir()] == ["version_0"], "a resumed run is one run"
    batches = recorded_batches(tmp_path / "straight.jsonl")
    assert recorded_batches(tmp_path / "stopped.jsonl") == batches
    for epoch in range(3):  # every example of the epoch's batches once
        digests = [d for e, _, ds in batches if e == epoch for d in ds]
        assert len(digests) == len(set(digests))
    runs = {name: tmp_path / name / "version_0" for name in ("straight", "stopped")}
    straight, stopped = (comparable(torch.load(run / "checkpoints" / "last.ckpt", weights_only=True), run)
                         for run in runs.values())
    assert straight["global_step"] > 0
    assert_same(straight, stopped)
    if family in WITH_EMA:
        assert "averaging_state" in straight  # the EMA really was part of the comparison
    if family in LATENT_FAMILIES:
        assert "lit_gen_first_stage" in straight  # the first stage's record, inside as trained
    if family == "ebm":
        assert "lit_gen_replay_buffer" in straight
    curves = logged_scalars(runs["straight"])
    assert any(tag.endswith("_epoch") for tag in curves) and any(tag.startswith("val/") for tag in curves), curves.keys()
    assert logged_scalars(runs["stopped"]) == curves


def test_two_process_ebm_resumes_every_ranks_chains(tmp_path, one_thread):
    """Under DDP each rank runs its own persistent Langevin chains: the checkpoint keeps all of them and a
    resumed 2-process run continues each rank's own (and its random stream), as an uninterrupted one."""
    config, tiny = TINY_FAMILIES["ebm"]
    ddp = ["--trainer.strategy=ddp_spawn", "--trainer.devices=2", "--trainer.accelerator=cpu"]
    common = ["--config", str(config), *tiny, *SHORT, *ddp]
    straight, resumed = straight_and_resumed(tmp_path, common, epochs=3)
    buffers = [straight["lit_gen_replay_buffer"], *straight["lit_gen_replay_buffers_other_ranks"]]
    assert len(buffers) == 2 and not torch.equal(buffers[0]["samples"], buffers[1]["samples"])
    assert_same(straight, resumed)


def test_sigterm_saves_last_checkpoint_and_the_run_resumes(tmp_path):
    """A real SIGTERM to a ``lit-gen fit`` process (preemption) mid-epoch: last.ckpt holds every step up to
    the batch boundary it landed on, the process says how to resume and exits 143; fit --ckpt_path last
    goes on in the same run. The signal is sent at a chosen batch (a callback), never after a sleep."""
    common = ["--config", QUICKSTART, *quiet_trainer_args(tmp_path, "preempted"), "--model.init_args.channels=8",
              "--model.init_args.latent_dim=4", "--evaluation.every_n_epochs=0", "--trainer.limit_val_batches=1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "lit_gen.cli", "fit", *common, "--trainer.max_epochs=1000",
                           *probe("StopAfterBatches", batches=30)],
                          cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True, timeout=300, check=False)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert "SIGTERM" in proc.stderr and "--ckpt_path last" in proc.stderr
    ckpt = tmp_path / "preempted" / "version_0" / "checkpoints" / "last.ckpt"
    saved = torch.load(ckpt, weights_only=True)
    assert saved["global_step"] == 30, "the SIGTERM checkpoint holds the steps since the last epoch end"

    stop = saved["epoch"] + 2
    assert run_cli(["fit", *common, f"--trainer.max_epochs={stop}", "--ckpt_path=last"]) == 0
    assert [p.name for p in (tmp_path / "preempted").iterdir()] == ["version_0"]
    resumed = torch.load(ckpt, weights_only=True)
    assert resumed["global_step"] > saved["global_step"] and resumed["epoch"] == stop - 1


def test_ctrl_c_stops_at_a_batch_boundary_and_resumes_exactly(tmp_path, one_thread):
    """Ctrl-C (SIGINT) during fit: last.ckpt at the batch it landed on, exit code 130, and the resumed run
    is the uninterrupted one."""
    common = [*family_args("vae", tmp_path), *MID_EPOCH]
    assert run_cli(["fit", *common, *quiet_trainer_args(tmp_path, "straight"), "--trainer.max_epochs=2"]) == 0
    stopped = ["fit", *common, *quiet_trainer_args(tmp_path, "stopped"), "--trainer.max_epochs=2"]
    assert run_cli([*stopped, *probe("StopAfterBatches", batches=3, signal_name="SIGINT")]) == 130
    ckpt = tmp_path / "stopped" / "version_0" / "checkpoints" / "last.ckpt"
    assert torch.load(ckpt, weights_only=True)["global_step"] == 3
    assert run_cli([*stopped, "--ckpt_path=last"]) == 0
    straight = tmp_path / "straight" / "version_0"
    assert_same(comparable(torch.load(straight / "checkpoints" / "last.ckpt", weights_only=True), straight),
                comparable(torch.load(ckpt, weights_only=True), ckpt.parent.parent))


def test_every_command_of_a_run_lives_in_its_directory_and_failures_leave_none(tmp_path, capsys):
    """fit, its resume, test, validate and predict of the run's checkpoints: one version directory (the
    fit's config.yaml untouched by the others); a fit that fails before anything is written (missing
    data) leaves no directory."""
    tiny = ["--model.init_args.channels=8", "--model.init_args.latent_dim=4", "--model.init_args.iwae_samples=2",
            "--evaluation.every_n_epochs=0", "--trainer.limit_train_batches=2", "--trainer.limit_val_batches=1",
            "--trainer.limit_test_batches=1", "--evaluation.fid=false", "--data.init_args.predict_num_samples=4"]
    common = ["--config", QUICKSTART, *quiet_trainer_args(tmp_path, "run"), *tiny]
    assert run_cli(["fit", *common, "--trainer.max_epochs=1"]) == 0
    run = tmp_path / "run" / "version_0"
    assert run_cli(["fit", *common, "--trainer.max_epochs=2", "--ckpt_path=last"]) == 0
    config = (run / "config.yaml").read_text()  # the latest fit's (it says how the run was continued)
    for command in ("test", "validate", "predict"):
        assert run_cli([command, *common, "--ckpt_path=best"]) == 0, command
    assert [p.name for p in (tmp_path / "run").iterdir()] == ["version_0"]
    assert (run / "config.yaml").read_text() == config
    best = next((run / "checkpoints").glob("best-*.ckpt")).stem
    assert (run / "eval" / best / "metrics.json").is_file()
    assert (run / "predict" / best / "samples.npz").is_file()

    mnist = ["--config", str(ROOT / "configs" / "vae" / "mnist.yaml"), *quiet_trainer_args(tmp_path, "nodata"),
             f"--data.init_args.root={tmp_path / 'no-such-root'}"]
    assert run_cli(["fit", *mnist]) == 1
    assert "no such folder" in capsys.readouterr().err
    assert not (tmp_path / "nodata").exists()


class FailingEvaluation(Exception):
    """Stands for a bug or a broken metric in an evaluation during fit."""


def test_an_error_in_evaluation_during_fit_leaves_a_resumable_last_checkpoint(tmp_path, monkeypatch, one_thread):
    """The first validation after two epochs of training fails: last.ckpt still holds those two epochs
    (raw weights, not the EMA swapped in for evaluation), and resuming it ends where a run that never
    failed ends."""
    from lit_gen.models.diffusion import Diffusion

    common = [*family_args("diffusion", tmp_path), *MID_EPOCH, "--trainer.num_sanity_val_steps=0",
              "--trainer.check_val_every_n_epoch=2"]
    assert run_cli(["fit", *common, *quiet_trainer_args(tmp_path, "straight"), "--trainer.max_epochs=3"]) == 0
    original = Diffusion.validation_step

    def failing(self, batch, batch_idx):
        raise FailingEvaluation("metric exploded")

    monkeypatch.setattr(Diffusion, "validation_step", failing)
    failed = ["fit", *common, *quiet_trainer_args(tmp_path, "failed")]
    with pytest.raises(FailingEvaluation):
        run_cli([*failed, "--trainer.max_epochs=3"])
    run = tmp_path / "failed" / "version_0"
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert saved["global_step"] == 8 and not torch.equal(
        saved["state_dict"]["backbone.conv_in.weight"], saved["current_model_state"]["backbone.conv_in.weight"])
    monkeypatch.setattr(Diffusion, "validation_step", original)
    assert run_cli([*failed, "--trainer.max_epochs=3", "--ckpt_path=last"]) == 0
    straight = torch.load(tmp_path / "straight" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)
    resumed = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    for key in ("state_dict", "current_model_state", "optimizer_states", "averaging_state"):
        assert_same(straight[key], resumed[key], key)


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
