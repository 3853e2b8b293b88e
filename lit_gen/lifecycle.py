"""Training callbacks that keep work from being lost (a checkpoint when a run is stopped from outside) and
keep the processes of a DDP run alike."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch import callbacks
from lightning.pytorch.callbacks import Callback, WeightAveraging
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info

from lit_gen.distributed import every_rank_reaches, lost_another_rank


class ModelCheckpoint(callbacks.ModelCheckpoint):
    """Lightning's ModelCheckpoint, which also restores ``current_score`` on resume.

    Lightning saves the latest monitored value with the callback's state but does not load it back, so a
    resumed run's next checkpoint can hold ``None`` where the uninterrupted run holds the last score (a
    save before the next validation, or one whose value did not improve). Same name, so the callback's
    state key, and every checkpoint written before, stay as they are.
    """

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        if state_dict.get("dirpath", self.dirpath) == self.dirpath and "current_score" in state_dict:
            self.current_score = state_dict["current_score"]


class InterruptCheckpoint(Callback):
    """Keep a fit's work: ``last.ckpt`` on SIGTERM (cluster preemption, ``kill``) or Ctrl-C, on an error
    inside an evaluation during ``fit``, and at the end of a fit whose last step no checkpoint holds.

    Lightning turns SIGTERM into an exception at the next batch boundary, on every rank, so the weights,
    optimizer, EMA, loop and random states saved here are consistent and ``lit-gen fit --ckpt_path last``
    continues as if never stopped. An error in validation (a sampler, a metric) leaves the training state
    of the finished epoch intact: it is saved with the raw weights. Other errors (a NaN loss, a bug in a
    training step) save nothing: the last good checkpoint stays as it was. Under SLURM with
    ``SLURMEnvironment(auto_requeue=True)``, Lightning's own SIGUSR1 handler saves and requeues instead
    (docs/scaling.md).
    """

    def __init__(self, filename: str = "last.ckpt") -> None:
        self.filename = filename
        self.saved_path: Path | None = None
        self.interrupted = False  # the stop came from Ctrl-C (reported as an interrupt, exit code 130)

    #: Whether the last stopped fit of this process was stopped by Ctrl-C (the CLI's exit code says which).
    _last_stop_ctrl_c = False

    @classmethod
    def last_stop_was_ctrl_c(cls) -> bool:
        return cls._last_stop_ctrl_c

    def checkpoint_path(self, trainer: L.Trainer) -> Path:
        callback = trainer.checkpoint_callback
        directory = getattr(callback, "dirpath", None) or Path(trainer.default_root_dir) / "checkpoints"
        return Path(directory) / self.filename

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if trainer.state.fn != "fit" or trainer.global_step == 0 or trainer.sanity_checking:
            return  # nothing trained yet, or evaluation only: nothing to lose
        if isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            stopped_by_ctrl_c = self.interrupted or isinstance(exception, KeyboardInterrupt)
            InterruptCheckpoint._last_stop_ctrl_c = stopped_by_ctrl_c
            what = "Ctrl-C" if stopped_by_ctrl_c else "SIGTERM"
        elif trainer.validating:
            # The save is a collective: under DDP only when every rank failed in this evaluation, never
            # after another rank was lost or while one is still inside another collective (it would hang).
            if lost_another_rank(exception):
                return
            if not every_rank_reaches(f"evaluation-error/{trainer.global_step}"):
                return
            what = f"error in evaluation ({type(exception).__name__})"
        else:
            return
        self.save(trainer, pl_module, what)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Ctrl-C stops at the next batch boundary as SIGTERM does (Lightning's flag, broadcast to every rank),
        # so its checkpoint resumes exactly; a second Ctrl-C interrupts at once.
        self.interrupted = False
        if threading.current_thread() is not threading.main_thread():
            return
        self._previous_sigint = signal.getsignal(signal.SIGINT)

        def stop_at_batch_boundary(signum, frame) -> None:
            self.interrupted = True
            trainer._signal_connector.received_sigterm = True  # what Lightning's SIGTERM handler sets
            signal.signal(signal.SIGINT, signal.default_int_handler)
            rank_zero_info("lit-gen: Ctrl-C: stopping at the next batch boundary (again to stop at once)")

        signal.signal(signal.SIGINT, stop_at_batch_boundary)

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        previous = getattr(self, "_previous_sigint", None)
        if previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGINT, previous)
            self._previous_sigint = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # ModelCheckpoint saves on its own schedule (e.g. every 10 epochs with an FID monitor): a fit that
        # ends between two of its saves would leave last.ckpt behind the trained weights, and the save it
        # makes itself at the end of training comes after WeightAveraging has copied the average into the
        # module, so a fit resumed from it would train on from the average. Saved here instead, before the
        # averaging callbacks' on_train_end (the CLI orders the callbacks so), and recorded as ModelCheckpoint's
        # own last save so it does not write a second one.
        callback = trainer.checkpoint_callback
        if callback is None or not getattr(callback, "save_last", False):
            return
        if getattr(callback, "_last_global_step_saved", None) != trainer.global_step:
            path = self.save(trainer, pl_module, "end of fit")
            callback._last_global_step_saved = trainer.global_step
            callback._last_checkpoint_saved = str(path)

    def save(self, trainer: L.Trainer, pl_module: L.LightningModule, what: str) -> Path:
        if trainer.validating:
            # Stopped inside a validation loop: weight-averaging callbacks have the average swapped into
            # the module; swap back first, or the checkpoint would store the average as the live weights.
            for callback in trainer.callbacks:
                if isinstance(callback, WeightAveraging) and callback._average_model is not None:
                    callback._swap_models(pl_module)
        path = self.checkpoint_path(trainer)
        callback = trainer.checkpoint_callback
        if callback is not None and hasattr(callback, "last_model_path"):
            # ModelCheckpoint then keeps writing last.ckpt itself (not last-v1.ckpt beside it), and the
            # state it saves into this checkpoint already names it.
            callback.last_model_path = str(path)
        # Full state (optimizers, loops, callbacks): the run resumes from it. A collective: every rank calls it.
        trainer.save_checkpoint(path, weights_only=False)
        self.saved_path = path
        rank_zero_info(f"lit-gen: {what} at global step {trainer.global_step}: saved {path}")
        return path


class BatchNormFromRankZero(Callback):
    """Under DDP, every rank takes rank 0's batch-norm running statistics after each training batch.

    DDP broadcasts rank 0's buffers at the start of each forward, so within a step every rank normalises
    alike; but the step's own update of the running mean and variance comes from each rank's batch and
    stays different until the next forward. Without this the ranks would end a fit, and enter each
    validation, with different statistics (as would each rank's EMA of them, updated right after this
    hook): samples of a GAN's generator (batch norm) would depend on the rank that drew them, and the
    checkpoint (rank 0's) would not hold what the other ranks evaluated. The CLI orders this callback
    before the weight-averaging ones.
    """

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if trainer.world_size == 1:
            return
        norms = [m for m in pl_module.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
        stats = [stat for m in norms for stat in (m.running_mean, m.running_var) if stat is not None]
        if not stats:
            return
        flat = torch.cat([stat.detach().flatten().double() for stat in stats])
        torch.distributed.broadcast(flat, src=0)
        offset = 0
        for stat in stats:
            stat.copy_(flat[offset: offset + stat.numel()].view_as(stat))
            offset += stat.numel()
