"""The ODE solvers: their order of accuracy on a known solution, NFE counts, tuple states, both directions."""

from __future__ import annotations

import math

import pytest
import torch

from lit_gen.errors import ConfigurationError
from lit_gen.integrate import FIXED_STEP_SOLVERS, solve, time_grid


def field(x, t):
    """dx/dt = cos(t) x: x(t) = x(0) exp(sin t)."""
    return torch.cos(t) * x


def exact(x0, t):
    return x0 * math.exp(math.sin(t))


X0 = torch.tensor([[0.5, -1.0, 2.0]], dtype=torch.float64)


def error(solver, steps, start=0.0, end=2.0):
    x_start = exact(X0, start)
    out = solve(field, x_start, start, end, solver=solver, steps=steps).state
    return (out - exact(X0, end)).abs().max().item()


@pytest.mark.parametrize(("solver", "order"), [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)])
def test_each_fixed_step_solver_shows_its_order(solver, order):
    # Doubling the steps divides the error by ~2^order once the steps are small enough.
    ratios = [error(solver, n) / error(solver, 2 * n) for n in (32, 64)]
    for ratio in ratios:
        assert ratio == pytest.approx(2.0**order, rel=0.15), ratios


@pytest.mark.parametrize("solver", ["euler", "heun", "rk4"])
def test_solvers_integrate_backwards_in_time(solver):
    # From t = 2 back to t = 0: the same accuracy as forwards, recovering the start.
    assert error(solver, 64, start=2.0, end=0.0) < {"euler": 5e-2, "heun": 1e-3, "rk4": 1e-7}[solver]


def test_dopri5_meets_its_tolerance_and_counts_its_evaluations():
    loose = solve(field, X0, 0.0, 2.0, solver="dopri5", rtol=1e-3, atol=1e-3)
    tight = solve(field, X0, 0.0, 2.0, solver="dopri5", rtol=1e-9, atol=1e-9)
    target = exact(X0, 2.0)
    assert (tight.state - target).abs().max() < 1e-7
    assert (loose.state - target).abs().max() < 1e-2
    assert tight.nfe > loose.nfe > 0


@pytest.mark.parametrize(("solver", "per_step"), [("euler", 1), ("midpoint", 2), ("heun", 2), ("rk4", 4)])
def test_fixed_step_nfe_is_steps_times_the_stages(solver, per_step):
    assert solve(field, X0, 0.0, 1.0, solver=solver, steps=7).nfe == 7 * per_step


def test_a_tuple_state_is_integrated_leaf_by_leaf():
    # (x, y) with dx/dt = cos(t) x and dy/dt = x: y(t) = integral of x, checked against the one-leaf solve.
    def augmented(state, t):
        x, y = state
        return field(x, t), x.sum(1)

    for solver in FIXED_STEP_SOLVERS:
        (x, y) = solve(augmented, (X0, torch.zeros(1, dtype=torch.float64)), 0.0, 1.0, solver=solver,
                       steps=50).state
        single = solve(field, X0, 0.0, 1.0, solver=solver, steps=50).state
        assert torch.equal(x, single)
        fine = torch.linspace(0, 1, 20001, dtype=torch.float64)
        integral = torch.trapezoid(X0.sum() * torch.exp(torch.sin(fine)), fine)
        assert y.item() == pytest.approx(integral.item(), rel=2e-2 if solver == "euler" else 1e-4)


def test_time_grid_and_bad_options():
    assert time_grid(1.0, 0.0, 4).tolist() == [1.0, 0.75, 0.5, 0.25, 0.0]
    for kwargs, word in [({"solver": "rk5"}, "solver must be one of euler, midpoint, heun, rk4, dopri5"),
                         ({"steps": 0}, "steps must be a positive integer, got 0"),
                         ({"steps": 2.5}, "steps must be a positive integer"),
                         ({"rtol": 0.0, "solver": "dopri5"}, "rtol must be a positive number")]:
        with pytest.raises(ConfigurationError, match=word):
            solve(field, X0, 0.0, 1.0, **kwargs)
