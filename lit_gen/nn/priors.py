"""Priors p(z) over flat latents ``(B, D)`` shared by the families: the standard normal, a learned diagonal
Gaussian (Glow's "learntop") and a learned mixture of diagonal Gaussians.

A mixture can match a VAE's aggregate posterior better than N(0, I), which tightens the ELBO (Tomczak &
Welling 2018 make the same point with VampPrior); over a flow's latent each component can take one mode of
the data (e.g. a digit class). Sampling scales every component's spread by the temperature.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from lit_gen.core import seeds
from lit_gen.core.seeds import RandomSource
from lit_gen.errors import check_sizes

LOG_2PI = math.log(2 * math.pi)


def diagonal_normal_log_prob(z: Tensor, mean: Tensor, log_std: Tensor) -> Tensor:
    """log N(z; mean, diag(exp(2 log_std))) summed over the last axis."""
    return -(0.5 * LOG_2PI + log_std + 0.5 * ((z - mean) * torch.exp(-log_std)) ** 2).sum(-1)


class StandardNormal(nn.Module):
    """p(z) = N(0, I); the KL to a diagonal Gaussian posterior has a closed form."""

    has_analytic_kl = True

    def __init__(self, num_dims: int) -> None:
        super().__init__()
        self.num_dims = num_dims

    def log_prob(self, z: Tensor) -> Tensor:
        return -0.5 * (LOG_2PI * self.num_dims + (z * z).sum(-1))

    def kl(self, mean: Tensor, log_var: Tensor) -> Tensor:
        """KL(N(mean, exp(log_var)) || N(0, I)) per example."""
        return 0.5 * (mean**2 + torch.exp(log_var) - 1.0 - log_var).sum(-1)

    def sample(self, num_samples: int, temperature: float = 1.0, generator: RandomSource = None,
               device: torch.device | None = None) -> Tensor:
        return temperature * seeds.randn((num_samples, self.num_dims), generator=generator, device=device)


class DiagonalGaussian(nn.Module):
    """N(mean, diag(std^2)) with mean and log-std learned (initialised to the standard normal)."""

    has_analytic_kl = False

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
    """sum_c pi_c N(mu_c, diag(sigma_c^2)) with every parameter learned.

    ``init_spread`` scales the initial means, drawn from N(0, init_spread^2): identical components would
    receive identical gradients and stay tied.
    """

    has_analytic_kl = False

    def __init__(self, num_dims: int, num_components: int = 10, init_spread: float = 1.0) -> None:
        super().__init__()
        check_sizes(type(self).__name__, prior_components=num_components)
        self.means = nn.Parameter(init_spread * torch.randn(num_components, num_dims))
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
