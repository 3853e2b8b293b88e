"""RealNVP (Dinh et al. 2017): checkerboard and channel-mask affine couplings in a multi-scale architecture.

Each scale but the last: 3 checkerboard couplings, squeeze, 3 channel couplings, factor out half the
channels; the last scale: 4 checkerboard couplings. Coupling nets are small ResNets. Deviation from the
paper: ActNorm after each coupling instead of batch normalisation, so the density does not depend on the
batch (exact per-example likelihoods in train and eval mode alike).
"""

from __future__ import annotations

from torch import Tensor, nn

from lit_gen.models.flow.glow import check_scales
from lit_gen.models.flow.transforms import (
    ActNorm,
    AffineCoupling,
    CompositeTransform,
    Gaussianize,
    MultiscaleFlow,
    Squeeze,
    Transform,
    ZeroConv2d,
)
from lit_gen.nn.blocks import ResidualBlock, group_norm


class ResNetCouplingNet(nn.Module):
    """3x3 conv in, ``num_blocks`` residual blocks, GroupNorm + SiLU, zero-initialised 3x3 conv out."""

    def __init__(self, in_channels: int, out_channels: int, hidden_channels: int, num_blocks: int) -> None:
        super().__init__()
        self.inp = nn.Conv2d(in_channels, hidden_channels, 3, padding=1)
        self.blocks = nn.ModuleList([ResidualBlock(hidden_channels) for _ in range(num_blocks)])
        self.norm = group_norm(hidden_channels)
        self.out = ZeroConv2d(hidden_channels, out_channels)

    def forward(self, x: Tensor) -> Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h = block(h)
        return self.out(nn.functional.silu(self.norm(h)))


def _couplings(channels: int, mask: str, count: int, hidden: int, num_blocks: int) -> list[Transform]:
    """``count`` couplings of alternating parity, each followed by an actnorm."""

    def net(in_channels: int, out_channels: int) -> nn.Module:
        return ResNetCouplingNet(in_channels, out_channels, hidden, num_blocks)

    layers: list[Transform] = []
    for parity in range(count):
        layers.append(AffineCoupling(channels, net, mask=mask, parity=parity, scale_fn="exp_tanh"))
        layers.append(ActNorm(channels))
    return layers


def build_realnvp(data_shape: tuple[int, ...], num_scales: int = 2, hidden_channels: int = 64,
                  num_blocks: int = 2, split_prior: bool = False) -> Transform:
    """The RealNVP transform for images of ``data_shape`` (latent of the same shape)."""
    check_scales(data_shape, num_scales, num_squeezes=num_scales - 1)
    c, h, w = data_shape
    levels, shapes, splits = [], [], []
    for index in range(num_scales):
        in_shape = (c, h, w)
        if index == num_scales - 1:
            levels.append(CompositeTransform(_couplings(c, "checkerboard", 4, hidden_channels, num_blocks)))
            shapes.append((in_shape, in_shape))
            break
        layers = _couplings(c, "checkerboard", 3, hidden_channels, num_blocks)
        c, h, w = 4 * c, h // 2, w // 2
        layers += [Squeeze(), *_couplings(c, "channel", 3, hidden_channels, num_blocks)]
        levels.append(CompositeTransform(layers))
        shapes.append((in_shape, (c, h, w)))
        factored, kept = c - c // 2, c // 2
        splits.append(Gaussianize(factored, kept) if split_prior else None)
        c = kept
    return MultiscaleFlow(levels, shapes, splits)
