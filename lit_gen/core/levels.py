"""The data's discrete levels and the maps between data space and the spaces models work in.

Data convention (see the datamodules): a dimension with K discrete levels holds ``k / (K - 1)`` for an
integer level ``k`` in ``[0, K)``. Models that work in [-1, 1] map there with :func:`to_signed` and back
with :func:`from_signed`; samples are snapped back onto the K levels with :func:`snap_to_levels`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lit_gen.core import seeds
from lit_gen.core.seeds import RandomSource


def to_levels(x: Tensor, num_levels: int) -> Tensor:
    """Integer levels ``k`` (long) of data stored as ``k / (K - 1)``."""
    return torch.round(x.float() * (num_levels - 1)).clamp_(0, num_levels - 1).long()


def from_levels(k: Tensor, num_levels: int) -> Tensor:
    """Inverse of :func:`to_levels`: levels back to data space [0, 1]."""
    return k.float() / (num_levels - 1)


def quantize(x: Tensor, num_levels: int) -> Tensor:
    """Snap values in [0, 1] to the nearest of the K data levels (used on generated samples)."""
    return from_levels(to_levels(x.clamp(0, 1), num_levels), num_levels)


def snap_to_levels(x: Tensor, num_levels: int | None) -> Tensor:
    """Generated samples onto the data's K levels; continuous data (``num_levels=None``) passes through."""
    return x if num_levels is None else quantize(x, num_levels)


def to_signed(x: Tensor) -> Tensor:
    """Data space [0, 1] -> [-1, 1], the range GANs, EBMs and diffusion models work in."""
    return x * 2 - 1


def from_signed(x: Tensor) -> Tensor:
    """[-1, 1] -> data space [0, 1] (no clamping: callers snap or clamp as their sampler needs)."""
    return (x + 1) / 2


def dequantize(x: Tensor, num_levels: int, generator: RandomSource = None) -> Tensor:
    """Uniform dequantization ``y = (k + u) / K`` with ``u ~ U[0, 1)``: a point in the level's bin."""
    k = to_levels(x, num_levels).to(torch.float32)
    u = seeds.rand(k.shape, generator=generator, device=k.device, dtype=torch.float32)
    return (k + u) / num_levels


def dequantization_nats(num_dims: int, num_levels: int) -> float:
    """The ``D * log K`` term added to a density's ``-log p(y)`` on [0, 1]^D (bin volume K^-D)."""
    return num_dims * math.log(num_levels)
