"""The forward process: closed forms against first principles, and the parameterizations' conversions."""

from __future__ import annotations

import pytest
import torch

from lit_gen.models.diffusion.schedule import NoiseSchedule, cosine_betas, linear_betas

SCHEDULES = ["linear", "cosine"]


@pytest.mark.parametrize("name", SCHEDULES)
def test_q_xt_given_x0_closed_form_equals_iterating_the_forward_steps(name):
    """x_t = sqrt(1 - beta_t) x_{t-1} + sqrt(beta_t) eps, iterated from x_0, has mean sqrt(abar_t) x_0 and
    variance 1 - abar_t: propagate mean and variance one step at a time and compare at every t."""
    schedule = NoiseSchedule.from_name(name, 200)
    x0 = torch.linspace(-1, 1, 7, dtype=torch.float64).view(7, 1)
    mean, var = x0.clone(), torch.zeros_like(x0)
    for step in range(schedule.num_timesteps):
        beta = schedule.betas[step]
        mean, var = (1 - beta).sqrt() * mean, (1 - beta) * var + beta
        t = torch.full((7,), step, dtype=torch.long)
        closed_mean, closed_var = schedule.q_mean_variance(x0, t)
        torch.testing.assert_close(closed_mean, mean, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(closed_var, var, rtol=1e-10, atol=1e-12)
        # q_sample is that Gaussian: its noise enters scaled by the standard deviation
        noise = torch.randn_like(x0)
        torch.testing.assert_close(schedule.q_sample(x0, t, noise), mean + var.sqrt() * noise)


@pytest.mark.parametrize("name", SCHEDULES)
def test_posterior_is_bayes_rule_of_the_forward_step_and_the_marginal(name):
    """q(x_{t-1} | x_t, x_0) ∝ N(x_t; sqrt(alpha_t) x_{t-1}, beta_t) N(x_{t-1}; sqrt(abar_{t-1}) x_0,
    1 - abar_{t-1}): the product of two Gaussians in x_{t-1}, written in precision form."""
    schedule = NoiseSchedule.from_name(name, 100)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(99, 3, generator=g, dtype=torch.float64) * 2 - 1
    xt = torch.randn(99, 3, generator=g, dtype=torch.float64)
    t = torch.arange(1, 100)
    mean, var, log_var = schedule.q_posterior(x0, xt, t)
    alpha, beta = (1 - schedule.betas[t])[:, None], schedule.betas[t][:, None]
    abar_prev = schedule.alphas_cumprod[t - 1][:, None]
    precision = alpha / beta + 1 / (1 - abar_prev)
    expected_mean = (alpha.sqrt() * xt / beta + abar_prev.sqrt() * x0 / (1 - abar_prev)) / precision
    torch.testing.assert_close(mean, expected_mean, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(var, (1 / precision).expand_as(var), rtol=1e-9, atol=1e-15)
    torch.testing.assert_close(log_var, var.log())
    # t = 0: x_{-1} is x_0 itself, so the posterior is a point mass at x_0
    t0 = torch.zeros(99, dtype=torch.long)
    mean0, var0, _ = schedule.q_posterior(x0, xt, t0)
    torch.testing.assert_close(mean0, x0)
    assert (var0 == 0).all()


@pytest.mark.parametrize("name", SCHEDULES)
def test_eps_v_x0_conversions_are_consistent(name):
    schedule = NoiseSchedule.from_name(name, 1000)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(64, 1, 4, 4, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(64, 1, 4, 4, generator=g, dtype=torch.float64)
    t = torch.randint(0, 1000, (64,), generator=g)
    xt = schedule.q_sample(x0, t, eps)
    v = schedule.v_from_x0_eps(x0, eps, t)
    torch.testing.assert_close(schedule.x0_from_eps(xt, t, eps), x0, rtol=0, atol=1e-8)
    torch.testing.assert_close(schedule.eps_from_x0(xt, t, x0), eps, rtol=0, atol=1e-6)
    torch.testing.assert_close(schedule.x0_from_v(xt, t, v), x0)
    torch.testing.assert_close(schedule.eps_from_v(xt, t, v), eps)
    for prediction in ("eps", "v", "x0"):
        target = schedule.target(prediction, x0, eps, t)
        got_x0, got_eps = schedule.x0_and_eps(prediction, target, xt, t)
        torch.testing.assert_close(got_x0, x0, rtol=0, atol=1e-8)
        torch.testing.assert_close(got_eps, eps, rtol=0, atol=1e-6)
    # (x_t, v) is (x_0, eps) rotated by the angle whose cosine is sqrt(abar_t): the norm is preserved
    torch.testing.assert_close(xt**2 + v**2, x0**2 + eps**2)


def test_schedules_are_well_formed():
    ho = linear_betas(1000)
    assert ho[0].item() == pytest.approx(1e-4) and ho[-1].item() == pytest.approx(0.02)  # Ho et al.'s values
    for betas in (linear_betas(1000), linear_betas(50), cosine_betas(1000), cosine_betas(20)):
        schedule = NoiseSchedule(betas)
        abar = schedule.alphas_cumprod
        assert ((betas > 0) & (betas < 1)).all()
        assert (abar[1:] < abar[:-1]).all()
        assert abar[-1] < 1e-4, "the last step must destroy the signal"
    with pytest.raises(ValueError, match="linear' or 'cosine"):
        NoiseSchedule.from_name("quadratic", 10)
