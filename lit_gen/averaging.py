"""Lightning's EMA weight averaging, with two differences that make a run's evaluated weights its own.

**Before the average starts it follows the weights.** Lightning's ``EMAWeightAveraging`` copies the model
when fit begins and swaps that copy in for validation, checkpoints and the end of training until its first
update (``update_starting_at_step``). Until then validation, sampling, ``last.ckpt`` and the weights a
short fit ends with are the *initial* weights: a fit of fewer steps than ``update_starting_at_step`` ends
untrained. Here the average is the current weights until it has averaged once (torch's
``AveragedModel.n_averaged`` is 0), copied in at each moment it is used; from its first update on it is
Lightning's EMA unchanged, and resumes as Lightning's does (``n_averaged`` is in the checkpoint).

**It can be pickled**, so ``ddp_spawn`` (which pickles the trainer into every process it starts) runs an
EMA config: the decay is a small class instead of the local function Lightning builds.
"""

from __future__ import annotations

import itertools
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging as LightningEMAWeightAveraging
from torch import Tensor


class EMADecay:
    """``decay * average + (1 - decay) * current``: torch's ``get_ema_avg_fn(decay)`` as a picklable object."""

    def __init__(self, decay: float) -> None:
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = decay

    @torch.no_grad()
    def __call__(self, average: Tensor, current: Tensor, num_averaged: Any) -> Tensor:
        return self.decay * average + (1.0 - self.decay) * current


class EMAWeightAveraging(LightningEMAWeightAveraging):
    """An exponential moving average of the weights (Lightning's callback, same arguments) that is the
    current weights until its first update, and picklable (see the module docstring)."""

    def __init__(self, *args: Any, decay: float = 0.999, **kwargs: Any) -> None:
        super().__init__(*args, decay=decay, **kwargs)
        self._kwargs["avg_fn"] = EMADecay(decay)

    def started(self) -> bool:
        """Whether the average has taken its first update (before fit has one, it has not)."""
        return self._average_model is not None and int(self._average_model.n_averaged) > 0

    def follow_until_started(self, pl_module: L.LightningModule) -> None:
        """Before its first update the average is a copy of the weights as they are now."""
        if self._average_model is None or self.started():
            return
        average = itertools.chain(self._average_model.module.parameters(), self._average_model.module.buffers())
        current = itertools.chain(pl_module.parameters(), pl_module.buffers())
        for average_tensor, current_tensor in zip(average, current):
            average_tensor.data.copy_(current_tensor.data)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.follow_until_started(pl_module)
        super().on_validation_epoch_start(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.follow_until_started(pl_module)
        super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        # (Inside validation, before the first update, the module holds the swapped-in copy: the same values.)
        self.follow_until_started(pl_module)
        super().on_save_checkpoint(trainer, pl_module, checkpoint)


__all__ = ["EMADecay", "EMAWeightAveraging"]
