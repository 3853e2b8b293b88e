"""The instantaneous change of variables (Chen et al. 2018): along dx/dt = v(x, t),
``d log p_t(x_t) / dt = -div v(x_t, t)``.

Integrating the augmented state ``(x, L)`` with ``dL/dt = div v`` from ``start`` (the data's time) to ``end``
(the base distribution's time), with ``L(start) = 0``, gives

    log p_start(x) = log p_end(z) + L(end),    z = x(end).

This is the likelihood of any continuous normalizing flow given as a velocity field: flow matching, or a
diffusion's probability-flow ODE.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lit_gen.integrate.divergence import exact_divergence, hutchinson_divergence
from lit_gen.integrate.ode import solve

#: ``v(x, t)`` on a batch, ``t`` a 0-dim tensor.
Velocity = Callable[[Tensor, Tensor], Tensor]


@dataclass
class LogDensityChange:
    """``z`` at the end time, ``delta = L(end)`` per example and the network evaluations it took.

    A Hutchinson divergence costs one forward and one batched backward pass per evaluation; the exact one
    a forward and ceil(D / chunk) batched backward passes.
    """

    z: Tensor
    delta: Tensor
    nfe: int


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` per example."""
    flat = z.flatten(1)
    return -0.5 * (flat.pow(2).sum(1) + flat.shape[1] * math.log(2 * math.pi))


def log_density_change(velocity: Velocity, x: Tensor, start: float, end: float, *,
                       probes: Tensor | None = None, solver: str = "dopri5", steps: int = 100,
                       rtol: float = 1e-5, atol: float = 1e-5) -> LogDensityChange:
    """Integrate ``(x, L)`` from ``start`` to ``end``: the exact divergence when ``probes`` is None, else
    Hutchinson's with these fixed ``(K, B, *shape)`` probes (the same along the whole path, so the
    integrand is a smooth function of t for the adaptive solver)."""

    def field(state: tuple[Tensor, Tensor], t: Tensor) -> tuple[Tensor, Tensor]:
        def at_t(y: Tensor) -> Tensor:
            return velocity(y, t)

        v, div = exact_divergence(at_t, state[0]) if probes is None else hutchinson_divergence(at_t, state[0],
                                                                                               probes)
        return v.to(state[0].dtype), div.to(state[1].dtype)

    with torch.no_grad():
        initial = (x, x.new_zeros(x.shape[0]))
        solution = solve(field, initial, start, end, solver=solver, steps=steps, rtol=rtol, atol=atol)
    z, delta = solution.state
    return LogDensityChange(z, delta, solution.nfe)


__all__ = ["LogDensityChange", "Velocity", "log_density_change", "standard_normal_log_prob"]
