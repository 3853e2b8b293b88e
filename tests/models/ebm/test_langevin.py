"""The Langevin sampler: one step is the formula, and many chains on a quadratic energy draw its Gaussian."""

from __future__ import annotations

import math

import pytest
import torch

from lit_gen.models.ebm.langevin import energy_and_grad, langevin_sample, langevin_step

MEAN = torch.tensor([1.0, -2.0])
PRECISION = torch.tensor([[2.0, 0.6], [0.6, 1.0]])


def quadratic_energy(x: torch.Tensor) -> torch.Tensor:
    """E(x) = (x - mu)^T P (x - mu) / 2: exp(-E) is N(mu, P^-1)."""
    d = x - MEAN
    return 0.5 * ((d @ PRECISION) * d).sum(1)


def test_energy_gradient_is_the_analytic_one_even_in_inference_mode():
    x = torch.randn(5, 2)
    with torch.inference_mode():
        energy, grad = energy_and_grad(quadratic_energy, x)
    assert torch.allclose(grad, (x - MEAN) @ PRECISION, atol=1e-6)
    assert torch.allclose(energy, quadratic_energy(x))


def test_one_step_is_the_langevin_update():
    x, grad = torch.randn(3, 2), torch.randn(3, 2)
    eta = 0.04
    eps = torch.randn(3, 2, generator=torch.Generator().manual_seed(5))
    out = langevin_step(x, grad, eta, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(out, x - eta / 2 * grad + math.sqrt(eta) * eps)
    cold = langevin_step(x, grad, eta, noise_std=0.0)
    assert torch.allclose(cold, x - eta / 2 * grad)


def test_chains_on_a_quadratic_energy_draw_its_gaussian():
    """4000 chains from far away; after 1500 steps of eta = 0.02 their mean and covariance are those of
    N(mu, P^-1) (discretisation bias of the unadjusted sampler at this eta: ~1%, below the tolerance)."""
    generator = torch.Generator().manual_seed(0)
    start = 4.0 * torch.randn(4000, 2, generator=generator)
    with torch.no_grad():  # as sample() is called by evaluation
        x = langevin_sample(quadratic_energy, start, steps=1500, step_size=0.02, generator=generator)
    covariance = torch.linalg.inv(PRECISION)
    # Standard errors: mean ~ sqrt(1.3 / 4000) = 0.018, covariance entries ~ 0.03.
    assert torch.allclose(x.mean(0), MEAN, atol=0.06), x.mean(0)
    assert torch.allclose(torch.cov(x.T), covariance, atol=0.08), torch.cov(x.T)


def test_sampler_is_reproducible_and_respects_bounds_and_clipping():
    start = torch.zeros(16, 2)
    runs = [langevin_sample(quadratic_energy, start, 10, 0.1, generator=torch.Generator().manual_seed(1),
                            bounds=(-0.5, 0.5)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert runs[0].abs().max() <= 0.5
    # Clipped gradients: a cold step from far away moves by at most eta / 2 * clip per coordinate.
    far = torch.full((4, 2), 100.0)
    moved = langevin_sample(quadratic_energy, far, 1, 0.1, noise_std=0.0, grad_clip=1.0)
    assert torch.allclose(far - moved, torch.full((4, 2), 0.05), atol=1e-5)
    with pytest.raises(ValueError, match="steps"):
        langevin_sample(quadratic_energy, start, -1, 0.1)
