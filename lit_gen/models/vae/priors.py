"""Priors p(z) for the VAE: the standard Gaussian, and a learnable mixture of Gaussians.

The seed asks "why Gaussian?": a mixture prior can match the aggregate posterior better than N(0, I),
which tightens the ELBO (Tomczak & Welling 2018 make the same point with VampPrior).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lit_gen.core import seeds
from lit_gen.core.seeds import RandomSource

LOG_2PI = math.log(2 * math.pi)


def diagonal_gaussian_log_prob(z: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """log N(z; mean, diag(exp(log_var))) summed over the last axis."""
    return -0.5 * (LOG_2PI + log_var + (z - mean) ** 2 * torch.exp(-log_var)).sum(-1)


class StandardNormalPrior(nn.Module):
    """p(z) = N(0, I); the KL to a diagonal Gaussian posterior has a closed form."""

    has_analytic_kl = True

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    def log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * (LOG_2PI + z**2).sum(-1)

    def kl(self, mean: Tensor, log_var: Tensor) -> Tensor:
        """KL(N(mean, exp(log_var)) || N(0, I)) per example."""
        return 0.5 * (mean**2 + torch.exp(log_var) - 1.0 - log_var).sum(-1)

    def sample(self, num_samples: int, temperature: float = 1.0, generator: RandomSource = None,
               device: torch.device | None = None) -> Tensor:
        return temperature * seeds.randn((num_samples, self.latent_dim), generator=generator, device=device)


class MixturePrior(nn.Module):
    """p(z) = sum_c pi_c N(mu_c, diag(sigma_c^2)), every parameter learned with the model."""

    has_analytic_kl = False

    def __init__(self, latent_dim: int, num_components: int = 10) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        # Spread the initial means so components do not start identical (they would stay tied).
        self.means = nn.Parameter(torch.randn(num_components, latent_dim))
        self.log_vars = nn.Parameter(torch.zeros(num_components, latent_dim))
        self.logits = nn.Parameter(torch.zeros(num_components))

    def log_prob(self, z: Tensor) -> Tensor:
        per_component = diagonal_gaussian_log_prob(z.unsqueeze(-2), self.means, self.log_vars)
        return torch.logsumexp(per_component + torch.log_softmax(self.logits, -1), dim=-1)

    def sample(self, num_samples: int, temperature: float = 1.0, generator: RandomSource = None,
               device: torch.device | None = None) -> Tensor:
        device = device or self.means.device
        probs = torch.softmax(self.logits.detach(), -1).to(device)
        component = seeds.multinomial(probs, num_samples, replacement=True, generator=generator)
        eps = seeds.randn((num_samples, self.latent_dim), generator=generator, device=device)
        std = torch.exp(0.5 * self.log_vars[component])
        return self.means[component] + temperature * std * eps


def build_prior(name: str, latent_dim: int, num_components: int) -> nn.Module:
    if name == "gaussian":
        return StandardNormalPrior(latent_dim)
    if name == "mixture":
        return MixturePrior(latent_dim, num_components)
    raise ValueError(f"prior must be 'gaussian' or 'mixture', got {name!r}")
