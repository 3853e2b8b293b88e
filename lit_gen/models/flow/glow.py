"""Glow (Kingma & Dhariwal 2018): multi-scale flow of steps (actnorm, invertible 1x1 conv, affine coupling).

Each of the L scales squeezes, applies K steps, then (except the last) factors out half the channels,
whose prior is a Gaussian conditioned on the kept half (:class:`~lit_gen.models.flow.transforms.Gaussianize`).
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from lit_gen.errors import ConfigurationError
from lit_gen.models.flow.transforms import (
    ActNorm,
    AffineCoupling,
    CompositeTransform,
    Gaussianize,
    InvertibleConv1x1,
    MultiscaleFlow,
    ScaleFn,
    Squeeze,
    Transform,
    ZeroConv2d,
)


class GlowCouplingNet(nn.Sequential):
    """Glow's conditioner: 3x3 conv, ReLU, 1x1 conv, ReLU, zero-initialised 3x3 conv."""

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int) -> None:
        super().__init__(
            nn.Conv2d(in_channels, hidden_channels, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 1),
            nn.ReLU(),
            ZeroConv2d(hidden_channels, out_channels),
        )


def glow_step(channels: int, hidden_channels: int, scale_fn: ScaleFn = "sigmoid") -> CompositeTransform:
    """One flow step: actnorm, invertible 1x1 convolution (a learned channel mix), channel-mask coupling."""
    return CompositeTransform([
        ActNorm(channels),
        InvertibleConv1x1(channels),
        AffineCoupling(channels, lambda i, o: GlowCouplingNet(i, o, hidden_channels), mask="channel",
                       scale_fn=scale_fn),
    ])


def check_scales(data_shape: tuple[int, ...], num_scales: int, num_squeezes: int) -> None:
    """Clear errors for shapes a multi-scale flow cannot take (each squeeze halves height and width)."""
    if len(data_shape) != 3:
        raise ConfigurationError(f"multi-scale flows need image data (C, H, W), got shape {tuple(data_shape)}")
    if num_scales < 1:
        raise ConfigurationError(f"num_scales must be >= 1, got {num_scales}")
    _, height, width = data_shape
    factor = 2**num_squeezes
    if height % factor or width % factor:
        raise ConfigurationError(f"num_scales={num_scales} squeezes {num_squeezes} times: height and width must be "
                         f"divisible by {factor}, got {height}x{width}")


def build_glow(data_shape: tuple[int, ...], num_scales: int = 2, steps_per_scale: int = 8,
               hidden_channels: int = 128, coupling: Literal["affine", "additive"] = "affine",
               split_prior: bool = True) -> Transform:
    """The Glow transform for images of ``data_shape``: ``(B, C, H, W)`` to a latent of the same shape."""
    check_scales(data_shape, num_scales, num_squeezes=num_scales)
    if coupling not in ("affine", "additive"):
        raise ConfigurationError(f"coupling must be 'affine' or 'additive', got {coupling!r}")
    scale_fn: ScaleFn = "sigmoid" if coupling == "affine" else "additive"
    c, h, w = data_shape
    levels, shapes, splits = [], [], []
    for index in range(num_scales):
        in_shape = (c, h, w)
        c, h, w = 4 * c, h // 2, w // 2
        levels.append(CompositeTransform([Squeeze()] + [glow_step(c, hidden_channels, scale_fn)
                                                        for _ in range(steps_per_scale)]))
        shapes.append((in_shape, (c, h, w)))
        if index < num_scales - 1:
            factored, kept = c - c // 2, c // 2
            splits.append(Gaussianize(factored, kept) if split_prior else None)
            c = kept
    return MultiscaleFlow(levels, shapes, splits)
