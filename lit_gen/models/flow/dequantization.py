"""Variational dequantization (Ho et al. 2019, Flow++): learn the noise q(u | x) inside each data bin.

Uniform dequantization trains the flow on ``y = (k + u) / K`` with ``u ~ U[0, 1)^D``; the flow then has to
put a flat density on every bin, which a smooth flow does poorly (the "dequantization gap": large on MNIST,
where most pixels sit in the black bin). Here ``u = sigmoid(f(eps; x))`` with ``eps ~ N(0, I)`` and ``f`` a
small flow conditioned on the image, so

    log P(x) >= E_q[ log p((k + u) / K) - D log K - log q(u | x) ]

is a bound on the discrete log-likelihood that the flow and q tighten together.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_gen.core import seeds
from lit_gen.core.levels import to_signed
from lit_gen.core.seeds import RandomSource
from lit_gen.errors import ConfigurationError
from lit_gen.models.flow.glow import GlowCouplingNet
from lit_gen.models.flow.transforms import (
    AffineCoupling,
    CompositeTransform,
    Gaussianize,
    Squeeze,
    sum_except_batch,
)

LOG_2PI = math.log(2 * math.pi)


class VariationalDequantizer(nn.Module):
    """q(u | x) on (0, 1)^D for images ``(C, H, W)``: a conditional flow from a standard normal, then sigmoid.

    Works on the squeezed grid ``(4C, H/2, W/2)`` (a quarter of the positions, so it stays cheap beside
    the model): an elementwise affine map of the noise set by the image (:class:`Gaussianize` used as a
    conditional affine), then ``num_couplings`` channel couplings that also see the image.

    Args:
        data_shape: ``(C, H, W)``, H and W even.
        hidden_channels: width of the image encoder and of the coupling nets.
        num_couplings: channel couplings (alternating halves) after the elementwise map; 0 makes q
            factorise over dimensions given x.
    """

    def __init__(self, data_shape: tuple[int, ...], hidden_channels: int = 32,
                 num_couplings: int = 2) -> None:
        super().__init__()
        if len(data_shape) != 3 or data_shape[1] % 2 or data_shape[2] % 2:
            raise ConfigurationError(f"variational dequantization needs images (C, H, W) with even H and W, "
                             f"got {data_shape}")
        channels = 4 * data_shape[0]
        self.squeeze = Squeeze()
        self.encoder = nn.Sequential(
            nn.Conv2d(channels, hidden_channels, 3, padding=1), nn.ReLU(),
            nn.Conv2d(hidden_channels, hidden_channels, 3, padding=1), nn.ReLU(),
        )
        layers = [Gaussianize(channels, hidden_channels)]
        def net(in_channels: int, out_channels: int) -> nn.Module:
            return GlowCouplingNet(in_channels, out_channels, hidden_channels)

        layers += [AffineCoupling(channels, net, mask="channel", parity=p % 2, scale_fn="exp_tanh",
                                  context_channels=hidden_channels) for p in range(num_couplings)]
        self.flow = CompositeTransform(layers)

    def noise_to_logits(self, eps: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(v, log|det dv/deps|)``: the noise flow given the image x in [0, 1] (seen in [-1, 1])."""
        context = self.encoder(self.squeeze(to_signed(x))[0])
        v, logabsdet = self.flow(self.squeeze(eps)[0], context)
        return self.squeeze.inverse(v)[0], logabsdet

    def forward(self, x: Tensor, generator: RandomSource = None) -> tuple[Tensor, Tensor]:
        """``(u, log q(u | x))`` per example."""
        eps = seeds.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        v, logabsdet = self.noise_to_logits(eps, x)
        # log q(u) = log N(eps) - log|dv/deps| - log|du/dv|, with log du/dv = log s(v) + log s(-v).
        log_q = -0.5 * sum_except_batch(eps * eps + LOG_2PI) - logabsdet \
            - sum_except_batch(F.logsigmoid(v) + F.logsigmoid(-v))
        return torch.sigmoid(v), log_q
