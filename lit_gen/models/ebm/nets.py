"""Energy networks E(x) -> one scalar per example.

Smooth activations (SiLU) because the sampler follows grad_x E: a piecewise-linear net gives a piecewise
constant gradient field. No normalisation layers: batch statistics would couple the energies of the
examples of a batch (and of data with samples), which the contrastive objective must not see.
"""

from __future__ import annotations

import math
from itertools import pairwise

from torch import Tensor, nn

from lit_gen.errors import ConfigurationError
from lit_gen.nn.blocks import downsampled_sizes


class ConvEnergy(nn.Module):
    """A 3x3 conv, then strided 3x3 conv stages (ceil halving to <= 4x4, widths doubling from ``channels``,
    capped at 8x; ``depth`` convs per stage), then a linear read-out; works for 8x8, 28x28, 32x32 and any
    channel count. ``depth=1`` is the lean net of short-run EBMs (Nijkamp et al. 2019): the sampler
    evaluates it tens of times per training step, so its cost multiplies."""

    def __init__(self, data_shape: tuple[int, ...], channels: int = 32, depth: int = 1) -> None:
        super().__init__()
        if len(data_shape) != 3:
            raise ConfigurationError(f"ConvEnergy needs image data (C, H, W), got shape {tuple(data_shape)}")
        if depth < 1:
            raise ConfigurationError(f"depth must be >= 1, got {depth}")
        sizes = downsampled_sizes((data_shape[1], data_shape[2]))
        widths = [channels * min(2**i, 8) for i in range(len(sizes))]
        layers: list[nn.Module] = [nn.Conv2d(data_shape[0], widths[0], 3, padding=1), nn.SiLU()]
        for w_in, w_out in pairwise(widths):
            layers += [nn.Conv2d(w_in, w_out, 3, stride=2, padding=1), nn.SiLU()]
            for _ in range(depth - 1):
                layers += [nn.Conv2d(w_out, w_out, 3, padding=1), nn.SiLU()]
        layers += [nn.Flatten(), nn.Linear(widths[-1] * math.prod(sizes[-1]), 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(1)


class MLPEnergy(nn.Module):
    """For flat / toy data of shape (D,)."""

    def __init__(self, data_shape: tuple[int, ...], hidden: int = 128, depth: int = 3) -> None:
        super().__init__()
        dims = [math.prod(data_shape)] + [hidden] * depth
        layers: list[nn.Module] = []
        for a, b in pairwise(dims):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(hidden, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x.flatten(1)).squeeze(1)
