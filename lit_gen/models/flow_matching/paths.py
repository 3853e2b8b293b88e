"""Probability paths between noise and data: ``x_t = alpha(t) x1 + sigma(t) x0``, x0 ~ N(0, I), x1 the data.

Time convention of the family: t = 0 is noise (alpha = 0, sigma = 1), t = 1 is data (alpha = 1, sigma = 0).
The conditional velocity the network regresses is ``d x_t / dt = alpha'(t) x1 + sigma'(t) x0``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lit_gen.errors import ConfigurationError


def _per_example(t: Tensor, like: Tensor) -> Tensor:
    """A (B,) time broadcast against a (B, *shape) batch."""
    return t.view(-1, *([1] * (like.dim() - 1))).to(like.dtype)


class ProbabilityPath:
    """alpha, sigma and their derivatives; subclasses name one path."""

    name = ""

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(alpha, sigma, d alpha / dt, d sigma / dt)`` at t."""
        raise NotImplementedError

    def interpolate(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        alpha, sigma, _, _ = self.coefficients(_per_example(t, x1))
        return alpha * x1 + sigma * x0

    def velocity(self, x0: Tensor, x1: Tensor, t: Tensor) -> Tensor:
        _, _, d_alpha, d_sigma = self.coefficients(_per_example(t, x1))
        return d_alpha * x1 + d_sigma * x0


class StraightPath(ProbabilityPath):
    """Rectified flow / the conditional OT path: x_t = (1 - t) x0 + t x1, velocity x1 - x0."""

    name = "straight"

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        return t, 1 - t, torch.ones_like(t), -torch.ones_like(t)


class VariancePreservingPath(ProbabilityPath):
    """The trigonometric variance-preserving path alpha = sin(pi t / 2), sigma = cos(pi t / 2):
    alpha^2 + sigma^2 = 1, so unit-variance data keeps unit variance along the way."""

    name = "vp"

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        angle = t * (math.pi / 2)
        return torch.sin(angle), torch.cos(angle), (math.pi / 2) * torch.cos(angle), -(math.pi / 2) * torch.sin(angle)


PATHS = {"straight": StraightPath, "vp": VariancePreservingPath}


def path_from_name(name: str) -> ProbabilityPath:
    if name not in PATHS:
        raise ConfigurationError(f"path must be one of {', '.join(PATHS)}, got {name!r}")
    return PATHS[name]()


__all__ = ["PATHS", "ProbabilityPath", "StraightPath", "VariancePreservingPath", "path_from_name"]
