"""Invertible transforms that return ``(output, logabsdet)`` both ways (the nflows convention).

``forward(x, context=None) -> (z, logabsdet)`` maps data towards the latent; ``inverse(z, context=None)
-> (x, logabsdet)`` maps back, and its logabsdet is the negative of the forward one at the matching
point. ``logabsdet`` is per example, shape ``(B,)``, and always float32 or wider (the dtype of the input).
``context`` is an optional conditioning tensor (a factored-out level's kept half, a dequantizer's image).

Pieces: :class:`ActNorm`, :class:`InvertibleConv1x1` (LU form), :class:`AffineCoupling` with channel or
checkerboard masks, :class:`Squeeze`, :class:`Gaussianize` (Glow's learned prior of a factored-out
half, written as a transform), :class:`MultiscaleFlow` (RealNVP factor-out), :class:`Logit` and
:class:`ScalarAffine` (preprocessing), :class:`CompositeTransform`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Literal

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from lit_gen.errors import ConfigurationError

#: Builds a coupling's network: ``net_factory(in_channels, out_channels) -> nn.Module``.
NetFactory = Callable[[int, int], nn.Module]
Shape = tuple[int, ...]


def at_least_float32(x: Tensor) -> Tensor:
    """Half-precision values (from a network under autocast) as float32; float32/64 as they are."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def sum_except_batch(x: Tensor) -> Tensor:
    return at_least_float32(x).reshape(x.shape[0], -1).sum(1)  # log-dets: never summed in bf16/fp16


class Transform(nn.Module):
    """An invertible map with a tractable log|det J|; subclasses implement both directions."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        raise NotImplementedError


class CompositeTransform(Transform):
    """Transforms applied in order (forward) and in reverse order (inverse); log-dets add up."""

    def __init__(self, transforms: Sequence[Transform]) -> None:
        super().__init__()
        self.transforms = nn.ModuleList(transforms)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = x.new_zeros(x.shape[0])
        for transform in self.transforms:
            x, logabsdet = transform(x, context)
            total = total + logabsdet
        return x, total

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        total = z.new_zeros(z.shape[0])
        for transform in reversed(self.transforms):
            z, logabsdet = transform.inverse(z, context)
            total = total + logabsdet
        return z, total


# ------------------------------------------------------------------------------------- preprocessing
class ScalarAffine(Transform):
    """``z = scale * x + shift`` on every dimension (e.g. Glow's ``y - 0.5``)."""

    def __init__(self, scale: float = 1.0, shift: float = 0.0) -> None:
        super().__init__()
        if scale == 0:
            raise ConfigurationError("ScalarAffine needs a nonzero scale")
        self.scale, self.shift = float(scale), float(shift)

    def _logabsdet(self, x: Tensor) -> Tensor:
        return x.new_full((x.shape[0],), x[0].numel() * math.log(abs(self.scale)))

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return x * self.scale + self.shift, self._logabsdet(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return (z - self.shift) / self.scale, -self._logabsdet(z)


class Logit(Transform):
    """RealNVP's preprocessing: ``z = logit(alpha + (1 - 2 alpha) y)`` for ``y`` in [0, 1].

    ``alpha`` keeps the ends of [0, 1] away from ±inf. The log|det| is exact per example:
    ``sum_d log(1 - 2 alpha) - log s_d - log(1 - s_d)`` with ``s = alpha + (1 - 2 alpha) y``.
    """

    def __init__(self, alpha: float = 0.05) -> None:
        super().__init__()
        if not 0.0 < alpha < 0.5:
            raise ConfigurationError(f"logit alpha must be in (0, 0.5), got {alpha}")
        self.alpha = float(alpha)

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        s = self.alpha + (1.0 - 2.0 * self.alpha) * x
        log_s, log_one_minus_s = torch.log(s), torch.log1p(-s)
        logabsdet = math.log(1.0 - 2.0 * self.alpha) - log_s - log_one_minus_s
        return log_s - log_one_minus_s, sum_except_batch(logabsdet)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        # Minus the forward log|det| at the preimage: -log s - log(1 - s) = softplus(-z) + softplus(z).
        forward_logabsdet = math.log(1.0 - 2.0 * self.alpha) + F.softplus(-z) + F.softplus(z)
        x = (torch.sigmoid(z) - self.alpha) / (1.0 - 2.0 * self.alpha)
        return x, -sum_except_batch(forward_logabsdet)


# ------------------------------------------------------------------------------------------ Glow step
def _channel_view(v: Tensor, x: Tensor) -> Tensor:
    return v.view(1, -1, *([1] * (x.dim() - 2)))


def _all_reduce(t: Tensor) -> None:
    """Sum over processes under DDP (so data-dependent initialisation is the same on every rank)."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t)


class ActNorm(Transform):
    """Per-channel affine ``z = (x + bias) * exp(log_scale)`` with data-dependent initialisation (Glow).

    The first ``forward`` sets ``bias`` and ``log_scale`` so that its batch leaves with zero mean and unit
    variance per channel (under DDP the statistics are averaged over ranks, so every rank starts equal).
    ``initialized`` is a float buffer: it is saved in checkpoints and survives weight averaging (EMA).
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.log_scale = nn.Parameter(torch.zeros(num_channels))
        self.register_buffer("initialized", torch.tensor(0.0))

    @torch.no_grad()
    def initialize(self, x: Tensor) -> None:
        # Two passes in float64: E[x^2] - E[x]^2 in float32 cancels catastrophically when |mean| >> std.
        dims = [d for d in range(x.dim()) if d != 1]
        x = x.double()
        total = torch.cat([x.sum(dims), x.new_tensor([x.numel() // x.shape[1]])])
        _all_reduce(total)
        mean = total[:-1] / total[-1]
        squares = ((x - _channel_view(mean, x)) ** 2).sum(dims)
        _all_reduce(squares)
        std = (squares / total[-1]).sqrt()
        self.bias.copy_(-mean.to(self.bias.dtype))
        self.log_scale.copy_(-torch.log(std + self.eps).to(self.log_scale.dtype))
        self.initialized.fill_(1.0)

    def _logabsdet(self, x: Tensor) -> Tensor:
        spatial = x[0, 0].numel()
        return (spatial * self.log_scale.sum()).expand(x.shape[0])

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        if not self.initialized:
            self.initialize(x)
        z = (x + _channel_view(self.bias, x)) * _channel_view(self.log_scale.exp(), x)
        return z, self._logabsdet(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        x = z * _channel_view(torch.exp(-self.log_scale), z) - _channel_view(self.bias, z)
        return x, -self._logabsdet(z)


class InvertibleConv1x1(Transform):
    """Glow's invertible 1x1 convolution in LU form: ``W = P L (U + diag(sign(s) exp(log|s|)))``.

    P is a fixed permutation, L unit lower triangular, U strictly upper triangular, so
    ``log|det W| = sum(log|s|)`` costs O(C) instead of O(C^3). Initialised from a random rotation.
    """

    def __init__(self, num_channels: int) -> None:
        super().__init__()
        rotation = torch.linalg.qr(torch.randn(num_channels, num_channels, dtype=torch.float64))[0]
        permutation, lower, upper = torch.linalg.lu(rotation)
        s = torch.diagonal(upper)
        self.register_buffer("permutation", permutation.float())
        self.register_buffer("sign_s", torch.sign(s).float())
        self.register_buffer("lower_mask", torch.tril(torch.ones(num_channels, num_channels), -1))
        self.register_buffer("eye", torch.eye(num_channels))
        self.lower = nn.Parameter(lower.float())
        self.upper = nn.Parameter(torch.triu(upper, 1).float())
        self.log_s = nn.Parameter(torch.log(torch.abs(s)).float())

    def weight(self) -> Tensor:
        lower = self.lower * self.lower_mask + self.eye
        upper = self.upper * self.lower_mask.T + torch.diag(self.sign_s * torch.exp(self.log_s))
        return self.permutation @ lower @ upper

    def _logabsdet(self, x: Tensor) -> Tensor:
        return (x[0, 0].numel() * self.log_s.sum()).expand(x.shape[0])

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        with torch.autocast(x.device.type, enabled=False):  # a C x C mixing of the flow's state: full precision
            w = self.weight()
            return F.conv2d(x.to(w.dtype), w.view(*w.shape, 1, 1)), self._logabsdet(x)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        # Invert in float64: the product of three factors can be ill-conditioned after training.
        with torch.autocast(z.device.type, enabled=False):
            w_inv = torch.linalg.inv(self.weight().double()).to(self.lower.dtype)
            return F.conv2d(z.to(w_inv.dtype), w_inv.view(*w_inv.shape, 1, 1)), -self._logabsdet(z)


def checkerboard(height: int, width: int, parity: int, device=None, dtype=None) -> Tensor:
    """``(1, 1, H, W)`` mask, 1 where ``(i + j) % 2 == parity`` (the positions a coupling keeps)."""
    i = torch.arange(height, device=device).view(-1, 1)
    j = torch.arange(width, device=device).view(1, -1)
    return ((i + j) % 2 == parity).to(dtype or torch.float32).view(1, 1, height, width)


ScaleFn = Literal["sigmoid", "exp_tanh", "additive"]


class AffineCoupling(Transform):
    """Affine coupling (RealNVP / Glow): one part of x passes unchanged and sets scale and shift of the rest.

    Args:
        num_channels: channels of x.
        net_factory: builds the conditioner ``net(in_channels, out_channels)``; its last layer should be
            zero-initialised so the coupling starts near the identity.
        mask: ``"channel"`` keeps one half of the channels (``parity`` 0: the first half), ``"checkerboard"``
            keeps the spatial positions with ``(i + j) % 2 == parity``.
        scale_fn: ``"sigmoid"`` (Glow: ``sigmoid(h + 2)``), ``"exp_tanh"`` (RealNVP: ``exp(a * tanh(h))``
            with a learned per-channel ``a``; the identity at zero) or ``"additive"`` (NICE: scale 1).
        context_channels: channels of an optional context image concatenated to the conditioner's input.
    """

    def __init__(self, num_channels: int, net_factory: NetFactory,
                 mask: Literal["channel", "checkerboard"] = "channel", parity: int = 0,
                 scale_fn: ScaleFn = "sigmoid", context_channels: int = 0) -> None:
        super().__init__()
        if mask not in ("channel", "checkerboard"):
            raise ConfigurationError(f"mask must be 'channel' or 'checkerboard', got {mask!r}")
        if scale_fn not in ("sigmoid", "exp_tanh", "additive"):
            raise ConfigurationError(f"scale_fn must be 'sigmoid', 'exp_tanh' or 'additive', got {scale_fn!r}")
        if mask == "channel" and num_channels < 2:
            raise ConfigurationError("a channel-mask coupling needs at least 2 channels (squeeze first)")
        self.mask, self.parity, self.scale_fn = mask, parity % 2, scale_fn
        if mask == "channel":
            first = num_channels // 2 if self.parity == 0 else num_channels - num_channels // 2
            self.split = (first, num_channels - first)  # (kept, transformed) when parity 0, else swapped
            kept, changed = self.split if self.parity == 0 else self.split[::-1]
        else:
            kept, changed = num_channels, num_channels
        self.changed_channels = changed
        params = 1 if scale_fn == "additive" else 2
        self.net = net_factory(kept + context_channels, params * changed)
        if scale_fn == "exp_tanh":
            self.scale_factor = nn.Parameter(torch.ones(1, changed, 1, 1))

    def _scale_shift(self, kept: Tensor, context: Tensor | None) -> tuple[Tensor | None, Tensor]:
        # The conditioner may run in bf16/fp16 under autocast; the transform and its log-det do not.
        h = at_least_float32(self.net(kept if context is None else torch.cat([kept, context], 1)))
        if self.scale_fn == "additive":
            return None, h
        shift, raw = h[:, : self.changed_channels], h[:, self.changed_channels:]
        if self.scale_fn == "sigmoid":
            return F.logsigmoid(raw + 2.0), shift
        return self.scale_factor * torch.tanh(raw), shift

    def _split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        a, b = x.split(list(self.split), dim=1)
        return (a, b) if self.parity == 0 else (b, a)

    def _join(self, kept: Tensor, changed: Tensor) -> Tensor:
        return torch.cat([kept, changed] if self.parity == 0 else [changed, kept], 1)

    def _couple(self, x: Tensor, context: Tensor | None, direction: int) -> tuple[Tensor, Tensor]:
        if self.mask == "channel":
            kept, changed = self._split(x)
            log_scale, shift = self._scale_shift(kept, context)
        else:
            keep = checkerboard(x.shape[2], x.shape[3], self.parity, x.device, x.dtype)
            kept, changed = x * keep, x
            log_scale, shift = self._scale_shift(kept, context)
            shift = shift * (1 - keep)
            log_scale = None if log_scale is None else log_scale * (1 - keep)  # identity on kept positions
        if direction > 0:
            out = changed * log_scale.exp() + shift if log_scale is not None else changed + shift
        else:
            out = (changed - shift) * torch.exp(-log_scale) if log_scale is not None else changed - shift
        logabsdet = x.new_zeros(x.shape[0]) if log_scale is None else direction * sum_except_batch(log_scale)
        if self.mask == "channel":
            return self._join(kept, out), logabsdet
        return out, logabsdet  # kept positions pass through: scale 1, shift 0 there

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(x, context, +1)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        return self._couple(z, context, -1)


# ------------------------------------------------------------------------------------- multi-scale
class Squeeze(Transform):
    """Space-to-depth: ``(C, H, W) -> (4C, H/2, W/2)``, each 2x2 patch into channels; volume preserving."""

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, c, h, w = x.shape
        if h % 2 or w % 2:
            raise ConfigurationError(f"Squeeze needs even height and width, got {h}x{w}")
        x = x.view(b, c, h // 2, 2, w // 2, 2).permute(0, 1, 3, 5, 2, 4)
        return x.reshape(b, c * 4, h // 2, w // 2), x.new_zeros(b)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        b, c, h, w = z.shape
        z = z.view(b, c // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3)
        return z.reshape(b, c // 4, h * 2, w * 2), z.new_zeros(b)


class ZeroConv2d(nn.Conv2d):
    """3x3 convolution initialised to output zeros (last layer of conditioners: flows start as identity)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        nn.init.zeros_(self.weight)
        nn.init.zeros_(self.bias)


class Gaussianize(Transform):
    """``z = (x - mu(c)) * exp(-log_sigma(c))``: Glow's learned prior of a factored-out half as a transform.

    With a standard normal on ``z`` this is exactly the prior ``x ~ N(mu(c), sigma(c)^2)`` conditioned on
    the half ``c`` that stays in the flow; sampling at temperature T scales ``z``, i.e. sigma. Starts as
    the identity (zero-initialised convolution).
    """

    def __init__(self, num_channels: int, context_channels: int) -> None:
        super().__init__()
        self.net = ZeroConv2d(context_channels, 2 * num_channels)

    def _mean_log_sigma(self, context: Tensor | None) -> tuple[Tensor, Tensor]:
        if context is None:
            raise ConfigurationError("Gaussianize needs the kept half as context")
        mean, log_sigma = at_least_float32(self.net(context)).chunk(2, dim=1)
        return mean, log_sigma

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mean, log_sigma = self._mean_log_sigma(context)
        return (x - mean) * torch.exp(-log_sigma), -sum_except_batch(log_sigma)

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        mean, log_sigma = self._mean_log_sigma(context)
        return mean + z * torch.exp(log_sigma), sum_except_batch(log_sigma)


class MultiscaleFlow(Transform):
    """RealNVP's multi-scale architecture: after every level but the last, half the channels leave.

    ``levels[i]`` maps the current tensor (shape ``level_shapes[i][0]`` in, ``level_shapes[i][1]`` out);
    then its first ``ceil(C / 2)`` channels are factored out through ``splits[i]`` (a :class:`Gaussianize`
    conditioned on the kept half, or the identity) and the rest go on to the next level. The output
    gathers every factored-out part and the last level's output, flattened in that order, reshaped to the
    input's shape: one latent of the data's dimension for the prior.
    """

    def __init__(self, levels: Sequence[Transform], level_shapes: Sequence[tuple[Shape, Shape]],
                 splits: Sequence[Transform | None]) -> None:
        super().__init__()
        if not (len(levels) == len(level_shapes) == len(splits) + 1):
            raise ConfigurationError("MultiscaleFlow needs one shape pair per level and one split between levels")
        self.levels = nn.ModuleList(levels)
        self.splits = nn.ModuleList([s if s is not None else CompositeTransform([]) for s in splits])
        self.level_shapes = [tuple(map(tuple, pair)) for pair in level_shapes]

    def _factored_channels(self, index: int) -> int:
        channels = self.level_shapes[index][1][0]
        return channels - channels // 2

    def forward(self, x: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        batch_shape = x.shape
        total, outs, h = x.new_zeros(x.shape[0]), [], x
        for index, level in enumerate(self.levels):
            h, logabsdet = level(h)
            total = total + logabsdet
            if index < len(self.splits):
                factored = self._factored_channels(index)
                out, h = h.split([factored, h.shape[1] - factored], 1)
                out, logabsdet = self.splits[index](out, h)
                total = total + logabsdet
                outs.append(out.flatten(1))
        outs.append(h.flatten(1))
        return torch.cat(outs, 1).view(batch_shape), total

    def inverse(self, z: Tensor, context: Tensor | None = None) -> tuple[Tensor, Tensor]:
        flat = z.flatten(1)
        sizes = [self._factored_channels(i) * math.prod(self.level_shapes[i][1][1:])
                 for i in range(len(self.splits))]
        sizes.append(flat.shape[1] - sum(sizes))
        pieces = flat.split(sizes, 1)
        b = z.shape[0]
        total = z.new_zeros(b)
        h = pieces[-1].reshape(b, *self.level_shapes[-1][1])
        for index in reversed(range(len(self.levels))):
            if index < len(self.splits):
                out_shape = (self._factored_channels(index), *self.level_shapes[index][1][1:])
                out, logabsdet = self.splits[index].inverse(pieces[index].reshape(b, *out_shape), h)
                total = total + logabsdet
                h = torch.cat([out, h], 1)
            h, logabsdet = self.levels[index].inverse(h)
            total = total + logabsdet
        return h, total
