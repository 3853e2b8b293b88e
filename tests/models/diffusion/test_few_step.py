"""Few-step ODE samplers (DPM-Solver++ 2M, Heun on Karras levels) and the continuous-time view of the
discrete schedule they need: float timesteps, VE noise levels and their inverse.

Gaussian data makes the probability-flow ODE solvable in closed form: in the VE view
``x = x_0 + sigma eps`` the optimal denoiser is ``D(x, sigma) = mu + s^2 / (s^2 + sigma^2) (x - mu)`` and
``dx/dsigma = (x - D) / sigma`` has ``x(sigma) - mu = (x(sigma_max) - mu) sqrt(s^2 + sigma^2) /
sqrt(s^2 + sigma_max^2)``. Every sampler here integrates that ODE down to the smallest level ``sigma_min``
(t = 0) and then jumps to x_0 with one call of ``D`` (DDIM's last step does the same), so the samplers'
common limit is ``mu + (x(sigma_max) - mu) s^2 / (sqrt(s^2 + sigma_min^2) sqrt(s^2 + sigma_max^2))``.
"""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from lit_gen.core.levels import from_levels, to_levels
from lit_gen.errors import ConfigurationError
from lit_gen.models.diffusion import Diffusion, UNet
from lit_gen.models.diffusion.samplers import (
    SAMPLERS,
    ddim_sample,
    dpmpp_2m_sample,
    heun_sample,
    karras_sigmas,
    ve_denoiser,
)
from lit_gen.models.diffusion.schedule import NoiseSchedule

SCHEDULES = ["linear", "cosine"]
TINY = functools.partial(UNet, channels=8, channel_mults=(1, 2), num_res_blocks=1)
ODE_SAMPLERS = {"dpmpp_2m": dpmpp_2m_sample, "heun": heun_sample}


def gaussian_denoiser(schedule: NoiseSchedule, mean: torch.Tensor, std: torch.Tensor):
    """The exact E[x_0 | x_t] of data x_0 ~ N(mean, diag(std^2)) in the VP view, at long or float t."""

    def denoise(xt, t):
        abar = schedule.alpha_bar(t, xt)
        gain = abar.sqrt() * std**2 / (abar * std**2 + 1 - abar)
        x0 = mean + gain * (xt - abar.sqrt() * mean)
        return x0, schedule.eps_from_x0(xt, t, x0)

    return denoise


def exact_flow(schedule: NoiseSchedule, noise, mean, std):
    """The common limit of the samplers (module docstring) from x_t = noise at t = T-1."""
    sigmas = schedule.sigmas()
    sigma_min, sigma_max = sigmas[0], sigmas[-1]
    start = noise * (1 + sigma_max**2).sqrt()
    return mean + (start - mean) * std**2 / ((std**2 + sigma_min**2).sqrt() * (std**2 + sigma_max**2).sqrt())


def counted(denoiser):
    """The denoiser and a list that grows by one per call."""
    calls = []

    def denoise(xt, t):
        calls.append(t)
        return denoiser(xt, t)

    return denoise, calls


MEAN = torch.tensor([0.3, -0.5, 0.0, 0.8], dtype=torch.float64)
STD = torch.tensor([0.2, 0.5, 1.0, 0.05], dtype=torch.float64)


# ---------------------------------------------------------------------- the continuous-time schedule
@pytest.mark.parametrize("name", SCHEDULES)
def test_float_timesteps_on_the_grid_are_the_table(name):
    schedule = NoiseSchedule.from_name(name, 100)
    t = torch.arange(100)
    like = torch.zeros(100, 1, dtype=torch.float64)
    assert torch.equal(schedule.alpha_bar(t.double(), like), schedule.alpha_bar(t, like))
    assert torch.equal(schedule.alpha_bar(t.float(), like), schedule.alpha_bar(t, like))
    assert torch.equal(schedule.alpha_bar(t, like).squeeze(1), schedule.alphas_cumprod)
    for long_scale, float_scale in zip(schedule.signal_and_noise_scales(t, like),
                                       schedule.signal_and_noise_scales(t.double(), like), strict=True):
        assert torch.equal(long_scale, float_scale)
    # long t = -1 is still DDIM's final "timestep" with abar = 1
    assert schedule.alpha_bar(torch.tensor([-1]), like[:1]).item() == 1.0


@pytest.mark.parametrize("name", SCHEDULES)
def test_the_log_snr_is_linear_between_timesteps_and_abar_falls_monotonically(name):
    schedule = NoiseSchedule.from_name(name, 100)
    t = torch.linspace(0, 99, 2001, dtype=torch.float64)
    abar = schedule.alpha_bar(t, t).squeeze()
    assert (abar[1:] < abar[:-1]).all()
    table = schedule.alphas_cumprod.log() - torch.log1p(-schedule.alphas_cumprod)
    frac = torch.rand(99, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    between = schedule.alpha_bar(torch.arange(99) + frac, frac).squeeze()
    torch.testing.assert_close(torch.logit(between), table[:-1] + frac * (table[1:] - table[:-1]),
                               rtol=1e-10, atol=1e-10)
    # the signal and noise scales stay a unit-variance pair between the grid points
    signal, noise = schedule.signal_and_noise_scales(torch.arange(99) + frac, frac)
    torch.testing.assert_close(signal**2 + noise**2, torch.ones_like(signal), rtol=0, atol=1e-14)
    # the conversions hold at float t: x0 -> eps -> x0 and (x0, eps) -> v -> (x0, eps)
    x0, xt = torch.randn(2, 99, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    tf = torch.arange(99) + frac
    eps = schedule.eps_from_x0(xt, tf, x0)
    torch.testing.assert_close(schedule.x0_from_eps(xt, tf, eps), x0)
    v = schedule.v_from_x0_eps(x0, eps, tf)
    torch.testing.assert_close(schedule.x0_and_eps("v", v, xt, tf), (x0, eps))


@pytest.mark.parametrize("name", SCHEDULES)
def test_timestep_from_sigma_inverts_the_sigmas(name):
    schedule = NoiseSchedule.from_name(name, 100)
    abar = schedule.alphas_cumprod
    torch.testing.assert_close(schedule.sigmas(), ((1 - abar) / abar).sqrt(), rtol=1e-12, atol=0)
    torch.testing.assert_close(schedule.timestep_from_sigma(schedule.sigmas()),
                               torch.arange(100, dtype=torch.float64), rtol=0, atol=1e-9)
    # between the grid points too: sigma of a float t leads back to t
    t = torch.rand(500, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 99
    abar_t = schedule.alpha_bar(t, t).squeeze()
    torch.testing.assert_close(schedule.timestep_from_sigma(((1 - abar_t) / abar_t).sqrt()), t,
                               rtol=0, atol=1e-9)
    # outside the schedule's range: clamped to its ends
    ends = schedule.timestep_from_sigma(torch.tensor([0.0, 1e-6, 1e6]))
    assert ends.tolist() == [0.0, 0.0, 99.0]


def test_karras_sigmas():
    sigmas = karras_sigmas(0.02, 80.0, 6)
    assert len(sigmas) == 7 and sigmas[-1] == 0
    torch.testing.assert_close(sigmas[[0, 5]], torch.tensor([80.0, 0.02], dtype=torch.float64))
    assert (sigmas[1:] < sigmas[:-1]).all()
    # evenly spaced in sigma^(1/rho)
    roots = sigmas[:-1] ** (1 / 7)
    torch.testing.assert_close(roots.diff(), roots.diff()[:1].expand(5))
    torch.testing.assert_close(karras_sigmas(0.02, 80.0, 1), torch.tensor([80.0, 0.0], dtype=torch.float64))
    with pytest.raises(ConfigurationError, match="steps"):
        karras_sigmas(0.02, 80.0, 0)


# ---------------------------------------------------------------------- the samplers on Gaussian data
@pytest.mark.parametrize("name", SCHEDULES)
def test_the_ve_denoiser_is_the_closed_form_one_at_any_sigma(name):
    """Through the float timestep of sigma, the VP denoiser is D(x, sigma) = mu + s^2/(s^2+sigma^2)(x-mu)."""
    schedule = NoiseSchedule.from_name(name, 100)
    denoise = ve_denoiser(gaussian_denoiser(schedule, MEAN, STD), schedule)
    x = torch.randn(8, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 3
    sigmas = schedule.sigmas()
    for sigma in [sigmas[0].item(), 0.1234, 1.0, 17.3, sigmas[-1].item()]:
        torch.testing.assert_close(denoise(x, sigma), MEAN + STD**2 / (STD**2 + sigma**2) * (x - MEAN),
                                   rtol=1e-9, atol=1e-9)


def test_one_step_of_every_deterministic_sampler_is_the_denoiser_at_the_last_timestep():
    """All samplers start from x_t = noise at t = T-1: with one step they all return x0_hat there."""
    schedule = NoiseSchedule.from_name("cosine", 100)
    denoiser = gaussian_denoiser(schedule, MEAN, STD)
    noise = torch.randn(16, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    expected, _ = denoiser(noise, torch.full((16,), 99))
    for sampler in (ddim_sample, dpmpp_2m_sample, heun_sample):
        torch.testing.assert_close(sampler(denoiser, schedule, noise, steps=1), expected,
                                   rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", SCHEDULES)
@pytest.mark.parametrize("sampler", ["dpmpp_2m", "heun"])
def test_ode_samplers_converge_at_second_order_to_the_flow_ddim_approximates(name, sampler):
    """dpmpp_2m and heun converge to the exact flow at second order (doubling the steps divides the error
    by about 4) and, with many steps, agree with DDIM on all T steps up to DDIM's own first-order error,
    which is far larger: all three solve the same ODE."""
    schedule = NoiseSchedule.from_name(name, 100)
    denoiser = gaussian_denoiser(schedule, MEAN, STD)
    noise = torch.randn(64, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    exact = exact_flow(schedule, noise, MEAN, STD)
    solve = ODE_SAMPLERS[sampler]
    errors = {steps: (solve(denoiser, schedule, noise, steps=steps) - exact).abs().max().item()
              for steps in (100, 200, 400)}
    assert errors[200] < errors[100] / 3 and errors[400] < errors[200] / 3
    assert errors[400] < 1e-3
    ddim_error = (ddim_sample(denoiser, schedule, noise, steps=100) - exact).abs().max().item()
    assert errors[400] < ddim_error / 20 and ddim_error < 0.1


@pytest.mark.parametrize(("name", "steps"), [("linear", 50), ("cosine", 100)])
def test_dpmpp_2m_samples_the_gaussian_data(name, steps):
    """DPM-Solver++(2M) with the exact denoiser draws the data's mean and variance (within 4 standard errors
    of 20000 draws; the spreads are large next to sigma_min, so the last jump's shrinkage
    s / sqrt(s^2 + sigma_min^2) is below the tolerance). The cosine schedule ends at a far larger sigma_max
    (about 2000 against 200 at T = 100), so fewer of the Karras levels fall where the data's posterior
    changes and it needs more steps for the same accuracy."""
    schedule = NoiseSchedule.from_name(name, 100)
    mean = torch.tensor([0.3, -0.5, 0.0], dtype=torch.float64)
    std = torch.tensor([0.3, 0.6, 1.0], dtype=torch.float64)
    n = 20000
    noise = torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = dpmpp_2m_sample(gaussian_denoiser(schedule, mean, std), schedule, noise, steps=steps)
    assert ((x.mean(0) - mean).abs() < 4 * std / math.sqrt(n)).all()
    assert ((x.var(0) / std**2 - 1).abs() < 4 * math.sqrt(2 / (n - 1))).all()


@pytest.mark.parametrize("steps", [1, 2, 7])
def test_network_evaluations(steps):
    schedule = NoiseSchedule.from_name("linear", 50)
    noise = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for sampler, nfe in [(dpmpp_2m_sample, steps), (heun_sample, 2 * steps - 1)]:
        denoiser, calls = counted(gaussian_denoiser(schedule, MEAN, STD))
        sampler(denoiser, schedule, noise, steps=steps)
        assert len(calls) == nfe
        assert all(t.is_floating_point() and t.shape == (4,) for t in calls)


def test_ode_samplers_ignore_the_generator():
    schedule = NoiseSchedule.from_name("cosine", 50)
    denoiser = gaussian_denoiser(schedule, MEAN, STD)
    noise = torch.randn(4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    for sampler in ODE_SAMPLERS.values():
        a, b = (sampler(denoiser, schedule, noise, steps=5, generator=torch.Generator().manual_seed(seed))
                for seed in (1, 2))
        assert torch.equal(a, b)
    assert set(ODE_SAMPLERS) <= set(SAMPLERS)


# ---------------------------------------------------------------------- the Diffusion module
def tiny_model(prediction="eps", conditional=False, **kwargs):
    torch.manual_seed(0)
    model = Diffusion(data_shape=(1, 8, 8), num_levels=17, num_classes=10, conditional=conditional,
                      backbone=TINY, num_timesteps=40, prediction=prediction, **kwargs).eval()
    nn.init.normal_(model.backbone.out[-1].weight, std=0.1)  # a non-trivial output
    return model


def record_backbone(model):
    """The (x_t batch size, time input) of every backbone call."""
    calls = []
    model.backbone.register_forward_hook(lambda module, args, out: calls.append((args[0].shape[0], args[1])))
    return calls


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_the_module_samples_with_the_ode_samplers(prediction):
    model = tiny_model(prediction)
    calls = record_backbone(model)
    one_step = [model.sample(3, generator=torch.Generator().manual_seed(3), sampler=sampler, steps=1)
                for sampler in ("ddim", "dpmpp_2m", "heun")]
    # the same noise at t = T-1 and one step: every sampler returns the denoised noise
    assert torch.equal(one_step[0], one_step[1]) and torch.equal(one_step[0], one_step[2])
    for sampler, nfe in [("dpmpp_2m", 20), ("heun", 19)]:  # the defaults: 20 and 10 steps
        calls.clear()
        a = model.sample(3, generator=torch.Generator().manual_seed(3), sampler=sampler)
        assert len(calls) == nfe
        times = torch.cat([time for _, time in calls])
        assert (times != times.round()).any(), "the backbone sees timesteps between the grid points"
        assert a.shape == (3, 1, 8, 8) and a.min() >= 0 and a.max() <= 1
        assert torch.equal(a, from_levels(to_levels(a, 17), 17)), "samples must lie on the K levels"
        assert torch.equal(a, model.sample(3, generator=torch.Generator().manual_seed(3), sampler=sampler))
        other = model.sample(3, generator=torch.Generator().manual_seed(4), sampler=sampler)
        assert not torch.equal(a, other)


def test_guidance_works_with_the_ode_samplers():
    model = tiny_model("v", conditional=True)
    calls = record_backbone(model)
    labels = torch.tensor([1, 7])
    for sampler, nfe in [("dpmpp_2m", 4), ("heun", 7)]:
        calls.clear()
        guided = model.sample(2, labels=labels, generator=torch.Generator().manual_seed(0), sampler=sampler,
                              steps=4, guidance_scale=3.0)
        assert len(calls) == nfe and all(batch == 4 for batch, _ in calls), "one doubled call per evaluation"
        plain = model.sample(2, labels=labels, generator=torch.Generator().manual_seed(0), sampler=sampler,
                             steps=4)
        assert guided.shape == plain.shape == (2, 1, 8, 8) and not torch.equal(guided, plain)


def test_ode_sampler_knobs_are_checked():
    model = tiny_model()
    with pytest.raises(ConfigurationError, match="eta"):
        model.sample(2, sampler="heun", eta=0.5)
    for sampler in ODE_SAMPLERS:
        with pytest.raises(ConfigurationError, match="steps"):
            model.sample(2, sampler=sampler, steps=0)
    with pytest.raises(ConfigurationError, match="eta"):  # caught at construction
        tiny_model(sample_kwargs={"sampler": "dpmpp_2m", "eta": 1.0})
    assert model.sampler_options("heun") == {"steps": 10}
    # unlike DDIM's, the ODE samplers' steps are not capped at T = 40
    assert model.sampler_options("dpmpp_2m", steps=45) == {"steps": 45}
    assert model.sampler_options("ddim", steps=45) == {"steps": 40, "eta": 0.0}
