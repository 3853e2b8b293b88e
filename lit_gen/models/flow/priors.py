"""Base distributions p(z) of a flow's latent, on flat vectors ``(B, D)``; log-probs in float32 or wider.

``standard``: N(0, I). ``gaussian``: a learned diagonal Gaussian (Glow's "learntop"). ``mixture``: a learned
mixture of diagonal Gaussians over the whole latent (each component can take one mode of the data, e.g. a
digit class). Sampling scales every component's spread by the temperature.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from lit_gen.core import seeds
from lit_gen.core.seeds import RandomSource

LOG_2PI = math.log(2 * math.pi)
PriorName = Literal["standard", "gaussian", "mixture"]


def diagonal_normal_log_prob(z: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log N(z; mean, diag(exp(2 log_std))) summed over the last axis."""
    return -(0.5 * LOG_2PI + log_std + 0.5 * ((z - mean) * torch.exp(-log_std)) ** 2).sum(-1)


class StandardNormal(nn.Module):
    def __init__(self, num_dims: int) -> None:
        super().__init__()
        self.num_dims = num_dims

    def log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * (LOG_2PI * self.num_dims + (z * z).sum(-1))

    def sample(self, num_samples: int, temperature: float = 1.0, generator: RandomSource = None,
               device: torch.device | None = None) -> Tensor:
        return temperature * seeds.randn((num_samples, self.num_dims), generator=generator, device=device)


class DiagonalGaussian(nn.Module):
    """N(mean, diag(std^2)) with mean and log-std learned (initialised to the standard normal)."""

    def __init__(self, num_dims: int) -> None:
        super().__init__()
        self.mean = nn.Parameter(torch.zeros(num_dims))
        self.log_std = nn.Parameter(torch.zeros(num_dims))

    def log_prob(self, z: Tensor) -> Tensor:
        return diagonal_normal_log_prob(z, self.mean, self.log_std)

    def sample(self, num_samples: int, temperature: float = 1.0, generator: RandomSource = None,
               device: torch.device | None = None) -> Tensor:
        eps = seeds.randn((num_samples, self.mean.numel()), generator=generator, device=device)
        return self.mean + temperature * torch.exp(self.log_std) * eps


class GaussianMixture(nn.Module):
    """sum_c pi_c N(mu_c, diag(sigma_c^2)) with every parameter learned."""

    def __init__(self, num_dims: int, num_components: int = 10) -> None:
        super().__init__()
        if num_components < 1:
            raise ValueError(f"prior_components must be >= 1, got {num_components}")
        # Distinct initial means: identical components would receive identical gradients and stay tied.
        self.means = nn.Parameter(0.5 * torch.randn(num_components, num_dims))
        self.log_stds = nn.Parameter(torch.zeros(num_components, num_dims))
        self.logits = nn.Parameter(torch.zeros(num_components))

    def log_prob(self, z: Tensor) -> Tensor:
        per_component = diagonal_normal_log_prob(z.unsqueeze(-2), self.means, self.log_stds)
        return torch.logsumexp(per_component + torch.log_softmax(self.logits, -1), dim=-1)

    def sample(self, num_samples: int, temperature: float = 1.0, generator: RandomSource = None,
               device: torch.device | None = None) -> Tensor:
        device = device or self.means.device
        probs = torch.softmax(self.logits.detach().float(), -1).to(device)
        component = seeds.multinomial(probs, num_samples, replacement=True, generator=generator)
        eps = seeds.randn((num_samples, self.means.shape[1]), generator=generator, device=device)
        return self.means[component] + temperature * torch.exp(self.log_stds[component]) * eps


def build_prior(name: str, num_dims: int, num_components: int = 10) -> nn.Module:
    if name == "standard":
        return StandardNormal(num_dims)
    if name == "gaussian":
        return DiagonalGaussian(num_dims)
    if name == "mixture":
        return GaussianMixture(num_dims, num_components)
    raise ValueError(f"prior must be 'standard', 'gaussian' or 'mixture', got {name!r}")
