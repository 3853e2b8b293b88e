"""Discrete likelihoods for K-level data, shared by every family with a discrete decoder.

Data convention: a dimension holds ``k / (K - 1)`` for a level ``k`` in ``[0, K)``. Each distribution
gives ``log P(level)`` per dimension, so summing over dimensions is an exact discrete log-likelihood
(no dequantization term), and samples come back on the same grid.

Parameter layout: a parameter tensor has the data's shape with one extra axis after the batch axis
(``(B, K, *D)`` logits for the categorical, ``(B, M, *D)`` per mixture parameter for the logistic).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_gen.core import seeds
from lit_gen.core.levels import from_levels, to_levels
from lit_gen.core.seeds import RandomSource
from lit_gen.errors import ConfigurationError


def gumbel_argmax(logits: Tensor, dim: int, generator: RandomSource) -> Tensor:
    """Sample a categorical along ``dim`` (Gumbel-max: exact, works on any device with a generator).

    The batch is dim 0: with :class:`~lit_gen.core.seeds.ExampleGenerators`, row i's noise is example i's.
    """
    u = seeds.rand(logits.shape, generator=generator, device=logits.device, dtype=torch.float32)
    gumbel = -torch.log(-torch.log(u.clamp_(1e-12, 1.0 - 1e-7)))
    return torch.argmax(logits.float() + gumbel, dim=dim)


# ------------------------------------------------------------------------------------------ categorical
def categorical_log_prob(x: Tensor, logits: Tensor, num_levels: int) -> Tensor:
    """Per-dimension ``log P(x)`` under a K-way softmax; ``logits`` is ``(B, K, *D)``."""
    log_p = F.log_softmax(logits.float(), dim=1)
    return log_p.gather(1, to_levels(x, num_levels).unsqueeze(1)).squeeze(1)


def categorical_sample(
    logits: Tensor, num_levels: int, temperature: float = 1.0, generator: RandomSource = None
) -> Tensor:
    """Draw levels from ``(B, K, *D)`` logits at a temperature; returns data-space values."""
    if temperature <= 0:
        return from_levels(logits.argmax(dim=1), num_levels)
    return from_levels(gumbel_argmax(logits.float() / temperature, 1, generator), num_levels)


def categorical_mean(logits: Tensor, num_levels: int) -> Tensor:
    """Expected data value of the softmax (a smooth image; used for VAE 'mean' decoding)."""
    grid = torch.linspace(0, 1, num_levels, device=logits.device)
    shape = (1, num_levels) + (1,) * (logits.dim() - 2)
    return (F.softmax(logits.float(), dim=1) * grid.view(shape)).sum(dim=1)


# ------------------------------------------------------------------------------------------- Bernoulli
def bernoulli_log_prob(x: Tensor, logits: Tensor) -> Tensor:
    """Per-dimension ``log P(x)`` for binary data (K = 2, values 0 and 1); ``logits`` has the data shape."""
    return -F.binary_cross_entropy_with_logits(logits.float(), x.float().round(), reduction="none")


def bernoulli_sample(logits: Tensor, temperature: float = 1.0, generator: RandomSource = None) -> Tensor:
    if temperature <= 0:
        return (logits > 0).float()
    u = seeds.rand(logits.shape, generator=generator, device=logits.device)
    return (u < torch.sigmoid(logits.float() / temperature)).float()


# ------------------------------------------------------------------------- discretized logistic mixture
def discretized_logistic_log_prob(
    x: Tensor, logit_weights: Tensor, means: Tensor, log_scales: Tensor, num_levels: int
) -> Tensor:
    """Per-dimension ``log P(x)`` under a mixture of M logistics discretized into K bins on [-1, 1].

    As in PixelCNN++ (Salimans et al. 2017), but for any K: bin ``k`` covers ``2k/(K-1) - 1 ± 1/(K-1)``,
    the edge bins extend to ±inf so the K probabilities sum to one. ``x`` is ``(B, *D)``; each parameter
    is ``(B, M, *D)``.
    """
    x = (2.0 * x.float() - 1.0).unsqueeze(1)  # to [-1, 1], broadcast over components
    means, log_scales = means.float(), log_scales.float().clamp(min=-7.0)
    half_bin = 1.0 / (num_levels - 1)
    centered = x - means
    inv_s = torch.exp(-log_scales)
    plus, minus = inv_s * (centered + half_bin), inv_s * (centered - half_bin)
    log_cdf_plus = F.logsigmoid(plus)  # log F(upper edge): the lowest bin's mass
    log_one_minus_cdf_minus = -F.softplus(minus)  # log(1 - F(lower edge)): the highest bin's mass
    cdf_delta = torch.sigmoid(plus) - torch.sigmoid(minus)
    # In the far tails the difference of sigmoids underflows: fall back to density * bin width there.
    mid = inv_s * centered
    log_pdf_mid = mid - log_scales - 2.0 * F.softplus(mid)
    log_mid_bin = torch.where(
        cdf_delta > 1e-5,
        torch.log(cdf_delta.clamp(min=1e-12)),
        log_pdf_mid + torch.log(torch.tensor(2.0 * half_bin, device=x.device)),
    )
    log_probs = torch.where(x < -1.0 + half_bin / 2, log_cdf_plus,
                            torch.where(x > 1.0 - half_bin / 2, log_one_minus_cdf_minus, log_mid_bin))
    return torch.logsumexp(log_probs + F.log_softmax(logit_weights.float(), dim=1), dim=1)


def discretized_logistic_sample(
    logit_weights: Tensor,
    means: Tensor,
    log_scales: Tensor,
    num_levels: int,
    temperature: float = 1.0,
    generator: RandomSource = None,
) -> Tensor:
    """Draw from the discretized logistic mixture; temperature scales the logistics' width."""
    component = gumbel_argmax(logit_weights.float(), 1, generator).unsqueeze(1)
    mu = means.float().gather(1, component).squeeze(1)
    log_s = log_scales.float().clamp(min=-7.0).gather(1, component).squeeze(1)
    if temperature > 0:
        u = seeds.rand(mu.shape, generator=generator, device=mu.device).clamp_(1e-5, 1.0 - 1e-5)
        mu = mu + temperature * torch.exp(log_s) * (torch.log(u) - torch.log1p(-u))
    return from_levels(to_levels((mu.clamp(-1, 1) + 1) / 2, num_levels), num_levels)


def discretized_logistic_mean(logit_weights: Tensor, means: Tensor) -> Tensor:
    """Mixture mean in data space (a smooth image)."""
    weights = F.softmax(logit_weights.float(), dim=1)
    return ((weights * means.float()).sum(dim=1).clamp(-1, 1) + 1) / 2


# ------------------------------------------------------------------------------------- decoder heads
class LikelihoodHead:
    """A per-dimension likelihood over network outputs of shape ``(B, P, *D)``.

    ``log_prob`` returns per-dimension log-probabilities ``(B, *D)``; ``sample`` and ``mean`` return
    data-space values. Heads are stateless: the network that produces ``params`` owns the weights.
    """

    params_per_dim: int

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        raise NotImplementedError

    def sample(self, params: Tensor, temperature: float = 1.0, generator: RandomSource = None) -> Tensor:
        raise NotImplementedError

    def mean(self, params: Tensor) -> Tensor:
        raise NotImplementedError


class CategoricalLikelihood(LikelihoodHead):
    """K-way softmax per dimension: exact in the data's own levels, no ordinal assumption."""

    def __init__(self, num_levels: int) -> None:
        self.num_levels = self.params_per_dim = num_levels

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        return categorical_log_prob(x, params, self.num_levels)

    def sample(self, params, temperature=1.0, generator=None):
        return categorical_sample(params, self.num_levels, temperature, generator)

    def mean(self, params):
        return categorical_mean(params, self.num_levels)


class LogisticMixtureLikelihood(LikelihoodHead):
    """Mixture of M discretized logistics per dimension (3M parameters: weights, means, log-scales)."""

    def __init__(self, num_levels: int, num_mixtures: int = 5) -> None:
        self.num_levels, self.num_mixtures = num_levels, num_mixtures
        self.params_per_dim = 3 * num_mixtures

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        return discretized_logistic_log_prob(x, *params.chunk(3, dim=1), self.num_levels)

    def sample(self, params, temperature=1.0, generator=None):
        return discretized_logistic_sample(*params.chunk(3, dim=1), self.num_levels, temperature, generator)

    def mean(self, params):
        logit_weights, means, _ = params.chunk(3, dim=1)
        return discretized_logistic_mean(logit_weights, means)


class BernoulliLikelihood(LikelihoodHead):
    """Binary data (K = 2), e.g. binarized MNIST."""

    params_per_dim = 1

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        return bernoulli_log_prob(x, params.squeeze(1))

    def sample(self, params, temperature=1.0, generator=None):
        return bernoulli_sample(params.squeeze(1), temperature, generator)

    def mean(self, params):
        return torch.sigmoid(params.squeeze(1).float())


class GaussianLikelihood(LikelihoodHead):
    """A diagonal Gaussian *density* for continuous data (toy 2-D): log-densities, not probabilities."""

    params_per_dim = 2

    def log_prob(self, x: Tensor, params: Tensor) -> Tensor:
        mean, log_scale = params.float().chunk(2, dim=1)
        mean, log_scale = mean.squeeze(1), log_scale.squeeze(1).clamp(min=-9.0)
        return -0.5 * (((x.float() - mean) * torch.exp(-log_scale)) ** 2) - log_scale - 0.5 * math.log(2 * math.pi)

    def sample(self, params, temperature=1.0, generator=None):
        mean, log_scale = params.float().chunk(2, dim=1)
        noise = seeds.randn(mean.squeeze(1).shape, generator=generator, device=params.device)
        return mean.squeeze(1) + temperature * torch.exp(log_scale.squeeze(1).clamp(min=-9.0)) * noise

    def mean(self, params):
        return params.float()[:, 0]


def build_likelihood(name: str, num_levels: int | None, num_mixtures: int = 5) -> LikelihoodHead:
    """Decoder head by name; checks it fits the data (discrete heads need K, Bernoulli needs K = 2)."""
    if name == "gaussian" or num_levels is None:
        if name != "gaussian":
            raise ConfigurationError(f"continuous data (num_levels=None) needs the 'gaussian' likelihood, not {name!r}")
        return GaussianLikelihood()
    if name == "categorical":
        return CategoricalLikelihood(num_levels)
    if name == "logistic_mixture":
        return LogisticMixtureLikelihood(num_levels, num_mixtures)
    if name == "bernoulli":
        if num_levels != 2:
            raise ConfigurationError(f"the 'bernoulli' likelihood is for binary data (num_levels=2), got {num_levels}")
        return BernoulliLikelihood()
    raise ConfigurationError(
        f"likelihood must be one of 'categorical', 'logistic_mixture', 'bernoulli', 'gaussian'; got {name!r}"
    )
