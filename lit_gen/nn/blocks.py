"""Building blocks more than one family uses."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


def group_norm(channels: int, max_groups: int = 8) -> nn.GroupNorm:
    """GroupNorm with the largest group count <= max_groups that divides ``channels``."""
    groups = math.gcd(channels, max_groups)
    return nn.GroupNorm(groups, channels)


class ResidualBlock(nn.Module):
    """Pre-activation residual block: (GroupNorm, SiLU, 3x3 conv) twice, 1x1 skip when widths differ.

    An optional embedding (time, class) is projected and added between the two convolutions.
    """

    def __init__(self, in_channels: int, out_channels: int | None = None, emb_dim: int | None = None,
                 dropout: float = 0.0) -> None:
        super().__init__()
        out_channels = out_channels or in_channels
        self.norm1 = group_norm(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_dim, out_channels) if emb_dim else None
        self.norm2 = group_norm(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor | None = None) -> Tensor:
        h = self.conv1(torch.nn.functional.silu(self.norm1(x)))
        if self.emb is not None and emb is not None:
            h = h + self.emb(torch.nn.functional.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(torch.nn.functional.silu(self.norm2(h))))
        return self.skip(x) + h


def downsampled_sizes(size: tuple[int, int], min_size: int = 4) -> list[tuple[int, int]]:
    """Spatial sizes after each stride-2 stage (3x3, padding 1: ceil(n / 2)) until the side is <= min_size.

    Returns the sizes *including* the input size, so a decoder can upsample back to each exactly.
    """
    sizes = [size]
    while min(sizes[-1]) > min_size:
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes
