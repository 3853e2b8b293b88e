"""Condition-annealed sampling (CADS, Sadat et al. 2024): noise on the condition embedding, annealed away.

Guided conditional samplers crowd their samples near a class's modes. CADS replaces the condition
embedding ``y`` of every conditional network evaluation by

    y_hat = sqrt(gamma(t)) * y + noise_scale * sqrt(1 - gamma(t)) * n,      n ~ N(0, I), fresh at each call

where ``t`` is the sampling progress measured as noise level: ``t = 1`` where the trajectory starts (pure
noise) and ``t = 0`` where it ends (data), and ``gamma`` anneals from 0 to 1 piecewise linearly:

    gamma(t) = 1 for t <= tau1,   (tau2 - t) / (tau2 - tau1) for tau1 < t < tau2,   0 for t >= tau2.

Early steps, which decide the sample's layout, see a blurred condition; late steps see the clean one.
Because the noise shifts the embedding's statistics, ``y_hat`` is rescaled to ``y``'s per-example mean
and standard deviation and mixed back with weight ``psi``:

    y_final = psi * rescaled(y_hat) + (1 - psi) * y_hat.

``noise_scale = 0`` turns CADS off: the network sees ``y`` itself (no annealing either), so sampling is
the plain guided sampler bit for bit. Only conditional evaluations are annealed: the "no label" embedding
of classifier-free guidance's unconditional pass is left alone.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import torch
from torch import Tensor

from lit_gen.core import seeds
from lit_gen.core.seeds import RandomSource
from lit_gen.errors import ConfigurationError


def cads_gamma(t: Tensor | float, tau1: float, tau2: float) -> Tensor:
    """The annealing weight of the clean condition at noise level ``t`` (1: start of sampling, 0: end)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return ((tau2 - t) / (tau2 - tau1)).clamp(0.0, 1.0)


def rescale_to(y_hat: Tensor, y: Tensor, eps: float = 1e-12) -> Tensor:
    """``y_hat`` standardised and given ``y``'s mean and standard deviation, per example (last dim)."""
    mean_hat, std_hat = y_hat.mean(-1, keepdim=True), y_hat.std(-1, keepdim=True)
    mean, std = y.mean(-1, keepdim=True), y.std(-1, keepdim=True)
    return (y_hat - mean_hat) / std_hat.clamp_min(eps) * std + mean


@dataclass(frozen=True)
class CADS:
    """The annealing schedule and its strength; ``noise_scale`` is the knob (0: off)."""

    noise_scale: float = 0.0
    tau1: float = 0.6
    tau2: float = 0.9
    psi: float = 1.0

    def __post_init__(self) -> None:
        if not self.noise_scale >= 0:
            raise ConfigurationError(f"cads noise_scale must be >= 0, got {self.noise_scale}")
        if not 0.0 <= self.tau1 < self.tau2 <= 1.0:
            raise ConfigurationError(f"cads needs 0 <= tau1 < tau2 <= 1, got tau1={self.tau1}, tau2={self.tau2}")
        if not 0.0 <= self.psi <= 1.0:
            raise ConfigurationError(f"cads psi must be in [0, 1], got {self.psi}")

    @property
    def active(self) -> bool:
        return self.noise_scale > 0

    def anneal(self, y: Tensor, t: Tensor | float, generator: RandomSource = None) -> Tensor:
        """The annealed condition of ``y`` (B, E) at noise level ``t`` (a number, or (B,) per example);
        one fresh normal draw of ``y``'s shape from ``generator`` per call, whatever ``t`` is (so the
        random stream does not depend on where in the schedule a call falls)."""
        if not self.active:
            return y
        noise = seeds.randn(y.shape, generator=generator, device=y.device, dtype=y.dtype)
        gamma = cads_gamma(t, self.tau1, self.tau2).to(device=y.device, dtype=y.dtype)
        gamma = gamma.reshape(-1, *([1] * (y.dim() - 1))) if gamma.dim() else gamma
        y_hat = gamma.sqrt() * y + self.noise_scale * (1 - gamma).sqrt() * noise
        if self.psi == 0:
            return y_hat
        return self.psi * rescale_to(y_hat, y) + (1 - self.psi) * y_hat


def cads_from_options(noise_scale: float = 0.0, tau1: float = 0.6, tau2: float = 0.9, psi: float = 1.0) -> CADS:
    """A :class:`CADS` from a sampler's ``cads_*`` knobs (checked, one-line errors)."""
    for name, value in (("cads_noise_scale", noise_scale), ("cads_tau1", tau1), ("cads_tau2", tau2),
                        ("cads_psi", psi)):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigurationError(f"{name} must be a number, got {value!r}")
    return CADS(float(noise_scale), float(tau1), float(tau2), float(psi))


def check_cads_backbone(backbone: torch.nn.Module, conditional: bool) -> None:
    """CADS needs a conditional model whose backbone takes a ``condition_transform`` (the U-Net does)."""
    if not conditional:
        raise ConfigurationError("cads_noise_scale > 0 needs a conditional model (conditional: true)")
    if "condition_transform" not in inspect.signature(backbone.forward).parameters:
        raise ConfigurationError(f"cads_noise_scale > 0: the backbone {type(backbone).__name__} takes no "
                                 "condition_transform (its forward would have to accept one)")


__all__ = ["CADS", "cads_from_options", "cads_gamma", "check_cads_backbone", "rescale_to"]
