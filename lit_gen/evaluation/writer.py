"""SampleWriter: what ``lit-gen predict`` writes — a PNG grid, one PNG per sample, and an ``.npz``, by default
beside the checkpoint's run in ``<run>/predict/<checkpoint stem>/``.

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

from lit_gen.errors import ConfigurationError
from lit_gen.evaluation.callback import checkpoint_stem, run_dir
from lit_gen.evaluation.images import class_rows, save_image_grid, save_sample_png, save_scatter


class SampleWriter(BasePredictionWriter):
    """Write the samples of ``lit-gen predict``.

    Args:
        output_dir: where to write (default: ``<run>/predict/<checkpoint stem>/``).
        grid: write ``grid.png``: the first ``grid_size`` samples (the count is printed), or for a
            conditional model one row per class.
        grid_size: samples in the grid (at most).
        individual: write ``samples/000000.png`` ... one PNG per sample, in the data's own mode (grey or RGB)
            and size.
        enlarge: integer factor the per-sample PNGs are enlarged by (nearest neighbour: levels stay true).
        npz: write ``samples.npz`` with ``images`` (N, C, H, W) uint8 levels in [0, 255] as PNG would hold
            them, ``samples`` (float32, data space [0, 1]) and ``labels`` when conditional.
    """

    def __init__(self, output_dir: str | None = None, grid: bool = True, grid_size: int = 64,
                 individual: bool = True, npz: bool = True, enlarge: int = 1) -> None:
        super().__init__(write_interval="batch")
        if isinstance(enlarge, bool) or not isinstance(enlarge, int) or enlarge < 1:
            raise ConfigurationError(f"prediction.enlarge must be an integer >= 1, got {enlarge!r}")
        self.output_dir = output_dir
        self.grid, self.grid_size = grid, grid_size
        self.individual, self.npz = individual, npz
        self.enlarge = enlarge

    def directory(self, trainer: Any) -> Path:
        """Call on every rank: the run directory may be a collective."""
        if self.output_dir:
            return Path(self.output_dir)
        return run_dir(trainer) / "predict" / checkpoint_stem(trainer)

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
        if prediction.get("row_length"):
            arrays["row_length"] = np.array(prediction["row_length"])
        np.savez(chunk_dir / f"chunk_{int(prediction['chunk']):06d}.npz", **arrays)
        if self.individual and images.dim() == 4:
            (out / "samples").mkdir(parents=True, exist_ok=True)
            for offset, image in enumerate(images):
                save_sample_png(image, out / "samples" / f"{start + offset:06d}.png", self.enlarge)

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
            row_length = int(parts[0]["row_length"]) if parts and "row_length" in parts[0] else 0
            if self.npz:
                tmp = out / "samples.tmp.npz"
                np.savez_compressed(tmp, **arrays)
                os.replace(tmp, out / "samples.npz")
            if self.grid and self.grid_size > 0:
                if row_length:
                    self._write_interpolation_grid(samples, row_length, out / "grid.png")
                else:
                    self._write_grid(samples, arrays.get("labels"), out / "grid.png")
            for path in chunks:
                path.unlink()
            (out / "chunks").rmdir()
            print(f"{samples.shape[0]} samples written to {out}")
        trainer.strategy.barrier()

    def _write_interpolation_grid(self, samples: np.ndarray, row_length: int, path: Path) -> None:
        rows = min(samples.shape[0] // row_length, max(1, self.grid_size // row_length))
        save_image_grid(torch.from_numpy(samples[: rows * row_length]), path, nrow=row_length)
        print(f"grid.png: {rows} interpolations of {row_length} images, one per row")

    def _write_grid(self, samples: np.ndarray, labels: np.ndarray | None, path: Path) -> None:
        if samples.ndim == 2 and samples.shape[1] == 2:
            save_scatter(torch.from_numpy(samples), path)
            print(f"grid.png: a scatter plot of all {samples.shape[0]} samples")
            return
        if samples.ndim != 4:
            return
        images, nrow = class_rows(torch.from_numpy(samples), None if labels is None else torch.from_numpy(labels))
        if nrow is None:
            images = images[: self.grid_size]
            print(f"grid.png: the first {images.shape[0]} of {samples.shape[0]} samples (prediction.grid_size)")
        else:  # whole rows of classes, at most grid_size images
            classes = images.shape[0] // nrow
            per_class = max(1, min(nrow, self.grid_size // classes))
            images = images.view(classes, nrow, *images.shape[1:])[:, :per_class].flatten(0, 1)
            nrow = per_class
            print(f"grid.png: {per_class} samples of each of {classes} classes, one row per class")
        save_image_grid(images, path, nrow=nrow)
