"""Training callbacks that keep work from being lost: a checkpoint when a run is stopped from outside."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, WeightAveraging
from lightning.pytorch.utilities.exceptions import SIGTERMException
from lightning.pytorch.utilities.rank_zero import rank_zero_info


class InterruptCheckpoint(Callback):
    """On SIGTERM (cluster preemption, ``kill``) or Ctrl-C during ``fit``, save ``last.ckpt`` before exiting.

    Lightning turns SIGTERM into an exception at the next batch boundary, on every rank, so the weights,
    optimizer, EMA and random states saved here are consistent; ``lit-gen fit --ckpt_path last`` resumes
    from it. Other exceptions (a NaN loss, a bug) save nothing: the last good checkpoint stays as it was.
    Under SLURM with ``SLURMEnvironment(auto_requeue=True)``, Lightning's own SIGUSR1 handler saves and
    requeues instead (docs/scaling.md).
    """

    def __init__(self, filename: str = "last.ckpt") -> None:
        self.filename = filename
        self.saved_path: Path | None = None

    def checkpoint_path(self, trainer: L.Trainer) -> Path:
        callback = trainer.checkpoint_callback
        directory = getattr(callback, "dirpath", None) or Path(trainer.default_root_dir) / "checkpoints"
        return Path(directory) / self.filename

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if not isinstance(exception, (SIGTERMException, KeyboardInterrupt)):
            return
        if trainer.state.fn != "fit" or trainer.global_step == 0:
            return  # nothing trained yet, or evaluation only: nothing to lose
        if trainer.validating:
            # Stopped inside a validation loop: weight-averaging callbacks have the average swapped into
            # the module; swap back first, or the checkpoint would store the average as the live weights.
            for callback in trainer.callbacks:
                if isinstance(callback, WeightAveraging) and callback._average_model is not None:
                    callback._swap_models(pl_module)
        path = self.checkpoint_path(trainer)
        trainer.save_checkpoint(path)  # a collective: every rank gets the exception and calls this
        self.saved_path = path
        what = "SIGTERM" if isinstance(exception, SIGTERMException) else "interrupt"
        rank_zero_info(f"lit-gen: {what} at global step {trainer.global_step}: saved {path}")
