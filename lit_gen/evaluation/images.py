"""Images people can look at: grids (one row per class for conditional models), per-sample PNGs in the data's
own mode and size, scatter plots of 2-D samples, and grids sent to every logger that takes images."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor


def enlarge(images: Tensor, factor: int) -> Tensor:
    """Each pixel as a ``factor`` x ``factor`` block (nearest neighbour: no level is invented)."""
    if factor <= 1:
        return images
    return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def save_image_grid(images: Tensor, path: str | os.PathLike, nrow: int | None = None,
                    min_side: int = 32) -> Tensor:
    """Save ``(N, C, H, W)`` images in [0, 1] as one PNG grid (near-square unless ``nrow`` images per row);
    returns the grid tensor.

    Images smaller than ``min_side`` (8x8 digits) are enlarged by an integer factor, nearest-neighbour,
    so a person can see them; pixels are not interpolated, so the grid still shows the true levels.
    """
    from torchvision.utils import make_grid, save_image  # torchvision costs start-up time: only when drawing

    images = enlarge(images.float(), math.ceil(min_side / min(images.shape[-2:])))
    nrow = nrow or max(1, math.ceil(math.sqrt(images.shape[0])))
    grid = make_grid(images.clamp(0, 1), nrow=nrow, padding=1, pad_value=1.0)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_image(grid, path)
    return grid


def class_rows(images: Tensor, labels: Tensor | None) -> tuple[Tensor, int | None]:
    """Images reordered so that each grid row holds one class, and the row length (None: no labels).

    Every class keeps as many of its samples (first ones first) as the rarest class has, so rows are full.
    """
    if labels is None or labels.numel() == 0:
        return images, None
    labels = labels.cpu()
    classes = torch.unique(labels)
    per_class = min(int((labels == c).sum()) for c in classes)
    order = torch.cat([torch.nonzero(labels == c).flatten()[:per_class] for c in classes])
    return images[order], per_class


def to_pil(image: Tensor) -> Image.Image:
    """One ``(C, H, W)`` image in [0, 1] as PIL in the data's own mode: ``L`` for one channel, else ``RGB``;
    levels rounded as ``torchvision.utils.save_image`` rounds them."""
    levels = image.detach().float().cpu().mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8).numpy()
    if levels.shape[0] == 1:
        return Image.fromarray(levels[0], mode="L")
    return Image.fromarray(np.ascontiguousarray(levels.transpose(1, 2, 0)), mode="RGB")


def save_sample_png(image: Tensor, path: str | os.PathLike, factor: int = 1) -> None:
    """One sample as a PNG of the data's size (times ``factor``) and mode."""
    to_pil(enlarge(image, factor)).save(path)


def save_scatter(points: Tensor, path: str | os.PathLike) -> None:
    """Scatter plot of 2-D samples (toy densities live in [0, 1]^2)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4, 4))
    pts = points.float().cpu().numpy()
    ax.scatter(pts[:, 0], pts[:, 1], s=2, alpha=0.6)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_aspect("equal")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def log_image(loggers: list[Any], tag: str, grid: Tensor, step: int, path: Path | None = None) -> list[str]:
    """Send a ``(C, H, W)`` grid in [0, 1] to each logger through its own image API; returns the names of the
    loggers that took it. TensorBoard (``add_image``), Weights & Biases (``WandbLogger.log_image``), MLflow
    (``log_image`` of its client) and Comet take images; a CSV logger has no image API, so the PNG file
    written beside its metrics is what a CSV user opens."""
    took = []
    pil = to_pil(grid)
    for logger in loggers:
        experiment = getattr(logger, "experiment", None)
        name = type(logger).__name__
        if hasattr(experiment, "add_image"):  # TensorBoard's SummaryWriter
            experiment.add_image(tag, grid, step)
        elif hasattr(logger, "log_image"):  # WandbLogger and loggers that follow its API
            logger.log_image(key=tag, images=[pil], step=step)
        elif name == "MLFlowLogger":
            experiment.log_image(logger.run_id, pil, f"{tag.replace('/', '_')}_step{step:07d}.png")
        elif name == "CometLogger":
            experiment.log_image(pil, name=tag, step=step)
        else:
            continue
        took.append(name)
    return took
