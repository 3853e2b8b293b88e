"""Gated PixelCNN (van den Oord et al. 2016): a vertical and a horizontal stack, no blind spot.

Shared by the autoregressive family (a prior over pixels) and the latent family (a prior over a VQ-VAE's
code map), hence on this floor.

Ordering: raster scan over pixels, and within a pixel channel by channel (R < G < B). The output for
sub-pixel (c, i, j) is a function of every channel of the pixels before (i, j) and of channels < c of
(i, j) itself, and of nothing else. How the layers keep that:

- Vertical stack: sees rows strictly above. Its input is the image shifted down one row; each layer's
  ``(k//2 + 1) x k`` kernel looks at the current and k//2 rows above of the layer below, so its
  receptive field grows upwards and sideways without ever reaching row i.
- Horizontal stack: sees row i, columns <= j, through a ``1 x (k//2 + 1)`` kernel; the tap on the
  current pixel is channel-masked. Features are split into C contiguous groups (group c serves colour
  c); at the current pixel group c reads input groups < c in the first layer (mask type A, the pixel's
  own value must not leak) and <= c afterwards (type B). All other taps see every channel.
- The vertical stack feeds the horizontal one by a 1x1 convolution each layer: what it carries is
  strictly above, hence allowed for every channel group. Nothing flows back, so the horizontal
  stack's knowledge of row i never reaches the vertical one: no blind spot and no leak.
- Output: two type-B 1x1 convolutions; the output parameters of colour c come from group c.

A constant ones-channel goes in with the image (group -1: visible to all, it carries no data) so the
zero padding at the borders is distinguishable from mid-grey pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_gen.core.levels import to_signed
from lit_gen.core.seeds import RandomSource
from lit_gen.errors import ConfigurationError
from lit_gen.nn.distributions import LikelihoodHead


def channel_groups(num_channels: int, num_groups: int) -> Tensor:
    """Group id of each of ``num_channels`` channels split into ``num_groups`` contiguous groups."""
    return torch.arange(num_channels) * num_groups // num_channels


def group_mask(out_groups: Tensor, in_groups: Tensor, include_own: bool) -> Tensor:
    """(out, in) 0/1: output group g may read input group g' < g (type A) or g' <= g (type B)."""
    allowed = (
        in_groups[None, :] <= out_groups[:, None] if include_own else in_groups[None, :] < out_groups[:, None]
    )
    return allowed.float()


class MaskedConv2d(nn.Conv2d):
    """A convolution whose kernel is multiplied by a fixed 0/1 mask; explicit (left, right, top, bottom)
    padding."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: tuple[int, int],
        padding: tuple[int, int, int, int],
        mask: Tensor | None = None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size)
        self.explicit_padding = padding
        if mask is None:
            mask = torch.ones_like(self.weight)
        self.register_buffer("mask", mask.expand_as(self.weight).clone())

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(F.pad(x, self.explicit_padding), self.weight * self.mask, self.bias)


def vertical_conv(in_channels: int, out_channels: int, kernel_size: int) -> MaskedConv2d:
    """Output row i sees input rows i - k//2 .. i (all columns j - k//2 .. j + k//2)."""
    r = kernel_size // 2
    return MaskedConv2d(in_channels, out_channels, (r + 1, kernel_size), (r, r, r, 0))


def horizontal_conv(
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    in_groups: Tensor,
    out_groups: Tensor,
    include_own: bool,
) -> MaskedConv2d:
    """Output (i, j) sees input (i, j - k//2 .. j); the current-pixel tap is channel-masked."""
    r = kernel_size // 2
    mask = torch.ones(out_channels, in_channels, 1, r + 1)
    mask[:, :, 0, r] = group_mask(out_groups, in_groups, include_own)
    return MaskedConv2d(in_channels, out_channels, (1, r + 1), (r, 0, 0, 0), mask)


def pointwise_conv(
    in_channels: int, out_channels: int, in_groups: Tensor, out_groups: Tensor
) -> MaskedConv2d:
    """A type-B 1x1 convolution: group c reads groups <= c."""
    mask = group_mask(out_groups, in_groups, include_own=True)[:, :, None, None]
    return MaskedConv2d(in_channels, out_channels, (1, 1), (0, 0, 0, 0), mask)


def gate(h: Tensor) -> Tensor:
    """tanh(a) * sigmoid(b) over the two halves of the channels (each half has the same group layout)."""
    a, b = h.chunk(2, dim=1)
    return torch.tanh(a) * torch.sigmoid(b)


class GatedLayer(nn.Module):
    """One gated layer of both stacks; the first one is type A and has no residual connection."""

    def __init__(
        self,
        in_channels: int,
        channels: int,
        kernel_size: int,
        in_groups: Tensor,
        num_groups: int,
        num_classes: int | None,
        first: bool,
    ) -> None:
        super().__init__()
        groups = channel_groups(channels, num_groups)
        gate_groups = groups.repeat(2)
        self.first = first
        self.vertical = vertical_conv(in_channels, 2 * channels, kernel_size)
        self.vertical_to_horizontal = nn.Conv2d(2 * channels, 2 * channels, 1)
        self.horizontal = horizontal_conv(
            in_channels, 2 * channels, kernel_size, in_groups, gate_groups, include_own=not first
        )
        self.horizontal_out = pointwise_conv(channels, channels, groups, groups)
        self.class_bias = nn.Embedding(num_classes, 4 * channels) if num_classes else None

    def forward(self, v: Tensor, h: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        v_pre = self.vertical(v)
        h_pre = self.horizontal(h) + self.vertical_to_horizontal(v_pre)
        if self.class_bias is not None and labels is not None:
            v_bias, h_bias = self.class_bias(labels)[:, :, None, None].chunk(2, dim=1)
            v_pre, h_pre = v_pre + v_bias, h_pre + h_bias
        h_out = self.horizontal_out(gate(h_pre))
        return gate(v_pre), h_out if self.first else h + h_out


class GatedPixelCNNNet(nn.Module):
    """Images ``(B, C, H, W)`` in [-1, 1] -> parameters ``(B, P, C, H, W)`` of every sub-pixel's conditional.

    Args:
        image_channels: C.
        params_per_dim: P (K logits for the categorical head, 3M for the logistic mixture).
        channels: feature width of each stack (a multiple of C: one group per colour).
        num_layers: gated layers (the first one type A).
        kernel_size: odd kernel width k of the first layer; ``kernel_size_rest`` for the others.
        head_channels: width of the 1x1 output network.
        num_classes: class-conditional biases in every gated layer when set.
    """

    def __init__(
        self,
        image_channels: int,
        params_per_dim: int,
        channels: int = 64,
        num_layers: int = 8,
        kernel_size: int = 7,
        kernel_size_rest: int = 3,
        head_channels: int = 128,
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        c = image_channels
        if channels % c or head_channels % c:
            raise ConfigurationError(
                f"channels ({channels}) and head_channels ({head_channels}) must be multiples of the "
                f"image channels ({c}): one channel group per colour"
            )
        if num_layers < 1:
            raise ConfigurationError(f"num_layers must be >= 1, got {num_layers}")
        for k in (kernel_size, kernel_size_rest):
            if k < 1 or k % 2 == 0:
                raise ConfigurationError(f"kernel sizes must be odd and positive, got {k}")
        self.image_channels, self.params_per_dim = c, params_per_dim
        # Input groups: the ones-channel (-1, visible to all), then colour c in group c.
        input_groups = torch.cat([torch.tensor([-1]), torch.arange(c)])
        groups = channel_groups(channels, c)
        self.layers = nn.ModuleList(
            GatedLayer(
                c + 1 if i == 0 else channels,
                channels,
                kernel_size if i == 0 else kernel_size_rest,
                input_groups if i == 0 else groups,
                c,
                num_classes,
                first=i == 0,
            )
            for i in range(num_layers)
        )
        head_groups = channel_groups(head_channels, c)
        # Output channels laid out (C, P): channel c * P + p belongs to colour c.
        self.head = nn.Sequential(
            nn.ReLU(),
            pointwise_conv(channels, head_channels, groups, head_groups),
            nn.ReLU(),
            pointwise_conv(
                head_channels, c * params_per_dim, head_groups, channel_groups(c * params_per_dim, c)
            ),
        )

    def forward(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        b, c, height, width = x.shape
        x = torch.cat([torch.ones_like(x[:, :1]), x], dim=1)
        v = F.pad(x, (0, 0, 1, 0))[:, :, :height]  # shifted down one row: the vertical stack sees rows < i
        h = x
        for layer in self.layers:
            v, h = layer(v, h, labels)
        out = self.head(h).view(b, c, self.params_per_dim, height, width)
        return out.transpose(1, 2)


@torch.no_grad()
def sample_raster(
    net: GatedPixelCNNNet,
    head: LikelihoodHead,
    shape: tuple[int, int, int],
    num_samples: int,
    *,
    labels: Tensor | None = None,
    temperature: float = 1.0,
    generator: RandomSource = None,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Draw ``num_samples`` images of ``shape`` (C, H, W) in raster order, one sub-pixel per network pass.

    Values are in data space [0, 1] on ``head``'s grid; the net sees them in [-1, 1] as ``dtype``. The pass
    for row i runs on rows 0..i only: rows below cannot affect it. H*W*C passes in all.
    """
    channels, height, width = shape
    x = torch.zeros(num_samples, channels, height, width, device=device)
    for i in range(height):
        for j in range(width):
            for c in range(channels):
                params = net(to_signed(x[:, :, : i + 1]).to(dtype), labels)
                x[:, c, i, j] = head.sample(params[:, :, c, i, j, None], temperature, generator)[:, 0]
    return x
