"""Generators and discriminators sized from the data shape (8x8 digits, 28x28, 32x32, any C).

Spatial sizes follow :func:`lit_gen.nn.blocks.downsampled_sizes` (stride-2 stages down to <= 4x4, ceil
halving), so a generator upsamples to every size exactly (4 -> 7 -> 14 -> 28) and a discriminator
mirrors it. Widths double per stage from ``channels`` at full resolution, capped at 8x.

- DCGAN style (Radford et al. 2016): generator = projection, then (stride-2 transposed conv, batch norm,
  ReLU) per stage, tanh output; discriminator = strided 3x3 convs with LeakyReLU and no normalisation
  (batch norm in the critic would break WGAN-GP's per-example gradient penalty).
- ResNet style (Miyato et al. 2018, SNGAN): pre-activation residual up/down blocks, global sum pooling.

Class conditioning: conditional batch norm in the generator (per-class gain and bias, de Vries et al.
2017) and a projection discriminator (Miyato & Koyama 2018): D(x, y) = psi(phi(x)) + <embed(y), phi(x)>.
Generators return images in [-1, 1]; discriminators return one raw score per example, shape (B,).
"""

from __future__ import annotations

import math
from itertools import pairwise

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_gen.errors import ConfigurationError, require_labels
from lit_gen.nn.blocks import downsampled_sizes


def stage_widths(num_sizes: int, channels: int) -> list[int]:
    """Widths per resolution, full resolution first: channels, 2 channels, ... capped at 8 channels."""
    return [channels * min(2**i, 8) for i in range(num_sizes)]


def image_sizes(data_shape: tuple[int, ...]) -> list[tuple[int, int]]:
    if len(data_shape) != 3:
        raise ConfigurationError(f"GAN nets need image data (C, H, W), got shape {tuple(data_shape)}")
    return downsampled_sizes((data_shape[1], data_shape[2]))


def apply_spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral normalisation (one power iteration per forward) on every conv, linear and embedding."""
    for child in list(module.modules()):
        if isinstance(child, (nn.Conv2d, nn.Linear)):
            nn.utils.parametrizations.spectral_norm(child)
        elif isinstance(child, nn.Embedding):
            nn.utils.parametrizations.spectral_norm(child, name="weight")
    return module


class ConditionalBatchNorm2d(nn.Module):
    """Batch norm whose gain and bias come from the class (plain affine batch norm when unconditional)."""

    def __init__(self, channels: int, num_classes: int | None = None) -> None:
        super().__init__()
        self.conditional = num_classes is not None
        self.norm = nn.BatchNorm2d(channels, affine=not self.conditional)
        if self.conditional:
            self.gain = nn.Embedding(num_classes, channels)
            self.bias = nn.Embedding(num_classes, channels)
            nn.init.ones_(self.gain.weight)
            nn.init.zeros_(self.bias.weight)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        h = self.norm(x)
        if not self.conditional:
            return h
        require_labels("generator", labels)
        return h * self.gain(labels)[:, :, None, None] + self.bias(labels)[:, :, None, None]


class ProjectionHead(nn.Module):
    """psi(phi) + <embed(y), phi>: an unconditional score plus the class projection when conditional."""

    def __init__(self, features: int, num_classes: int | None = None) -> None:
        super().__init__()
        self.linear = nn.Linear(features, 1)
        self.embed = nn.Embedding(num_classes, features) if num_classes is not None else None
        if self.embed is not None:
            nn.init.normal_(self.embed.weight, std=0.02)

    def forward(self, phi: Tensor, labels: Tensor | None = None) -> Tensor:
        out = self.linear(phi).squeeze(1)
        if self.embed is None:
            return out
        require_labels("projection discriminator", labels)
        return out + (self.embed(labels) * phi).sum(1)


# ------------------------------------------------------------------------------------------ DCGAN
def upsampling_conv(in_ch: int, out_ch: int, size: tuple[int, int], target: tuple[int, int]) -> nn.Module:
    """A stride-2 transposed conv from ``size`` to exactly ``target`` (each side 2n or 2n - 1).

    4x4 kernels (DCGAN's, an even overlap: no checkerboard) double a side; 3x3 kernels give 2n - 1
    (the 4 -> 7 stage of 28x28 images). Four times cheaper than nearest upsampling + 3x3 conv.
    """
    if any(t not in (2 * n, 2 * n - 1) for n, t in zip(size, target)):
        raise ConfigurationError(f"cannot upsample {size} to {target} with one stride-2 stage")
    kernel = tuple(4 if t == 2 * n else 3 for n, t in zip(size, target))
    return nn.ConvTranspose2d(in_ch, out_ch, kernel, stride=2, padding=1)


class DCGANGenerator(nn.Module):
    def __init__(self, data_shape: tuple[int, ...], latent_dim: int, channels: int = 64,
                 num_classes: int | None = None) -> None:
        super().__init__()
        sizes = image_sizes(data_shape)
        widths = stage_widths(len(sizes), channels)
        self.start_shape = (widths[-1], *sizes[-1])
        self.project = nn.Linear(latent_dim, math.prod(self.start_shape))
        self.norms = nn.ModuleList([ConditionalBatchNorm2d(widths[-1], num_classes)])
        self.stages = nn.ModuleList()
        pairs = list(zip(reversed(sizes), reversed(sizes[:-1])))
        for (small, size), w_in, w_out in zip(pairs, reversed(widths[1:]), reversed(widths[:-1])):
            self.stages.append(upsampling_conv(w_in, w_out, small, size))
            self.norms.append(ConditionalBatchNorm2d(w_out, num_classes))
        self.out = nn.Conv2d(widths[0], data_shape[0], 3, padding=1)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        h = F.relu(self.norms[0](self.project(z).view(-1, *self.start_shape), labels))
        for stage, norm in zip(self.stages, self.norms[1:]):
            h = F.relu(norm(stage(h), labels))
        return torch.tanh(self.out(h))


class DCGANDiscriminator(nn.Module):
    def __init__(self, data_shape: tuple[int, ...], channels: int = 64, num_classes: int | None = None) -> None:
        super().__init__()
        sizes = image_sizes(data_shape)
        widths = stage_widths(len(sizes), channels)
        layers: list[nn.Module] = [nn.Conv2d(data_shape[0], widths[0], 3, padding=1), nn.LeakyReLU(0.2)]
        for w_in, w_out in pairwise(widths):
            layers += [nn.Conv2d(w_in, w_out, 3, stride=2, padding=1), nn.LeakyReLU(0.2)]
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.head = ProjectionHead(widths[-1] * math.prod(sizes[-1]), num_classes)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.head(self.features(x), labels)


# ----------------------------------------------------------------------------------------- ResNet
class GeneratorBlock(nn.Module):
    """(CBN, ReLU, upsample, conv, CBN, ReLU, conv) + upsampled 1x1 shortcut."""

    def __init__(self, in_ch: int, out_ch: int, size: tuple[int, int], num_classes: int | None) -> None:
        super().__init__()
        self.size = size
        self.norm1 = ConditionalBatchNorm2d(in_ch, num_classes)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.norm2 = ConditionalBatchNorm2d(out_ch, num_classes)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        h = F.interpolate(F.relu(self.norm1(x, labels)), size=self.size, mode="nearest")
        h = self.conv2(F.relu(self.norm2(self.conv1(h), labels)))
        return self.skip(F.interpolate(x, size=self.size, mode="nearest")) + h


class DiscriminatorBlock(nn.Module):
    """(ReLU, conv, ReLU, conv, average-pool to ``size``) + pooled 1x1 shortcut; no leading ReLU when first."""

    def __init__(self, in_ch: int, out_ch: int, size: tuple[int, int] | None, first: bool = False) -> None:
        super().__init__()
        self.size, self.first = size, first
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if (in_ch != out_ch or size is not None) else nn.Identity()

    def _pool(self, h: Tensor) -> Tensor:
        return h if self.size is None else F.adaptive_avg_pool2d(h, self.size)

    def forward(self, x: Tensor) -> Tensor:
        h = x if self.first else F.relu(x)
        h = self.conv2(F.relu(self.conv1(h)))
        if self.first:  # SNGAN's optimized first block: pool before the shortcut conv
            return self._pool(h) + self.skip(self._pool(x))
        return self._pool(h) + self._pool(self.skip(x))


class ResNetGenerator(nn.Module):
    def __init__(self, data_shape: tuple[int, ...], latent_dim: int, channels: int = 64,
                 num_classes: int | None = None) -> None:
        super().__init__()
        sizes = image_sizes(data_shape)
        widths = stage_widths(len(sizes), channels)
        self.start_shape = (widths[-1], *sizes[-1])
        self.project = nn.Linear(latent_dim, math.prod(self.start_shape))
        self.blocks = nn.ModuleList(
            GeneratorBlock(w_in, w_out, size, num_classes)
            for size, w_in, w_out in zip(reversed(sizes[:-1]), reversed(widths[1:]), reversed(widths[:-1]))
        )
        self.norm = ConditionalBatchNorm2d(widths[0], num_classes)
        self.out = nn.Conv2d(widths[0], data_shape[0], 3, padding=1)

    def forward(self, z: Tensor, labels: Tensor | None = None) -> Tensor:
        h = self.project(z).view(-1, *self.start_shape)
        for block in self.blocks:
            h = block(h, labels)
        return torch.tanh(self.out(F.relu(self.norm(h, labels))))


class ResNetDiscriminator(nn.Module):
    def __init__(self, data_shape: tuple[int, ...], channels: int = 64, num_classes: int | None = None) -> None:
        super().__init__()
        sizes = image_sizes(data_shape)
        widths = stage_widths(len(sizes), channels)
        blocks: list[nn.Module] = []
        in_ch = data_shape[0]
        for i, (size, w_out) in enumerate(zip(sizes[1:], widths[1:])):
            blocks.append(DiscriminatorBlock(in_ch, w_out, size, first=i == 0))
            in_ch = w_out
        if not blocks:  # an image already <= 4x4: one block at full resolution
            blocks.append(DiscriminatorBlock(in_ch, widths[0], None, first=True))
            in_ch = widths[0]
        blocks.append(DiscriminatorBlock(in_ch, in_ch, None))  # one more block at the lowest resolution
        self.blocks = nn.Sequential(*blocks)
        self.head = ProjectionHead(in_ch, num_classes)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        phi = F.relu(self.blocks(x)).sum(dim=(2, 3))  # global sum pooling
        return self.head(phi, labels)


def build_networks(architecture: str, data_shape: tuple[int, ...], latent_dim: int, generator_channels: int,
                   discriminator_channels: int, num_classes: int | None,
                   spectral_norm: bool) -> tuple[nn.Module, nn.Module]:
    """(generator, discriminator) of ``architecture`` ("dcgan" or "resnet")."""
    if architecture == "dcgan":
        gen = DCGANGenerator(data_shape, latent_dim, generator_channels, num_classes)
        disc = DCGANDiscriminator(data_shape, discriminator_channels, num_classes)
    elif architecture == "resnet":
        gen = ResNetGenerator(data_shape, latent_dim, generator_channels, num_classes)
        disc = ResNetDiscriminator(data_shape, discriminator_channels, num_classes)
    else:
        raise ConfigurationError(f"architecture must be 'dcgan' or 'resnet', got {architecture!r}")
    if spectral_norm:
        apply_spectral_norm(disc)
    return gen, disc
