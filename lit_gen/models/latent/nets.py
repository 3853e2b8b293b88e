"""The VQ-VAE's convolutional encoder and decoder, sized from the data shape.

The encoder halves the spatial size ``num_downsamples`` times (3x3, stride 2, padding 1: ``ceil(n / 2)``,
so 28 -> 14 -> 7 and 8 -> 4 -> 2) and ends in a 1x1 convolution to the code dimension; the decoder mirrors
it, upsampling to the exact sizes on the way back, and returns likelihood parameters of shape
``(B, P, *data_shape)`` (P parameters per dimension). Widths stay constant, as in the paper's nets.

Neither ends in a normalization: on a small map (a 1x1 code map, a 2x2 image) a group norm over a group of
one channel would set every output to the same value, whatever the input.
"""

from __future__ import annotations

from torch import Tensor, nn

from lit_gen.nn.blocks import ResidualBlock


def halved_sizes(size: tuple[int, int], steps: int) -> list[tuple[int, int]]:
    """Spatial sizes after each of ``steps`` stride-2 stages, the input size first."""
    sizes = [tuple(size)]
    for _ in range(steps):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


class CodeEncoder(nn.Module):
    """Images ``(B, C, H, W)`` in [-1, 1] -> encoder outputs ``(B, code_dim, h, w)``."""

    def __init__(self, in_channels: int, code_dim: int, channels: int, num_downsamples: int,
                 num_res_blocks: int = 1) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_channels, channels, 3, padding=1)]
        for _ in range(num_downsamples):
            layers += [*(ResidualBlock(channels) for _ in range(num_res_blocks)),
                       nn.Conv2d(channels, channels, 3, stride=2, padding=1)]
        layers += [*(ResidualBlock(channels) for _ in range(num_res_blocks)), nn.SiLU(), nn.Conv2d(channels, code_dim, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class CodeDecoder(nn.Module):
    """Quantized maps ``(B, code_dim, h, w)`` -> likelihood parameters ``(B, P, C, H, W)``."""

    def __init__(self, data_shape: tuple[int, int, int], code_dim: int, params_per_dim: int, channels: int,
                 num_downsamples: int, num_res_blocks: int = 1) -> None:
        super().__init__()
        out_channels, height, width = data_shape
        sizes = halved_sizes((height, width), num_downsamples)
        self.data_shape, self.params_per_dim = tuple(data_shape), params_per_dim
        layers: list[nn.Module] = [nn.Conv2d(code_dim, channels, 3, padding=1),
                                   *(ResidualBlock(channels) for _ in range(num_res_blocks))]
        for size in reversed(sizes[:-1]):
            layers += [nn.Upsample(size=size, mode="nearest"), nn.Conv2d(channels, channels, 3, padding=1),
                       *(ResidualBlock(channels) for _ in range(num_res_blocks))]
        layers += [nn.SiLU(), nn.Conv2d(channels, out_channels * params_per_dim, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor) -> Tensor:
        h = self.net(z)
        return h.view(h.shape[0], self.params_per_dim, *self.data_shape)
