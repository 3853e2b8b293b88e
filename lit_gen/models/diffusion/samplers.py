"""Reverse-process samplers: plain functions of (denoiser, schedule, noise).

A *denoiser* maps ``(x_t, t)`` (``t`` a (B,) tensor of 0-based timesteps: long on the schedule's grid, or
float between its points, see :mod:`.schedule`) to its estimates ``(x0_hat, eps_hat)`` of the clean image and
the noise; conditioning, guidance and clipping live inside it, so a sampler is only the schedule's
arithmetic. DDPM and DDIM draw their noise from ``generator`` in the same order (one normal draw per step,
none on the last), which makes DDIM with every step and ``eta = 1`` reproduce DDPM's trajectory exactly.

The few-step ODE samplers (DPM-Solver++ 2M, Heun) solve the probability-flow ODE in the variance-exploding
view of the same process, ``x_ve = x_t / sqrt(abar_t) = x_0 + sigma eps`` with
``sigma = sqrt((1 - abar_t) / abar_t)``, whose denoiser ``D(x_ve, sigma)`` is the model's ``x0_hat`` at
``x_t = x_ve / sqrt(1 + sigma^2)`` and the (float) timestep of ``sigma``. They step through Karras et al.'s
noise levels and start from the same ``x_t = noise`` at t = T-1 as DDPM and DDIM, so one noise gives
comparable images across samplers; at sigma = 0 both views are the data x_0.
"""

from __future__ import annotations

import math
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


def karras_sigmas(sigma_min: float, sigma_max: float, steps: int, rho: float = 7.0) -> Tensor:
    """Karras et al.'s (EDM) ``steps`` noise levels from ``sigma_max`` down to ``sigma_min``, evenly spaced in
    ``sigma^(1/rho)``, then 0 appended (``steps + 1`` values, float64; one step is ``[sigma_max, 0]``)."""
    if steps < 1:
        raise ConfigurationError(f"steps must be >= 1, got {steps}")
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    low, high = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (high + ramp * (low - high)) ** rho
    return torch.cat([sigmas, sigmas.new_zeros(1)])


VEDenoiser = Callable[[Tensor, float], Tensor]


def ve_denoiser(denoiser: Denoiser, schedule: NoiseSchedule) -> VEDenoiser:
    """``D(x_ve, sigma)``: the denoiser's ``x0_hat`` at ``x_t = x_ve / sqrt(1 + sigma^2)`` and the float
    timestep of ``sigma``."""

    def denoise(x: Tensor, sigma: float) -> Tensor:
        sigmas = torch.full((x.shape[0],), sigma, dtype=torch.float64, device=x.device)
        x0, _ = denoiser(x / math.sqrt(1 + sigma**2), schedule.timestep_from_sigma(sigmas))
        return x0

    return denoise


def _ve_start(schedule: NoiseSchedule, noise: Tensor, steps: int) -> tuple[Tensor, list[float]]:
    """The Karras levels spanning the schedule's sigmas, and ``x_t = noise`` at t = T-1 in the VE view."""
    levels = schedule.sigmas()
    sigmas = karras_sigmas(levels[0].item(), levels[-1].item(), steps).tolist()
    return noise * math.sqrt(1 + sigmas[0] ** 2), sigmas


def dpmpp_2m_sample(denoiser: Denoiser, schedule: NoiseSchedule, noise: Tensor, *, steps: int = 20,
                    generator: RandomSource = None) -> Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022): the multistep second-order data-prediction solver in
    ``lambda = -log sigma`` on ``steps`` Karras levels; first order (DDIM's step) on the first step and on
    the last one to sigma = 0. ``steps`` network evaluations; deterministic given the noise (``generator``
    is unused)."""
    x, sigmas = _ve_start(schedule, noise, steps)
    denoise = ve_denoiser(denoiser, schedule)
    previous = None
    for i in range(steps - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        x0 = denoise(x, sigma)
        h = math.log(sigma / sigma_next)
        estimate = x0
        if previous is not None:
            # x0 extrapolated linearly in lambda from the last two evaluations (r = h_last / h)
            r = math.log(sigmas[i - 1] / sigma) / h
            estimate = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * previous
        x = (sigma_next / sigma) * x - math.expm1(-h) * estimate
        previous = x0
    return denoise(x, sigmas[-2])  # the first-order step to sigma = 0 lands on D


def heun_sample(denoiser: Denoiser, schedule: NoiseSchedule, noise: Tensor, *, steps: int = 10,
                generator: RandomSource = None) -> Tensor:
    """Heun's second-order method on ``dx/dsigma = (x - D(x, sigma)) / sigma`` over ``steps`` Karras levels
    (Karras et al. 2022, Algorithm 1 without churn); the last step to sigma = 0 is Euler's, which lands on
    ``D``. ``2 * steps - 1`` network evaluations; deterministic given the noise (``generator`` is unused)."""
    x, sigmas = _ve_start(schedule, noise, steps)
    denoise = ve_denoiser(denoiser, schedule)
    for i in range(steps - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        slope = (x - denoise(x, sigma)) / sigma
        euler = x + (sigma_next - sigma) * slope
        slope_next = (euler - denoise(euler, sigma_next)) / sigma_next
        x = x + (sigma_next - sigma) * 0.5 * (slope + slope_next)
    return denoise(x, sigmas[-2])  # Euler's step to sigma = 0 lands on D


SAMPLERS = {"ddpm": ddpm_sample, "ddim": ddim_sample, "dpmpp_2m": dpmpp_2m_sample, "heun": heun_sample}
