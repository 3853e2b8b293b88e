"""Reverse-process samplers: plain functions of (denoiser, schedule, noise).

A *denoiser* maps ``(x_t, t)`` (``t`` a (B,) long tensor of 0-based timesteps) to its estimates
``(x0_hat, eps_hat)`` of the clean image and the noise; conditioning, guidance and clipping live inside it,
so a sampler is only the schedule's arithmetic. Both samplers draw their noise from ``generator`` in the same
order (one normal draw per step, none on the last), which makes DDIM with every step and ``eta = 1``
reproduce DDPM's trajectory exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lit_gen.core import seeds
from lit_gen.core.seeds import RandomSource
from lit_gen.errors import ConfigurationError
from lit_gen.models.diffusion.schedule import ModelVariance, NoiseSchedule

Denoiser = Callable[[Tensor, Tensor], tuple[Tensor, Tensor]]


def _randn_like(x: Tensor, generator: RandomSource) -> Tensor:
    return seeds.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)


def ddpm_sample(denoiser: Denoiser, schedule: NoiseSchedule, noise: Tensor, *,
                variance: ModelVariance = "small", generator: RandomSource = None) -> Tensor:
    """Ancestral sampling (Ho et al. 2020): ``x_{t-1} ~ N(mu~(x0_hat, x_t), sigma_t^2)`` for t = T-1 .. 0,
    with sigma_t^2 = beta~_t (``variance="small"``) or beta_t (``"large"``)."""
    x = noise
    for step in reversed(range(schedule.num_timesteps)):
        t = torch.full((x.shape[0],), step, device=x.device, dtype=torch.long)
        x0, _ = denoiser(x, t)
        mean, _, _ = schedule.q_posterior(x0, x, t)
        log_var = schedule.model_log_variance(t, x, variance)
        x = mean + torch.exp(0.5 * log_var) * _randn_like(x, generator) if step > 0 else mean
    return x


def ddim_timesteps(num_timesteps: int, steps: int) -> list[int]:
    """``steps`` timesteps spread evenly over [0, T-1], both ends included (all of them when steps = T)."""
    if not 1 <= steps <= num_timesteps:
        raise ConfigurationError(f"DDIM steps must be in [1, {num_timesteps}], got {steps}")
    if steps == 1:
        return [num_timesteps - 1]
    return torch.linspace(0, num_timesteps - 1, steps, dtype=torch.float64).round().long().tolist()


def ddim_sigma(alpha_bar: Tensor, alpha_bar_prev: Tensor, eta: float) -> Tensor:
    """DDIM's noise scale ``eta * sqrt((1 - abar') / (1 - abar) * (1 - abar / abar'))`` (Song et al.,
    eq. 16)."""
    return eta * ((1 - alpha_bar_prev) / (1 - alpha_bar) * (1 - alpha_bar / alpha_bar_prev)).sqrt()


def ddim_sample(denoiser: Denoiser, schedule: NoiseSchedule, noise: Tensor, *, steps: int = 50,
                eta: float = 0.0, generator: RandomSource = None) -> Tensor:
    """DDIM (Song et al. 2021) on ``steps`` timesteps; ``eta = 0`` is deterministic given the noise."""
    if eta < 0:
        raise ConfigurationError(f"eta must be >= 0, got {eta}")
    timesteps = ddim_timesteps(schedule.num_timesteps, steps)
    x = noise
    for i in reversed(range(len(timesteps))):
        t = torch.full((x.shape[0],), timesteps[i], device=x.device, dtype=torch.long)
        t_prev = torch.full_like(t, timesteps[i - 1] if i > 0 else -1)
        x0, eps = denoiser(x, t)
        abar, abar_prev = schedule.alpha_bar(t, x), schedule.alpha_bar(t_prev, x)
        sigma = ddim_sigma(abar, abar_prev, eta)
        x = abar_prev.sqrt() * x0 + (1 - abar_prev - sigma**2).clamp(min=0).sqrt() * eps
        if i > 0 and eta > 0:
            x = x + sigma * _randn_like(x, generator)
    return x


SAMPLERS = {"ddpm": ddpm_sample, "ddim": ddim_sample}
