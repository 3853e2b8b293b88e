"""What the latent family's tests share: tiny first stages and first-stage checkpoints written as ``fit``
writes them (state dict, hyperparameters and the ``lit_gen`` record), without a Trainer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lit_gen.models.latent import VQVAE

DIGITS = {"data_shape": (1, 8, 8), "num_levels": 17, "num_classes": 10}
TINY_PRIOR = {"channels": 4, "num_layers": 2, "kernel_size": 3, "head_channels": 8}


def tiny_vqvae(seed: int = 0, **overrides: Any) -> VQVAE:
    torch.manual_seed(seed)
    args = {**DIGITS, "num_codes": 8, "code_dim": 4, "channels": 8, "num_downsamples": 1, **overrides}
    return VQVAE(**args)


def save_first_stage(model: VQVAE, path: Path) -> Path:
    """``model`` as a lit-gen checkpoint file with the entries a second stage reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "hyper_parameters": dict(model.hparams),
                "lit_gen": {**model.checkpoint_identity(), "version": "test"}}, path)
    return path
