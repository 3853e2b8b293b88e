"""Langevin dynamics on an energy E(x), as plain functions.

One step of the unadjusted Langevin algorithm (SGLD without minibatch noise):

    x <- x - (eta / 2) grad_x E(x) + sigma * eps,   eps ~ N(0, I),

which for sigma = sqrt(eta) (the default) leaves exp(-E(x)) / Z invariant as eta -> 0. Image EBMs are
usually trained with a smaller sigma (a "cold" short-run sampler, as in IGEBM and JEM): pass
``noise_std`` explicitly. Gradients are taken with ``torch.autograd.grad`` with respect to x only, inside
``torch.enable_grad`` and outside inference mode, so sampling works in ``eval``, under ``torch.no_grad``
and in Lightning's validation loop; no parameter gradient is accumulated.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from lit_gen.core import seeds
from lit_gen.core.seeds import RandomSource
from lit_gen.errors import ConfigurationError

EnergyFn = Callable[[Tensor], Tensor]


def energy_and_grad(energy_fn: EnergyFn, x: Tensor) -> tuple[Tensor, Tensor]:
    """(E(x) per example, grad_x sum E(x)), both detached."""
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        energy = energy_fn(x)
        (grad,) = torch.autograd.grad(energy.sum(), x)
    return energy.detach(), grad.detach()


def langevin_step(x: Tensor, grad: Tensor, step_size: float, noise_std: float | None = None,
                  generator: RandomSource = None) -> Tensor:
    """x - (step_size / 2) grad + noise_std * eps, with noise_std = sqrt(step_size) by default."""
    sigma = math.sqrt(step_size) if noise_std is None else noise_std
    out = x - 0.5 * step_size * grad
    if sigma > 0:
        out = out + sigma * seeds.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    return out


def langevin_sample(
    energy_fn: EnergyFn,
    x: Tensor,
    steps: int,
    step_size: float,
    noise_std: float | None = None,
    *,
    grad_clip: float | None = None,
    bounds: tuple[float, float] | None = None,
    generator: RandomSource = None,
) -> Tensor:
    """Run ``steps`` Langevin steps from ``x``; returns the final state (detached).

    Args:
        grad_clip: clamp each gradient coordinate to [-grad_clip, grad_clip] (stabilises early training).
        bounds: clamp the state to [low, high] after every step (images live in a box).
        generator: the source of all the noise, for reproducible samples (per example for
            :class:`~lit_gen.core.seeds.ExampleGenerators`).
    """
    if steps < 0:
        raise ConfigurationError(f"steps must be >= 0, got {steps}")
    x = x.detach()
    for _ in range(steps):
        _, grad = energy_and_grad(energy_fn, x)
        if grad_clip is not None:
            grad = grad.clamp(-grad_clip, grad_clip)
        x = langevin_step(x, grad, step_size, noise_std, generator)
        if bounds is not None:
            x = x.clamp(*bounds)
    return x
