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
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from lit_gen.core.seeds import RandomSource
from lit_gen.errors import ConfigurationError
from lit_gen.integrate.divergence import exact_divergence, hutchinson_divergence, rademacher_probes
from lit_gen.integrate.ode import FIXED_STEP_SOLVERS, check_solver_options, solve

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


DIVERGENCES = ("exact", "hutchinson", "auto")


@dataclass(frozen=True)
class ODELikelihood:
    """How a family computes an ODE likelihood: solver, tolerances or steps, and divergence.

    ``divergence="auto"`` is resolved by :meth:`for_dims`: the exact trace (D gradients per evaluation) up
    to ``exact_max_dims`` dimensions, Hutchinson's estimator with ``probes`` Rademacher probes above.
    """

    solver: str = "dopri5"
    steps: int = 100
    rtol: float = 1e-5
    atol: float = 1e-5
    divergence: str = "auto"
    probes: int = 1
    exact_max_dims: int = 128

    def __post_init__(self) -> None:
        check_solver_options(self.solver, self.steps, self.rtol, self.atol)
        if self.divergence not in DIVERGENCES:
            raise ConfigurationError(f"likelihood divergence must be one of {', '.join(DIVERGENCES)}, "
                                     f"got {self.divergence!r}")
        for name, value in (("hutchinson_probes", self.probes), ("exact_divergence_max_dims", self.exact_max_dims)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigurationError(f"{name} must be a positive integer, got {value!r}")

    def for_dims(self, num_dims: int) -> ODELikelihood:
        """This configuration with ``auto`` resolved for data of ``num_dims`` dimensions."""
        if self.divergence != "auto":
            return self
        return replace(self, divergence="exact" if num_dims <= self.exact_max_dims else "hutchinson")

    def kind(self, num_levels: int | None) -> str:
        """Hutchinson: an estimate; the exact trace: the density itself on continuous data, a bound on the
        dequantized discrete data."""
        if self.divergence == "hutchinson":
            return "estimate"
        return "exact" if num_levels is None else "bound"

    def details(self) -> dict[str, Any]:
        """What metrics.json records beside the number."""
        details: dict[str, Any] = {"solver": self.solver, "divergence": self.divergence}
        if self.solver in FIXED_STEP_SOLVERS:
            details["steps"] = self.steps
        else:
            details.update(rtol=self.rtol, atol=self.atol)
        if self.divergence == "hutchinson":
            details["hutchinson_probes"] = self.probes
        return details

    def change(self, velocity: Velocity, x: Tensor, start: float, end: float,
               generator: RandomSource = None) -> LogDensityChange:
        """:func:`log_density_change` with this solver and divergence (probes drawn from ``generator``)."""
        if self.divergence == "auto":
            raise ValueError("resolve divergence='auto' with for_dims first")
        probes = rademacher_probes(self.probes, x, generator) if self.divergence == "hutchinson" else None
        return log_density_change(velocity, x, start, end, probes=probes, solver=self.solver, steps=self.steps,
                                  rtol=self.rtol, atol=self.atol)


__all__ = ["DIVERGENCES", "LogDensityChange", "ODELikelihood", "Velocity", "log_density_change",
           "standard_normal_log_prob"]
