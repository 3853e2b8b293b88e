"""Paths between latents: spherical interpolation for Gaussian latents, linear otherwise."""

from __future__ import annotations

import torch
from torch import Tensor


def slerp(start: Tensor, end: Tensor, weights: Tensor) -> Tensor:
    """Spherical interpolation of each pair of rows of ``start`` and ``end`` (``(N, ...)``) at ``weights``
    (``(S,)`` in [0, 1]): ``(N, S, ...)``. High-dimensional Gaussian samples lie near a sphere; a straight
    line between two of them passes through the low-norm interior the model never saw, the great circle
    keeps the norm typical. Parallel pairs fall back to the straight line."""
    a, b = start.flatten(1).double(), end.flatten(1).double()
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1.0, 1.0))[:, None]  # (N, 1)
    t = weights.double().to(a.device)[None, :]  # (1, S)
    sin = torch.sin(omega)
    parallel = sin.abs() < 1e-6
    safe = torch.where(parallel, torch.ones_like(sin), sin)
    wa = torch.where(parallel, 1 - t, torch.sin((1 - t) * omega) / safe)
    wb = torch.where(parallel, t, torch.sin(t * omega) / safe)
    path = wa[..., None] * a[:, None] + wb[..., None] * b[:, None]  # (N, S, D)
    return path.to(start.dtype).view(start.shape[0], weights.shape[0], *start.shape[1:])


def lerp(start: Tensor, end: Tensor, weights: Tensor) -> Tensor:
    """Straight-line interpolation, the same shapes as :func:`slerp`."""
    t = weights.to(start.device, start.dtype).view(1, -1, *([1] * (start.dim() - 1)))
    return start[:, None] + t * (end - start)[:, None]
