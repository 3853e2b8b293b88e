"""The denoising U-Net (Ho et al. 2020's layout, sized by the data shape) and its diffusion-only blocks.

Backbone interface (what :class:`~lit_gen.models.diffusion.Diffusion` calls, so any ``nn.Module`` with it
can replace the U-Net from YAML): built as ``Backbone(data_shape, num_classes, **init_args)`` and called as
``forward(x, time, labels) -> Tensor`` of ``x``'s shape, where ``time`` is a float (B,) tensor in [0, 1000)
(timesteps rescaled, so embeddings do not depend on T) and ``labels`` a long (B,) tensor in [0, C] whose
value C means "no label" (classifier-free guidance's null class), or None for an unconditional model.
Condition-annealed sampling needs one more, optional keyword: ``condition_transform`` (see ``forward``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_gen.errors import ConfigurationError, check_sizes, require_labels
from lit_gen.nn.blocks import ResidualBlock, group_norm

#: ``(class embedding (B, E), labels (B,)) -> embedding (B, E)``: a sampler's change of the condition.
ConditionTransform = Callable[[Tensor, Tensor], Tensor]


class SinusoidalEmbedding(nn.Module):
    """Transformer-style features of a scalar: cos and sin at geometrically spaced frequencies."""

    def __init__(self, dim: int, max_period: float = 10000.0) -> None:
        super().__init__()
        if dim % 2:
            raise ConfigurationError(f"sinusoidal embedding needs an even dimension, got {dim}")
        half = dim // 2
        self.register_buffer("frequencies", torch.exp(-math.log(max_period) * torch.arange(half) / half),
                             persistent=False)

    def forward(self, time: Tensor) -> Tensor:
        angles = time.float()[:, None] * self.frequencies[None, :]
        return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class SelfAttention2d(nn.Module):
    """Multi-head self-attention over the pixels of a feature map, pre-normalized, residual, and starting as
    the identity (zero-initialized output projection)."""

    def __init__(self, channels: int, num_heads: int = 1) -> None:
        super().__init__()
        if channels % num_heads:
            raise ConfigurationError(f"{channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = group_norm(channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.num_heads, c // self.num_heads, h * w).unbind(1)
        out = F.scaled_dot_product_attention(q.transpose(-1, -2), k.transpose(-1, -2), v.transpose(-1, -2))
        return x + self.proj(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Stride-2 3x3 convolution: ceil(n / 2) per side, so odd sizes (7x7) work."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour resize to the matching skip connection's exact size, then a 3x3 convolution."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor, size: tuple[int, int]) -> Tensor:
        return self.conv(F.interpolate(x, size=size, mode="nearest"))


class Stage(nn.ModuleList):
    """Residual blocks (which take the embedding) interleaved with optional attention."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResidualBlock) else layer(x)
        return x


class UNet(nn.Module):
    """Denoising U-Net: residual blocks with a time (and class) embedding, attention at chosen sizes.

    Args:
        data_shape: ``(C, H, W)`` of the data (given by the diffusion module, linked from the datamodule).
        num_classes: classes of a conditional model (an extra embedding row is the "no label" class of
            classifier-free guidance); None for an unconditional one (given by the diffusion module).
        channels: width of the first level.
        channel_mults: width multiplier per level; each level after the first halves the spatial size
            (28 -> 14 -> 7 with three levels).
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_resolutions: spatial sizes (the smaller side) at which blocks are followed by attention;
            the middle block always has attention.
        dropout: dropout inside the residual blocks.
        num_heads: attention heads.
    """

    def __init__(
        self,
        data_shape: Sequence[int],
        num_classes: int | None = None,
        channels: int = 64,
        channel_mults: Sequence[int] = (1, 2, 2),
        num_res_blocks: int = 2,
        attention_resolutions: Sequence[int] = (),
        dropout: float = 0.1,
        num_heads: int = 1,
    ) -> None:
        super().__init__()
        if len(data_shape) != 3:
            raise ConfigurationError(f"UNet needs image data (C, H, W), got shape {tuple(data_shape)}")
        if not channel_mults or num_res_blocks < 1:
            raise ConfigurationError("UNet needs at least one level and one residual block per level")
        check_sizes("UNet", channels=channels, channel_mults=tuple(channel_mults), num_heads=num_heads)
        in_channels, height, width = (int(s) for s in data_shape)
        emb_dim = 4 * channels
        self.time_embed = nn.Sequential(SinusoidalEmbedding(channels), nn.Linear(channels, emb_dim),
                                        nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_embed = nn.Embedding(num_classes + 1, emb_dim) if num_classes else None
        self.conv_in = nn.Conv2d(in_channels, channels, 3, padding=1)

        def stage(c_in: int, c_out: int, side: int) -> Stage:
            layers: list[nn.Module] = [ResidualBlock(c_in, c_out, emb_dim, dropout)]
            if side in attention_resolutions:
                layers.append(SelfAttention2d(c_out, num_heads))
            return Stage(layers)

        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        sides = [min(height, width)]  # the smaller side at each level
        for _ in channel_mults[1:]:
            sides.append((sides[-1] + 1) // 2)
        unknown = sorted(set(attention_resolutions) - set(sides))
        if unknown:
            raise ConfigurationError(f"attention_resolutions {unknown} match no level of this UNet (sizes {sides})")
        skips, ch = [channels], channels
        for level, mult in enumerate(channel_mults):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks):
                blocks.append(stage(ch, channels * mult, sides[level]))
                ch = channels * mult
                skips.append(ch)
            self.down.append(blocks)
            if level < len(channel_mults) - 1:
                self.downsample.append(Downsample(ch))
                skips.append(ch)
        self.middle = Stage([ResidualBlock(ch, ch, emb_dim, dropout), SelfAttention2d(ch, num_heads),
                             ResidualBlock(ch, ch, emb_dim, dropout)])
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            blocks = nn.ModuleList()
            for _ in range(num_res_blocks + 1):
                blocks.append(stage(ch + skips.pop(), channels * mult, sides[level]))
                ch = channels * mult
            self.up.append(blocks)
            if level > 0:
                self.upsample.append(Upsample(ch))
        self.out = nn.Sequential(group_norm(ch), nn.SiLU(), nn.Conv2d(ch, in_channels, 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)  # start by predicting zeros: a stable first step for any target
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: Tensor, time: Tensor, labels: Tensor | None = None,
                condition_transform: ConditionTransform | None = None) -> Tensor:
        """``condition_transform(embedding, labels)``, when given, replaces the class embedding before it is
        added to the time embedding (condition-annealed sampling noises it there)."""
        emb = self.time_embed(time)
        if self.class_embed is not None:
            require_labels("UNet", labels)  # classifier-free guidance's "no label" is the class num_classes
            condition = self.class_embed(labels.long())
            if condition_transform is not None:
                condition = condition_transform(condition, labels)
            emb = emb + condition
        h = self.conv_in(x)
        skips = [h]
        for level, blocks in enumerate(self.down):
            for block in blocks:
                h = block(h, emb)
                skips.append(h)
            if level < len(self.downsample):
                h = self.downsample[level](h)
                skips.append(h)
        h = self.middle(h, emb)
        for level, blocks in enumerate(self.up):
            for block in blocks:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if level < len(self.upsample):
                h = self.upsample[level](h, skips[-1].shape[-2:])
        return self.out(h)
