"""The variational bound: its discretized decoder, its KL, its prior term and its value for an exact model."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from lit_gen.models.diffusion.likelihood import (
    discretized_gaussian_log_likelihood,
    normal_kl,
    prior_kl,
    stratified_timesteps,
    variational_bound,
)
from lit_gen.models.diffusion.schedule import NoiseSchedule


def levels(num_levels: int) -> torch.Tensor:
    return torch.linspace(-1, 1, num_levels, dtype=torch.float64)


@pytest.mark.parametrize("num_levels", [2, 17, 256])
def test_discretized_gaussian_is_a_distribution_over_the_levels(num_levels):
    g = torch.Generator().manual_seed(0)
    means = torch.cat([torch.rand(20, generator=g, dtype=torch.float64) * 4 - 2, torch.tensor([-50.0, 50.0])])
    log_scales = torch.cat([torch.rand(20, generator=g, dtype=torch.float64) * 6 - 7,
                            torch.tensor([-7.0, -7.0])])
    x = levels(num_levels)[:, None].expand(-1, 22)
    log_p = discretized_gaussian_log_likelihood(x, means.expand_as(x), log_scales.expand_as(x), num_levels)
    assert torch.isfinite(log_p).all(), "tails must stay finite (no log 0)"
    torch.testing.assert_close(log_p.exp().sum(0), torch.ones(22, dtype=torch.float64), rtol=0, atol=1e-9)


def test_discretized_gaussian_matches_cdf_differences():
    k, num_levels = 8, 17
    x = levels(num_levels)[k]
    normal = Normal(torch.tensor(0.1, dtype=torch.float64), torch.tensor(0.3, dtype=torch.float64))
    half = 1 / (num_levels - 1)
    expected = torch.log(normal.cdf(x + half) - normal.cdf(x - half))
    mean, log_scale = torch.tensor([0.1]), torch.tensor([math.log(0.3)])
    got = discretized_gaussian_log_likelihood(x.view(1), mean, log_scale, num_levels)
    torch.testing.assert_close(got, expected.view(1))
    lowest = discretized_gaussian_log_likelihood(torch.tensor([-1.0]), mean, log_scale, num_levels)
    torch.testing.assert_close(lowest, normal.cdf(torch.tensor(-1 + half, dtype=torch.float64)).log().view(1))


def test_normal_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(2, 50, generator=g, dtype=torch.float64)
    v1, v2 = torch.rand(2, 50, generator=g, dtype=torch.float64) + 0.1
    expected = kl_divergence(Normal(m1, v1.sqrt()), Normal(m2, v2.sqrt()))
    torch.testing.assert_close(normal_kl(m1, v1.log(), m2, v2.log()), expected)


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_prior_term_is_about_zero_for_a_well_formed_schedule(name):
    x0 = levels(256)[torch.randint(0, 256, (8, 1, 28, 28))]
    per_dim = prior_kl(NoiseSchedule.from_name(name, 1000), x0) / (28 * 28)
    assert (per_dim >= 0).all() and (per_dim < 1e-4).all()
    # a schedule that keeps signal at T pays for it in the prior term
    weak = NoiseSchedule(torch.full((20,), 0.01, dtype=torch.float64))
    assert (prior_kl(weak, x0) / (28 * 28) > 0.05).all()


def test_bound_of_the_exact_model_of_a_point_mass_is_zero():
    """Data that is always the same image: the exact denoiser returns it, every KL vanishes, the narrow
    decoder puts (almost) all mass in the right bins, and the bound is ~0 nats = -log 1."""
    schedule = NoiseSchedule.from_name("linear", 1000)
    image = levels(17)[torch.randint(0, 17, (1, 1, 8, 8), generator=torch.Generator().manual_seed(0))]

    def exact(xt, t):
        x0 = image.expand_as(xt).to(xt.dtype)
        return x0, schedule.eps_from_x0(xt, t, x0)

    terms = variational_bound(exact, schedule, image.expand(3, -1, -1, -1), 17, batch_size=600)
    assert terms.num_terms == 1000
    assert terms.total.shape == (3,)
    assert (terms.diffusion.abs() < 1e-6).all()
    assert (terms.total < 1e-2).all() and (terms.total >= 0).all()


def test_bound_is_finite_and_positive_for_a_bad_model():
    schedule = NoiseSchedule.from_name("cosine", 50)
    x0 = levels(256)[torch.tensor([0, 255, 128])].view(3, 1, 1, 1).expand(3, 1, 4, 4)

    def bad(xt, t):
        x0_hat = -xt.clamp(-1, 1)
        return x0_hat, schedule.eps_from_x0(xt, t, x0_hat)

    terms = variational_bound(bad, schedule, x0, 256, batch_size=64)
    assert torch.isfinite(terms.total).all() and (terms.total > 0).all()


def test_stratified_timesteps_give_an_unbiased_estimate_of_the_sum_over_t():
    num_timesteps = 1000
    t = torch.arange(num_timesteps, dtype=torch.float64)
    f = (3 * t / num_timesteps) ** 2 + torch.sin(t)
    g = torch.Generator().manual_seed(0)
    estimates = []
    for _ in range(2000):
        t, w = stratified_timesteps(num_timesteps, 20, g)
        assert t[0] == 0 and w[0] == 1 and w.sum() == num_timesteps
        estimates.append((f[t] * w).sum())
    estimates = torch.stack(estimates)
    assert estimates.mean().item() == pytest.approx(f.sum().item(), rel=2e-3)
    t, w = stratified_timesteps(num_timesteps, num_timesteps, g)
    assert torch.equal(t, torch.arange(num_timesteps)) and (w == 1).all()
