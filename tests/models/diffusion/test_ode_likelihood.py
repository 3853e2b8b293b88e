"""The probability-flow ODE likelihood of a discrete-time diffusion model against closed forms: with the
optimal denoiser of Gaussian data, the ODE carries each point along the Gaussian's own transport and the
density is known exactly; the module's number through its own denoiser, its kinds and its metrics.json rows."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from lit_gen.core.levels import from_levels
from lit_gen.integrate.likelihood import ODELikelihood
from lit_gen.models.diffusion import Diffusion
from lit_gen.models.diffusion.likelihood import probability_flow_log_density
from lit_gen.models.diffusion.schedule import NoiseSchedule
from tests.conftest import TINY_FAMILIES, quiet_trainer_args, run_cli

MEAN = torch.tensor([0.2, -0.1, 0.0, 0.3], dtype=torch.float64)
VAR = torch.tensor([0.09, 0.04, 0.25, 0.16], dtype=torch.float64)


def ve_optimal(x, sigma):
    """E[x0 | x0 + sigma n = x] for x0 ~ N(MEAN, diag VAR)."""
    flat = x.flatten(1)
    return (MEAN + VAR / (VAR + sigma**2) * (flat - MEAN)).view_as(x)


def expected_log_density(schedule, y):
    """What the ODE gives exactly: y at sigma_min maps to z = MEAN + sqrt((VAR + s_max^2) / (VAR + s_min^2))
    (y - MEAN) at sigma_max, scored by the prior N(0, 1 + s_max^2) plus the map's log-determinant."""
    levels = schedule.sigmas()
    lo, hi = levels[0].item() ** 2, levels[-1].item() ** 2
    gain = ((VAR + hi) / (VAR + lo)).sqrt()
    z = MEAN + gain * (y.flatten(1) - MEAN)
    prior = (-0.5 * (z**2 / (1 + hi) + math.log(2 * math.pi * (1 + hi)))).sum(1)
    return prior + gain.log().sum()


def gaussian_log_density(schedule, y):
    """The density the model should have at sigma_min: N(MEAN, VAR + sigma_min^2)."""
    var = VAR + schedule.sigmas()[0].item() ** 2
    return (-0.5 * ((y.flatten(1) - MEAN) ** 2 / var + torch.log(2 * math.pi * var))).sum(1)


@pytest.mark.parametrize(("schedule_name", "ode"), [
    ("linear", ODELikelihood(solver="dopri5", rtol=1e-8, atol=1e-8, divergence="exact")),
    ("cosine", ODELikelihood(solver="dopri5", rtol=1e-8, atol=1e-8, divergence="exact")),
    ("linear", ODELikelihood(solver="rk4", steps=200, divergence="hutchinson", probes=1)),
])
def test_the_ode_density_of_the_optimal_denoiser_is_the_gaussians(schedule_name, ode):
    schedule = NoiseSchedule.from_name(schedule_name, 1000)
    y = (MEAN + VAR.sqrt() * torch.randn(5, 4, generator=torch.Generator().manual_seed(0),
                                          dtype=torch.float64)).view(5, 1, 2, 2)
    log_p, nfe = probability_flow_log_density(ve_optimal, schedule, y, ode, torch.Generator().manual_seed(1))
    # Hutchinson is exact here: the Jacobian of this field is diagonal.
    assert torch.allclose(log_p, expected_log_density(schedule, y), atol=1e-5)
    assert nfe > 0
    # ... which is the Gaussian's density up to the prior's mismatch at sigma_max (N(0, 1 + s^2) scores
    # points of N(MEAN, VAR + s^2)): per dimension about MEAN z / s^2 ~ MEAN / sigma_max, a few 1e-3 nats.
    assert torch.allclose(log_p, gaussian_log_density(schedule, y), atol=1e-2)
    assert not torch.allclose(log_p, gaussian_log_density(schedule, y + 0.05), atol=1e-2)


class OptimalEps(nn.Module):
    """The VP backbone whose eps prediction is optimal for Gaussian data, at any (float) time."""

    def __init__(self, data_shape, num_classes=None, schedule=None):
        super().__init__()
        self.schedule = schedule
        self.register_buffer("anchor", torch.zeros((), dtype=torch.float64))  # sets the network dtype

    def forward(self, xt, time, labels=None):
        t = time.double() * self.schedule.num_timesteps / 1000.0
        abar = self.schedule.alpha_bar(t, xt).flatten()[:, None]
        flat = xt.double().flatten(1)
        x0 = MEAN + VAR * abar.sqrt() / (abar * VAR + 1 - abar) * (flat - abar.sqrt() * MEAN)
        return ((flat - abar.sqrt() * x0) / (1 - abar).sqrt()).view_as(xt).to(xt.dtype)


def gaussian_diffusion(**kwargs):
    schedule = NoiseSchedule.from_name("linear", 1000).double()
    model = Diffusion(backbone=lambda shape, classes: OptimalEps(shape, classes, schedule), data_shape=(1, 2, 2),
                      num_levels=256, num_timesteps=1000, **kwargs)
    return model.double().eval()


def test_the_modules_ode_density_goes_through_its_own_denoiser():
    model = gaussian_diffusion(ode_likelihood=True, ode_rtol=1e-8, ode_atol=1e-8)
    y = (MEAN + 0.5 * VAR.sqrt()).view(1, 1, 2, 2).repeat(3, 1, 1, 1)
    log_p = model.ode_log_density(y)
    assert torch.allclose(log_p, expected_log_density(model.schedule, y), atol=1e-4)
    assert model.last_likelihood_nfe > 0


def test_ode_nll_is_a_term_beside_the_bound_with_its_kind_and_details():
    model = gaussian_diffusion(ode_likelihood=True, ode_solver="heun", ode_steps=20)
    x = from_levels(torch.randint(100, 156, (3, 1, 2, 2), generator=torch.Generator().manual_seed(0)), 256)
    torch.manual_seed(0)
    out = model.nll(x.double())
    assert out.kind == "bound" and set(out.terms) == {"ode_nll"}
    nats, kind = out.terms["ode_nll"]
    assert kind == "bound" and nats.shape == (3,) and torch.isfinite(nats).all()
    kinds = model.likelihood_kinds()
    assert kinds["ode_nll"] == kinds["ode_nll_bpd"] == "bound"
    details = model.likelihood_details("ode_nll_bpd")
    assert details["solver"] == "heun" and details["steps"] == 20 and details["divergence"] == "exact"
    assert details["sigma_min"] < 0.02 < 100 < details["sigma_max"]
    # nats of the discrete data = -(log-density of the dequantized point in [-1, 1] + D log 2) + D log K
    generator = torch.Generator().manual_seed(3)
    ode_only = model.ode_nll(x.double(), generator=generator)
    from lit_gen.core.levels import dequantize, to_signed

    y = to_signed(dequantize(x.double(), 256, torch.Generator().manual_seed(3)))
    expected = -(model.ode_log_density(y) + 4 * math.log(2)) + 4 * math.log(256)
    assert torch.allclose(ode_only, expected, atol=1e-9)
    assert Diffusion(data_shape=(3, 32, 32)).ode.divergence == "hutchinson"  # auto: D > 128
    assert Diffusion(data_shape=(3, 32, 32)).ode.kind(256) == "estimate"


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"ode_solver": "rk5"}, "solver must be one of"),
    ({"ode_divergence": "trace"}, "divergence must be one of exact, hutchinson, auto"),
    ({"ode_hutchinson_probes": 0}, "hutchinson_probes must be a positive integer"),
    ({"ode_likelihood": True, "num_levels": None}, "ode_likelihood reports nats of discrete data"),
])
def test_bad_ode_options_are_configuration_errors(kwargs, message):
    from lit_gen.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=message):
        Diffusion(**kwargs)


def test_metrics_json_has_the_bound_and_the_ode_likelihood_each_with_its_kind(tmp_path):
    config, tiny = TINY_FAMILIES["diffusion"]
    common = ["--config", str(config), *tiny, *quiet_trainer_args(tmp_path, "ode")]
    assert run_cli(["fit", *common, "--trainer.max_epochs=1", "--trainer.limit_train_batches=2",
                    "--trainer.limit_val_batches=1", "--evaluation.every_n_epochs=0"]) == 0
    assert run_cli(["test", *common, "--ckpt_path=last", "--trainer.limit_test_batches=1",
                    "--data.init_args.eval_batch_size=4", "--evaluation.test_num_samples=0",
                    "--evaluation.grid_size=0", "--model.init_args.ode_likelihood=true",
                    "--model.init_args.ode_solver=rk4", "--model.init_args.ode_steps=3"]) == 0
    metrics = json.loads(next(tmp_path.glob("ode/version_*/eval/*/metrics.json")).read_text())["metrics"]
    assert metrics["nll"]["kind"] == "bound" and metrics["ode_nll"]["kind"] == "bound"
    assert metrics["ode_nll_bpd"]["kind"] == "bound" and metrics["ode_nll"]["n"] == 4
    assert metrics["ode_nll"]["solver"] == "rk4" and metrics["ode_nll"]["steps"] == 3
    assert metrics["ode_nll"]["ode"] == "probability flow" and "solver" not in metrics["nll"]
