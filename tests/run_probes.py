"""Callbacks the run-lifecycle tests add from the command line (``--trainer.callbacks+=...``)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
from pathlib import Path

from lightning.pytorch.callbacks import Callback


class StopAfterBatches(Callback):
    """Send this process ``signal_name`` after the run's ``batches``-th training batch: a preemption that
    lands at a chosen step, not at a time a busy machine makes random."""

    def __init__(self, batches: int, signal_name: str = "SIGTERM") -> None:
        self.batches = batches
        self.signal_name = signal_name
        self.seen = 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen += 1
        if self.seen == self.batches:
            os.kill(os.getpid(), getattr(signal, self.signal_name))


class RecordBatches(Callback):
    """Append ``[epoch, batch_idx, [digest of each example]]`` of every training batch to a JSON-lines file."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        x = batch[0] if isinstance(batch, (list, tuple)) else batch
        digests = [hashlib.sha1(row.cpu().numpy().tobytes()).hexdigest()[:12] for row in x]
        with self.path.open("a") as f:
            f.write(json.dumps([trainer.current_epoch, batch_idx, digests]) + "\n")


def recorded_batches(path: Path) -> list[tuple[int, int, list[str]]]:
    return [tuple(json.loads(line)) for line in path.read_text().splitlines()]
