"""What the latent family's tests share: tiny first stages (VQ-VAE, autoencoder), latent-model factories and
first-stage checkpoints written as ``fit`` writes them (state dict, hyperparameters and the ``lit_gen``
record), without a Trainer."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import torch

from lit_gen.models.diffusion import Diffusion
from lit_gen.models.flow_matching import FlowMatching
from lit_gen.models.latent import VQVAE, Autoencoder
from lit_gen.nn.unet import UNet

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


def tiny_autoencoder(seed: int = 0, **overrides: Any) -> Autoencoder:
    """A digits Autoencoder with a 2x4x4 latent map."""
    torch.manual_seed(seed)
    args = {**DIGITS, "latent_channels": 2, "channels": 8, "num_downsamples": 1, **overrides}
    return Autoencoder(**args)


def tiny_latent_model(kind: str = "diffusion", **overrides: Any) -> functools.partial:
    """A latent-model factory as the CLI gives one: Diffusion (T = 10, no clipping) or FlowMatching, each on a
    one-level U-Net of 16 channels (at 8, a group norm of one channel per group would remove the time and
    class embeddings)."""
    backbone = functools.partial(UNet, channels=16, channel_mults=[1], num_res_blocks=1, dropout=0.0)
    if kind == "diffusion":
        return functools.partial(Diffusion, backbone=backbone, **{"num_timesteps": 10, "clip_x0": False, **overrides})
    return functools.partial(FlowMatching, backbone=backbone, **overrides)
