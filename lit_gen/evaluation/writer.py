"""SampleWriter: what ``lit-gen predict`` writes — a PNG grid, one PNG per sample, and an ``.npz``.

Each rank writes the chunks it drew (file names carry the global sample index, so nothing collides);
after a barrier, rank zero assembles ``samples.npz`` and ``grid.png`` from the chunk files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from lightning.pytorch.callbacks import BasePredictionWriter

from lit_gen.evaluation.callback import run_dir
from lit_gen.evaluation.report import save_image_grid, save_scatter


class SampleWriter(BasePredictionWriter):
    """Write the samples of ``lit-gen predict``.

    Args:
        output_dir: where to write (default: ``<run dir>/predictions``).
        grid: write ``grid.png`` (at most ``grid_size`` samples).
        grid_size: samples in the grid.
        individual: write ``samples/000000.png`` ... one PNG per sample.
        npz: write ``samples.npz`` with ``images`` (N, C, H, W) uint8 levels in [0, 255] as PNG would hold
            them, ``samples`` (float32, data space [0, 1]) and ``labels`` when conditional.
    """

    def __init__(self, output_dir: str | None = None, grid: bool = True, grid_size: int = 64,
                 individual: bool = True, npz: bool = True) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = output_dir
        self.grid, self.grid_size = grid, grid_size
        self.individual, self.npz = individual, npz

    def directory(self, trainer: Any) -> Path:
        return Path(self.output_dir) if self.output_dir else run_dir(trainer) / "predictions"

    def write_on_batch_end(self, trainer: Any, pl_module: Any, prediction: dict[str, Any],
                           batch_indices: Sequence[int] | None, batch: Any, batch_idx: int,
                           dataloader_idx: int = 0) -> None:
        out = self.directory(trainer)
        chunk_dir = out / "chunks"
        chunk_dir.mkdir(parents=True, exist_ok=True)
        images, start = prediction["images"], int(prediction["start"])
        arrays = {"samples": images.numpy().astype(np.float32)}
        if prediction.get("labels") is not None:
            arrays["labels"] = prediction["labels"].numpy()
        np.savez(chunk_dir / f"chunk_{int(prediction['chunk']):06d}.npz", **arrays)
        if self.individual and images.dim() == 4:
            from torchvision.utils import save_image

            (out / "samples").mkdir(parents=True, exist_ok=True)
            for offset, image in enumerate(images):
                save_image(image.clamp(0, 1), out / "samples" / f"{start + offset:06d}.png")

    def on_predict_start(self, trainer: Any, pl_module: Any) -> None:
        # Chunks left by an interrupted run into the same directory must not leak into this one.
        out = self.directory(trainer)  # on every rank: run_dir is a collective
        if trainer.is_global_zero:
            for stale in (out / "chunks").glob("chunk_*.npz"):
                stale.unlink()
        trainer.strategy.barrier()

    def on_predict_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        trainer.strategy.barrier()
        out = self.directory(trainer)  # on every rank: run_dir is a collective
        if trainer.is_global_zero:
            chunks = sorted((out / "chunks").glob("chunk_*.npz"))
            parts = [dict(np.load(path)) for path in chunks]
            samples = np.concatenate([p["samples"] for p in parts])
            arrays: dict[str, np.ndarray] = {"samples": samples}
            if samples.ndim == 4:
                arrays["images"] = np.clip(samples * 255.0 + 0.5, 0, 255).astype(np.uint8)
            if parts and "labels" in parts[0]:
                arrays["labels"] = np.concatenate([p["labels"] for p in parts])
            if self.npz:
                tmp = out / "samples.tmp.npz"
                np.savez_compressed(tmp, **arrays)
                os.replace(tmp, out / "samples.npz")
            if self.grid and self.grid_size > 0:
                head = torch.from_numpy(samples[: self.grid_size])
                if head.dim() == 4:
                    save_image_grid(head, out / "grid.png")
                elif head.dim() == 2 and head.shape[1] == 2:
                    save_scatter(torch.from_numpy(samples), out / "grid.png")
            for path in chunks:
                path.unlink()
            (out / "chunks").rmdir()
            print(f"{samples.shape[0]} samples written to {out}")
        trainer.strategy.barrier()
