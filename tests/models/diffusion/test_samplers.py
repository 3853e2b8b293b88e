"""DDPM and DDIM: DDIM with every step and eta = 1 is DDPM, eta = 0 is deterministic, both sample the
right distribution when given the exact denoiser of Gaussian data."""

from __future__ import annotations

import itertools

import pytest
import torch

from lit_gen.models.diffusion.samplers import ddim_sample, ddim_sigma, ddim_timesteps, ddpm_sample
from lit_gen.models.diffusion.schedule import NoiseSchedule


def gaussian_data_denoiser(schedule: NoiseSchedule, mean: float, std: float):
    """The exact E[x_0 | x_t] of data x_0 ~ N(mean, std^2) per dimension (a linear Gaussian posterior)."""

    def denoise(xt, t):
        abar = schedule.alpha_bar(t, xt)
        gain = abar.sqrt() * std**2 / (abar * std**2 + 1 - abar)
        x0 = mean + gain * (xt - abar.sqrt() * mean)
        return x0, schedule.eps_from_x0(xt, t, x0)

    return denoise


def wiggly_denoiser(schedule: NoiseSchedule):
    """Some nonlinear, t-dependent denoiser with a consistent (x0, eps) pair."""

    def denoise(xt, t):
        x0 = torch.tanh(0.8 * xt + t.view(-1, *([1] * (xt.dim() - 1))) / schedule.num_timesteps)
        return x0, schedule.eps_from_x0(xt, t, x0)

    return denoise


@pytest.mark.parametrize("name", ["linear", "cosine"])
def test_ddim_sigma_with_eta_one_is_the_ddpm_posterior_variance(name):
    schedule = NoiseSchedule.from_name(name, 1000)
    t = torch.arange(1, 1000)
    like = torch.zeros(999, 1, dtype=torch.float64)
    sigma = ddim_sigma(schedule.alpha_bar(t, like), schedule.alpha_bar(t - 1, like), eta=1.0)
    torch.testing.assert_close(sigma.squeeze(1) ** 2, schedule.posterior_variance[1:], rtol=1e-9, atol=0)


def test_ddim_with_every_step_and_eta_one_reproduces_the_ddpm_trajectory():
    """Same noise draws, same denoiser: DDIM(eta=1, all T steps) and ancestral DDPM give the same images."""
    schedule = NoiseSchedule.from_name("linear", 100)
    denoiser = wiggly_denoiser(schedule)
    noise = torch.randn(16, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    ddpm = ddpm_sample(denoiser, schedule, noise, generator=torch.Generator().manual_seed(1))
    ddim = ddim_sample(denoiser, schedule, noise, steps=100, eta=1.0,
                       generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(ddim, ddpm, rtol=1e-8, atol=1e-8)
    eta0 = ddim_sample(denoiser, schedule, noise, steps=100, eta=0.0)
    assert not torch.allclose(eta0, ddpm, atol=1e-3), "eta must matter"


def test_deterministic_ddim_depends_only_on_the_initial_noise():
    schedule = NoiseSchedule.from_name("cosine", 200)
    denoiser = wiggly_denoiser(schedule)
    noise = torch.randn(8, 1, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a = ddim_sample(denoiser, schedule, noise, steps=20, eta=0.0, generator=torch.Generator().manual_seed(1))
    b = ddim_sample(denoiser, schedule, noise, steps=20, eta=0.0, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    c = ddim_sample(denoiser, schedule, noise, steps=20, eta=0.5, generator=torch.Generator().manual_seed(2))
    assert not torch.allclose(a, c)


def test_ddim_timesteps():
    assert ddim_timesteps(1000, 1000) == list(range(1000))
    steps = ddim_timesteps(1000, 50)
    assert len(steps) == 50 and steps[0] == 0 and steps[-1] == 999
    assert all(b > a for a, b in itertools.pairwise(steps))
    with pytest.raises(ValueError, match="steps"):
        ddim_timesteps(10, 11)


def test_samplers_draw_gaussian_data_with_its_exact_denoiser():
    """With the exact denoiser of N(0.3, 0.2^2) data, ancestral DDPM and DDIM with every step sample the
    data's mean and spread; DDIM with fewer steps shrinks the spread, less so the more steps it takes."""
    schedule = NoiseSchedule.from_name("linear", 1000)
    denoiser = gaussian_data_denoiser(schedule, mean=0.3, std=0.2)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(20000, 1, dtype=torch.float64, generator=g)
    ddpm = ddpm_sample(denoiser, schedule, noise, generator=g)
    for x in (ddpm, ddim_sample(denoiser, schedule, noise, steps=1000)):
        assert x.mean().item() == pytest.approx(0.3, abs=0.005)
        assert x.std().item() == pytest.approx(0.2, rel=0.025)
    spreads = [ddim_sample(denoiser, schedule, noise, steps=steps).std().item() for steps in (10, 25, 100)]
    assert spreads[0] < spreads[1] < spreads[2] < 0.2
