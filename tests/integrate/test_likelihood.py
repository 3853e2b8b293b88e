"""The instantaneous change of variables against closed forms: linear fields push a Gaussian to a Gaussian."""

from __future__ import annotations

import math

import pytest
import torch

from lit_gen.integrate import log_density_change, rademacher_probes, standard_normal_log_prob


def gaussian_log_prob(x, mean, var):
    return (-0.5 * ((x - mean) ** 2 / var + torch.log(2 * math.pi * var))).sum(1)


def test_standard_normal_log_prob():
    z = torch.randn(4, 3, 2, dtype=torch.float64)
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1)
    assert torch.allclose(standard_normal_log_prob(z), expected)


def scaling_flow(scale):
    """x_t = (1 + (scale - 1) t) z: dx/dt = (scale - 1) / (1 + (scale - 1) t) x maps N(0, I) at t = 0 to
    N(0, scale^2 I) at t = 1."""
    def velocity(x, t):
        return (scale - 1) / (1 + (scale - 1) * t) * x

    return velocity


@pytest.mark.parametrize(("solver", "atol"), [("dopri5", 1e-6), ("rk4", 1e-6)])
def test_log_density_of_a_scaled_gaussian(solver, atol):
    scale = torch.tensor([0.5, 2.0, 3.0], dtype=torch.float64)
    x = torch.randn(8, 3, dtype=torch.float64) * scale
    change = log_density_change(scaling_flow(scale), x, 1.0, 0.0, solver=solver, steps=200, rtol=1e-9,
                                atol=1e-9)
    assert torch.allclose(change.z, x / scale, atol=atol)
    log_p = standard_normal_log_prob(change.z) + change.delta
    assert torch.allclose(log_p, gaussian_log_prob(x, 0.0, scale**2), atol=atol)
    assert change.nfe > 0


def test_hutchinson_is_exact_for_a_field_with_a_diagonal_jacobian():
    # Rademacher probes have eps_i^2 = 1: for a diagonal Jacobian every probe gives the exact trace.
    scale = torch.tensor([0.5, 2.0], dtype=torch.float64)
    x = torch.randn(5, 2, dtype=torch.float64)
    exact = log_density_change(scaling_flow(scale), x, 1.0, 0.0, solver="rk4", steps=50)
    probes = rademacher_probes(1, x, torch.Generator().manual_seed(3))
    estimate = log_density_change(scaling_flow(scale), x, 1.0, 0.0, probes=probes, solver="rk4", steps=50)
    assert torch.allclose(exact.delta, estimate.delta, atol=1e-12)
