"""Encoders and decoders of the VAE, sized from the data shape.

Convolutional nets for images (stride-2 stages down to <= 4x4, mirrored by the decoder with exact
upsampling sizes, so 8x8, 28x28 and 32x32 all work); MLPs for toy / tabular data of shape (D,).
A decoder returns likelihood parameters of shape ``(B, P, *data_shape)`` (P parameters per dimension).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lit_gen.nn.blocks import ResidualBlock, downsampled_sizes, group_norm


class ConvEncoder(nn.Module):
    def __init__(self, data_shape: tuple[int, ...], latent_dim: int, channels: int = 32,
                 cond_dim: int = 0) -> None:
        super().__init__()
        in_ch, height, width = data_shape
        sizes = downsampled_sizes((height, width))
        layers: list[nn.Module] = [nn.Conv2d(in_ch, channels, 3, padding=1)]
        ch = channels
        for _ in sizes[1:]:
            out = min(ch * 2, 8 * channels)
            layers += [ResidualBlock(ch), nn.Conv2d(ch, out, 3, stride=2, padding=1)]
            ch = out
        layers += [ResidualBlock(ch), group_norm(ch), nn.SiLU(), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        flat = ch * math.prod(sizes[-1])
        self.head = nn.Linear(flat + cond_dim, 2 * latent_dim)

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = self.features(x)
        if cond is not None:
            h = torch.cat([h, cond], dim=1)
        mean, log_var = self.head(h).chunk(2, dim=1)
        return mean, log_var.clamp(-12.0, 8.0)


class ConvDecoder(nn.Module):
    def __init__(self, data_shape: tuple[int, ...], latent_dim: int, params_per_dim: int,
                 channels: int = 32, cond_dim: int = 0) -> None:
        super().__init__()
        out_ch, height, width = data_shape
        sizes = downsampled_sizes((height, width))
        widths = [channels]
        for _ in sizes[1:]:
            widths.append(min(widths[-1] * 2, 8 * channels))
        self.data_shape = tuple(data_shape)
        self.params_per_dim = params_per_dim
        self.start_shape = (widths[-1], *sizes[-1])
        self.project = nn.Linear(latent_dim + cond_dim, math.prod(self.start_shape))
        layers: list[nn.Module] = [ResidualBlock(widths[-1])]
        for size, w_in, w_out in zip(reversed(sizes[:-1]), reversed(widths[1:]), reversed(widths[:-1])):
            layers += [nn.Upsample(size=size, mode="nearest"), nn.Conv2d(w_in, w_out, 3, padding=1),
                       ResidualBlock(w_out)]
        layers += [group_norm(widths[0]), nn.SiLU(), nn.Conv2d(widths[0], out_ch * params_per_dim, 3, padding=1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        if cond is not None:
            z = torch.cat([z, cond], dim=1)
        h = self.net(self.project(z).view(-1, *self.start_shape))
        return h.view(h.shape[0], self.params_per_dim, *self.data_shape)


class MLPEncoder(nn.Module):
    def __init__(self, data_shape: tuple[int, ...], latent_dim: int, hidden: int = 256,
                 cond_dim: int = 0, depth: int = 2) -> None:
        super().__init__()
        dims = [math.prod(data_shape) + cond_dim] + [hidden] * depth
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(hidden, 2 * latent_dim))

    def forward(self, x: Tensor, cond: Tensor | None = None) -> tuple[Tensor, Tensor]:
        h = x.flatten(1)
        if cond is not None:
            h = torch.cat([h, cond], dim=1)
        mean, log_var = self.net(h).chunk(2, dim=1)
        return mean, log_var.clamp(-12.0, 8.0)


class MLPDecoder(nn.Module):
    def __init__(self, data_shape: tuple[int, ...], latent_dim: int, params_per_dim: int,
                 hidden: int = 256, cond_dim: int = 0, depth: int = 2) -> None:
        super().__init__()
        self.data_shape = tuple(data_shape)
        self.params_per_dim = params_per_dim
        dims = [latent_dim + cond_dim] + [hidden] * depth
        layers: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(a, b), nn.SiLU()]
        self.net = nn.Sequential(*layers, nn.Linear(hidden, params_per_dim * math.prod(data_shape)))

    def forward(self, z: Tensor, cond: Tensor | None = None) -> Tensor:
        if cond is not None:
            z = torch.cat([z, cond], dim=1)
        return self.net(z).view(z.shape[0], self.params_per_dim, *self.data_shape)
