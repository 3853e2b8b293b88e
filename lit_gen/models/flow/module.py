"""Normalizing flows: exact log-density by the change of variables (Dinh et al. 2017, Kingma & Dhariwal 2018).

Objective: maximise log p(y) of the dequantized data y in [0, 1]^D,

    log p(y) = log p_Z(f(g(y))) + log|det dg/dy| + log|det df/dx|,

with g the preprocessing (logit or centring) and f the flow. The reported NLL is in the data's own K
levels: ``-log p(y) + D log K`` (:func:`~lit_gen.core.likelihood.discrete_nll_from_density`).

Likelihood kind: with uniform dequantization the number is the exact density of the dequantized point
(kind ``exact``; averaged over the noise it is an upper bound on the discrete NLL); with variational
dequantization it adds ``log q(u | x)`` and is reported as a ``bound``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor

from lit_gen.core import seeds
from lit_gen.core.levels import dequantize, from_levels
from lit_gen.core.likelihood import NLL, discrete_nll_from_density
from lit_gen.core.seeds import RandomSource
from lit_gen.errors import ConfigurationError, LitGenError, check_sizes
from lit_gen.models.base import GenerativeModule
from lit_gen.models.flow.dequantization import VariationalDequantizer
from lit_gen.models.flow.glow import build_glow
from lit_gen.models.flow.realnvp import build_realnvp
from lit_gen.models.flow.transforms import CompositeTransform, Logit, ScalarAffine, Transform
from lit_gen.nn.priors import DiagonalGaussian, GaussianMixture, StandardNormal

PriorName = Literal["standard", "gaussian", "mixture"]
PRIORS = {"standard": StandardNormal, "gaussian": DiagonalGaussian, "mixture": GaussianMixture}

MAX_REDRAWS = 10  # rounds of redrawing latents whose inverse overflowed (see NormalizingFlow.sample)

Preprocessing = Literal["logit", "centered", "none"]


def build_preprocessing(name: str, logit_alpha: float) -> Transform:
    """``logit``: RealNVP's logit(alpha + (1 - 2 alpha) y); ``centered``: Glow's y - 1/2; ``none``."""
    if name == "logit":
        return Logit(logit_alpha)
    if name == "centered":
        return ScalarAffine(1.0, -0.5)
    if name == "none":
        return CompositeTransform([])
    raise ConfigurationError(f"preprocessing must be 'logit', 'centered' or 'none', got {name!r}")


class NormalizingFlow(GenerativeModule):
    """A flow ``self.flow`` on preprocessed, dequantized data, with a base distribution ``self.prior``.

    Subclasses build ``self.flow`` (any :class:`~lit_gen.models.flow.transforms.Transform` that keeps the
    data's shape) after calling this ``__init__``; on its own the flow is the identity.

    Args:
        preprocessing: map from [0, 1]^D into the flow's space: ``"logit"``, ``"centered"`` or ``"none"``
            (continuous data); its log|det| is part of the likelihood.
        logit_alpha: the logit's margin alpha (RealNVP: 0.05 on CIFAR-10, 1e-6 on MNIST; on MNIST and digits
            1e-6 is far better, see docs/families/flow.md).
        dequantization: ``"uniform"`` (the shared policy; NLL kind ``exact``) or ``"variational"`` (a learned
            q(u | x); NLL kind ``bound``).
        dequantizer_channels / dequantizer_couplings: size of the variational dequantizer.
        prior: ``"standard"`` N(0, I), ``"gaussian"`` (learned diagonal) or ``"mixture"`` (learned mixture).
        prior_components: components of the mixture prior.
    """

    likelihood_kind = "exact"
    sampling_knob = "temperature"

    def __init__(
        self,
        preprocessing: Preprocessing = "logit",
        logit_alpha: float = 0.05,
        dequantization: Literal["uniform", "variational"] = "uniform",
        dequantizer_channels: int = 32,
        dequantizer_couplings: int = 2,
        prior: PriorName = "standard",
        prior_components: int = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.check_unconditional()
        check_sizes(type(self).__name__, dequantizer_channels=dequantizer_channels,
                    prior_components=prior_components)
        check_sizes(type(self).__name__, 0, dequantizer_couplings=dequantizer_couplings)  # 0: per-pixel q
        self.preprocess = build_preprocessing(preprocessing, logit_alpha)
        if prior not in PRIORS:
            raise ConfigurationError(f"prior must be 'standard', 'gaussian' or 'mixture', got {prior!r}")
        # Mixture means start at half the spread of N(0, I): the latent's components start closer together.
        self.prior = (GaussianMixture(self.num_dims, prior_components, init_spread=0.5) if prior == "mixture"
                      else PRIORS[prior](self.num_dims))
        self.dequantizer: VariationalDequantizer | None = None
        if dequantization == "variational":
            if self.num_levels is None or len(self.data_shape) != 3:
                raise ConfigurationError("variational dequantization needs discrete images (num_levels, (C, H, W))")
            self.dequantizer = VariationalDequantizer(self.data_shape, dequantizer_channels,
                                                      dequantizer_couplings)
            self.likelihood_kind = "bound"  # the instance's kind follows its dequantization
        elif dequantization != "uniform":
            raise ConfigurationError(f"dequantization must be 'uniform' or 'variational', got {dequantization!r}")
        self.flow: Transform = CompositeTransform([])

    # ------------------------------------------------------------------ pieces
    def log_prob(self, y: Tensor) -> Tensor:
        """log p(y) per example for y in the data's continuous space ([0, 1]^D once dequantized)."""
        x, logabsdet_pre = self.preprocess(y)
        z, logabsdet_flow = self.flow(x)
        return self.prior.log_prob(z.flatten(1)) + logabsdet_pre + logabsdet_flow

    def dequantized(self, x: Tensor, generator: RandomSource = None) -> tuple[Tensor, Tensor]:
        """``(y, log q(u | x))``: y = (k + u) / K in the level's bin; log q = 0 for uniform noise."""
        zero = x.new_zeros(x.shape[0])
        if self.num_levels is None:
            return x, zero
        if self.dequantizer is None:  # the shared policy; a generator makes the noise reproducible
            y = self.dequantize(x) if generator is None else dequantize(x, self.num_levels, generator)
            return y.to(x.dtype), zero
        u, log_q = self.dequantizer(x, generator)
        levels = torch.round(x * (self.num_levels - 1))
        return (levels + u) / self.num_levels, log_q

    def nll_nats(self, x: Tensor, generator: RandomSource = None) -> Tensor:
        """Per-example nats (float64) of the discrete data: -log p(y) + log q(u | x) + D log K."""
        if self.num_levels is None:
            return -self.log_prob(x).double()
        y, log_q = self.dequantized(x, generator)
        return discrete_nll_from_density(self.log_prob(y) - log_q, self.num_dims, self.num_levels)

    # ---------------------------------------------------------------- protocol
    def loss(self, x: Tensor, labels: Tensor | None = None, generator: RandomSource = None) -> Tensor:
        """Mean bits/dim of the batch: the optimum of the NLL, on a scale independent of the image size."""
        return (self.nll_nats(x, generator).mean() / (self.num_dims * math.log(2.0))).float()

    @torch.no_grad()
    def nll(self, x: Tensor, labels: Tensor | None = None, generator: RandomSource = None,
            **kwargs: Any) -> NLL:
        return NLL(self.nll_nats(x, generator), self.likelihood_kind)

    @torch.no_grad()
    def sample(self, num_samples: int, *, labels: Tensor | None = None,
               generator: RandomSource = None, temperature: float = 1.0) -> Tensor:
        """z ~ p(z) with its spread scaled by ``temperature``, mapped back through the flow; discrete data
        lands in the level whose dequantization bin holds it."""
        def inverse_of_fresh_latents(n: int, source: RandomSource) -> Tensor:
            z = self.draw_latents(n, generator=source, temperature=temperature)
            return self.flow.inverse(z.view(n, *self.data_shape))[0]

        x = inverse_of_fresh_latents(num_samples, generator)
        # A briefly trained flow's inverse can leave the numbers on rare tail latents: an affine coupling
        # divides by its scale sigmoid(h + 2), and h far outside training (an input of ~4000) makes it 0,
        # in float64 too. Such latents are drawn again (said in a warning): the samples are then from the
        # model conditioned on a finite inverse, the same distribution once the flow is trained.
        redrawn = 0
        for _ in range(MAX_REDRAWS):
            overflowed = ~torch.isfinite(x).flatten(1).all(1)
            if not overflowed.any():
                break
            count = int(overflowed.sum())
            redrawn += count
            # Per-example generators: only the rows that overflowed draw again, each from its own stream.
            rows = seeds.rows(generator, overflowed.nonzero().squeeze(1))
            x[overflowed] = inverse_of_fresh_latents(count, rows)
        else:
            raise LitGenError(f"{type(self).__name__}: the inverse flow stays non-finite after {MAX_REDRAWS} "
                              f"redraws ({redrawn} latents redrawn for {num_samples} samples)")
        if redrawn:
            rank_zero_warn(f"{type(self).__name__}.sample: {redrawn} of {num_samples} latents overflowed the "
                           "inverse flow and were drawn again (a briefly trained flow)")
        return self._to_data(x)

    def draw_latents(self, num_samples: int, *, generator: RandomSource = None, temperature: float = 1.0,
                     **knobs: Any) -> Tensor:
        """Latents of the base distribution, flat ``(N, D)``."""
        return self.prior.sample(num_samples, temperature, generator, device=self.device).to(self.dtype)

    def decode_latents(self, z: Tensor, *, labels: Tensor | None = None, generator: RandomSource = None,
                       **knobs: Any) -> Tensor:
        x = self.flow.inverse(z.to(self.dtype).view(z.shape[0], *self.data_shape))[0]
        if not torch.isfinite(x).all():
            raise LitGenError(f"{type(self).__name__}: the inverse flow of these latents is not finite")
        return self._to_data(x)

    def _to_data(self, x: Tensor) -> Tensor:
        """The flow's output back in data space; discrete data lands in the level whose dequantization bin
        holds it."""
        y, _ = self.preprocess.inverse(x)
        if self.num_levels is None:
            return y
        levels = torch.floor(y * self.num_levels).clamp(0, self.num_levels - 1)
        return from_levels(levels, self.num_levels).to(y.dtype)


class Glow(NormalizingFlow):
    """Glow: L scales of K steps (actnorm, invertible 1x1 conv, affine coupling), multi-scale factor-out.

    Args:
        num_scales: L; each scale squeezes once, so height and width must be divisible by 2^L.
        steps_per_scale: K flow steps per scale.
        hidden_channels: width of the coupling networks.
        coupling: ``"affine"`` (scale ``sigmoid(h + 2)``) or ``"additive"`` (volume preserving).
        split_prior: factored-out halves get a Gaussian prior conditioned on the kept half (Glow);
            False gives them the base prior directly (RealNVP).
        **kwargs: :class:`NormalizingFlow` and :class:`~lit_gen.models.base.GenerativeModule` arguments.
    """

    def __init__(
        self,
        num_scales: int = 2,
        steps_per_scale: int = 8,
        hidden_channels: int = 128,
        coupling: Literal["affine", "additive"] = "affine",
        split_prior: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_sizes(type(self).__name__, num_scales=num_scales, steps_per_scale=steps_per_scale,
                    hidden_channels=hidden_channels)
        self.flow = build_glow(self.data_shape, num_scales, steps_per_scale, hidden_channels, coupling,
                               split_prior)


class RealNVP(NormalizingFlow):
    """RealNVP: checkerboard and channel-mask affine couplings with ResNet nets, multi-scale factor-out.

    Args:
        num_scales: scales; each but the last squeezes once (height, width divisible by 2^(L-1)).
        hidden_channels: width of the coupling ResNets.
        num_blocks: residual blocks per coupling ResNet.
        split_prior: condition factored-out halves on the kept half (off in the original RealNVP).
        **kwargs: :class:`NormalizingFlow` and :class:`~lit_gen.models.base.GenerativeModule` arguments.
    """

    def __init__(
        self,
        num_scales: int = 2,
        hidden_channels: int = 64,
        num_blocks: int = 2,
        split_prior: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_sizes(type(self).__name__, num_scales=num_scales, hidden_channels=hidden_channels,
                    num_blocks=num_blocks)
        self.flow = build_realnvp(self.data_shape, num_scales, hidden_channels, num_blocks, split_prior)
