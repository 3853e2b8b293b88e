"""Solvers of dx/dt = f(x, t) from one time to another, counting the evaluations of f (NFE).

A state is a tensor or a tuple of tensors (an augmented state such as ``(x, log_density_change)``);
``f(state, t)`` returns a state of the same structure, with ``t`` a 0-dim tensor. Fixed-step solvers walk a
time grid (increasing or decreasing); ``dopri5`` is torchdiffeq's adaptive Dormand-Prince 5(4) with
tolerances ``rtol`` / ``atol``.

Steps and NFE of the fixed-step solvers, for ``steps`` intervals: euler 1 per step, midpoint and heun 2, rk4 4.
An adaptive solver chooses its steps from one error norm over the whole state, so an example's path depends
on the rest of its batch within the tolerances (fixed-step solvers treat every example alike).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from lit_gen.errors import ConfigurationError

State = Tensor | tuple[Tensor, ...]
#: ``f(state, t) -> d state / dt``.
VectorField = Callable[[State, Tensor], State]


@dataclass
class Solution:
    """The state at the end time and the number of evaluations of the vector field it took."""

    state: State
    nfe: int


class _Counted:
    """A vector field that counts its calls."""

    def __init__(self, field: VectorField) -> None:
        self.field, self.calls = field, 0

    def __call__(self, state: State, t: Tensor) -> State:
        self.calls += 1
        return self.field(state, t)


def _step(state: State, h: Tensor, derivative: State) -> State:
    """``state + h * derivative``, leaf by leaf."""
    if isinstance(state, tuple):
        return tuple(s + h * d for s, d in zip(state, derivative))
    return state + h * derivative


def _combine(derivatives: list[State], weights: list[float]) -> State:
    """``sum_i weights[i] * derivatives[i]``, leaf by leaf."""
    if isinstance(derivatives[0], tuple):
        return tuple(sum(w * d[i] for w, d in zip(weights, derivatives)) for i in range(len(derivatives[0])))
    return sum(w * d for w, d in zip(weights, derivatives))


def time_grid(start: float, end: float, steps: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """``steps + 1`` evenly spaced times from ``start`` to ``end`` (either direction)."""
    if steps < 1:
        raise ConfigurationError(f"a time grid needs steps >= 1, got {steps}")
    return torch.linspace(start, end, steps + 1, dtype=dtype)


def _fixed_step(one_step: Callable[[_Counted, State, Tensor, Tensor], State]):
    def solver(field: VectorField, state: State, times: Tensor) -> Solution:
        counted = _Counted(field)
        for t, t_next in zip(times[:-1], times[1:]):
            state = one_step(counted, state, t, t_next - t)
        return Solution(state, counted.calls)

    solver.__doc__ = f"Integrate along the grid ``times`` with the {one_step.__name__} step; returns the end state."
    solver.__name__ = one_step.__name__.removesuffix("_step")
    return solver


def euler_step(f: _Counted, x: State, t: Tensor, h: Tensor) -> State:
    return _step(x, h, f(x, t))


def midpoint_step(f: _Counted, x: State, t: Tensor, h: Tensor) -> State:
    return _step(x, h, f(_step(x, h / 2, f(x, t)), t + h / 2))


def heun_step(f: _Counted, x: State, t: Tensor, h: Tensor) -> State:
    """The explicit trapezoidal rule (Heun's second-order method)."""
    k1 = f(x, t)
    k2 = f(_step(x, h, k1), t + h)
    return _step(x, h, _combine([k1, k2], [0.5, 0.5]))


def rk4_step(f: _Counted, x: State, t: Tensor, h: Tensor) -> State:
    k1 = f(x, t)
    k2 = f(_step(x, h / 2, k1), t + h / 2)
    k3 = f(_step(x, h / 2, k2), t + h / 2)
    k4 = f(_step(x, h, k3), t + h)
    return _step(x, h, _combine([k1, k2, k3, k4], [1 / 6, 1 / 3, 1 / 3, 1 / 6]))


euler = _fixed_step(euler_step)
midpoint = _fixed_step(midpoint_step)
heun = _fixed_step(heun_step)
rk4 = _fixed_step(rk4_step)


def dopri5(field: VectorField, state: State, start: float, end: float, rtol: float = 1e-5,
           atol: float = 1e-5) -> Solution:
    """torchdiffeq's adaptive Dormand-Prince 5(4) from ``start`` to ``end``; returns the end state."""
    from torchdiffeq import odeint  # imported here: the fixed-step solvers need no third-party package

    counted = _Counted(field)
    reference = state[0] if isinstance(state, tuple) else state
    times = torch.tensor([start, end], dtype=reference.dtype, device=reference.device)
    # torchdiffeq calls func(t, y); our fields take (y, t).
    path = odeint(lambda t, y: counted(y, t), state, times, rtol=rtol, atol=atol, method="dopri5")
    end_state = tuple(p[-1] for p in path) if isinstance(path, tuple) else path[-1]
    return Solution(end_state, counted.calls)


FIXED_STEP_SOLVERS = {"euler": euler, "midpoint": midpoint, "heun": heun, "rk4": rk4}
ADAPTIVE_SOLVERS = {"dopri5": dopri5}
SOLVERS = (*FIXED_STEP_SOLVERS, *ADAPTIVE_SOLVERS)


def check_solver_options(solver: str, steps: int, rtol: float, atol: float) -> None:
    """Refuse an unknown solver, ``steps < 1`` or non-positive tolerances, naming the value given."""
    if solver not in SOLVERS:
        raise ConfigurationError(f"solver must be one of {', '.join(SOLVERS)}, got {solver!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ConfigurationError(f"steps must be a positive integer, got {steps!r}")
    for name, value in (("rtol", rtol), ("atol", atol)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ConfigurationError(f"{name} must be a positive number, got {value!r}")


def solve(field: VectorField, state: State, start: float, end: float, *, solver: str = "heun",
          steps: int = 50, rtol: float = 1e-5, atol: float = 1e-5) -> Solution:
    """Integrate from ``start`` to ``end`` with ``solver``: ``steps`` even steps for the fixed-step ones,
    ``rtol`` / ``atol`` for dopri5 (which ignores ``steps``)."""
    check_solver_options(solver, steps, rtol, atol)
    if solver in ADAPTIVE_SOLVERS:
        return ADAPTIVE_SOLVERS[solver](field, state, start, end, rtol=rtol, atol=atol)
    reference = state[0] if isinstance(state, tuple) else state
    times = time_grid(start, end, steps, dtype=reference.dtype).to(reference.device)
    return FIXED_STEP_SOLVERS[solver](field, state, times)


__all__ = ["ADAPTIVE_SOLVERS", "FIXED_STEP_SOLVERS", "SOLVERS", "Solution", "State", "VectorField",
           "check_solver_options", "dopri5", "euler", "heun", "midpoint", "rk4", "solve", "time_grid"]
