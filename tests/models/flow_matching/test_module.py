"""Flow matching against closed forms: with the optimal velocity of Gaussian data as the network, samples have
the Gaussian's mean and covariance and the ODE log-likelihood is the Gaussian's log-density; the loss regresses
the path's velocity; guidance, kinds and knobs."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from lit_gen.core.levels import from_levels
from lit_gen.core.seeds import ExampleGenerators
from lit_gen.errors import ConfigurationError
from lit_gen.models.flow_matching import FlowMatching
from lit_gen.models.flow_matching.module import TIME_SCALE
from lit_gen.models.flow_matching.paths import path_from_name
from lit_gen.nn.cads import cads_from_options
from lit_gen.nn.unet import UNet

SHAPE = (1, 2, 2)
MEAN = torch.tensor([0.3, -0.2, 0.1, 0.0], dtype=torch.float64)
VAR = torch.tensor([0.04, 0.09, 0.25, 0.01], dtype=torch.float64)
TINY = functools.partial(UNet, channels=8, channel_mults=(1, 2), num_res_blocks=1)


class GaussianVelocity(nn.Module):
    """E[d x_t/dt | x_t] for data N(MEAN, diag VAR) and noise N(0, I) on a path x_t = a x1 + s x0:

        v(x, t) = a' mu + (a a' VAR + s s') / (a^2 VAR + s^2) (x - a mu)

    (the regression of the conditional velocity on x_t, both jointly Gaussian), in float64."""

    def __init__(self, data_shape, num_classes=None, path="straight"):
        super().__init__()
        self.path = path_from_name(path)
        self.register_buffer("mean", MEAN.view(1, *SHAPE))
        self.register_buffer("var", VAR.view(1, *SHAPE))

    def forward(self, x, time, labels=None):
        t = (time / TIME_SCALE).to(x.dtype).view(-1, 1, 1, 1)
        a, s, da, ds = self.path.coefficients(t)
        gain = (a * da * self.var + s * ds) / (a**2 * self.var + s**2)
        return da * self.mean + gain * (x - a * self.mean)


def gaussian_model(path="straight", **kwargs):
    model = FlowMatching(backbone=functools.partial(GaussianVelocity, path=path), path=path, data_shape=SHAPE,
                         num_levels=None, **kwargs)
    return model.double()


def gaussian_log_prob(x):
    flat = x.flatten(1)
    return (-0.5 * ((flat - MEAN) ** 2 / VAR + torch.log(2 * math.pi * VAR))).sum(1)


@pytest.mark.parametrize("path", ["straight", "vp"])
def test_samples_of_the_optimal_velocity_have_the_gaussian_moments(path):
    model = gaussian_model(path)
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(20000, *SHAPE, generator=generator, dtype=torch.float64)
    x1 = model.decode_latents(z, solver="rk4", steps=40) * 2 - 1  # continuous data: [0, 1] <- [-1, 1]
    flat = x1.flatten(1).double()
    # Standard errors at N = 20000: mean sqrt(var / N) <= 0.0036, variance var * sqrt(2 / N) <= 0.0025.
    assert torch.allclose(flat.mean(0), MEAN, atol=0.015)
    assert torch.allclose(flat.var(0), VAR, rtol=0.05)
    assert torch.allclose(torch.cov(flat.T), torch.diag(VAR), atol=0.01)
    # The flow is deterministic: it is the map z -> mean + sqrt(var) z (a Gaussian's monotone transport).
    assert torch.allclose(flat, MEAN + VAR.sqrt() * z.flatten(1), atol=1e-4)


@pytest.mark.parametrize(("path", "divergence"), [("straight", "exact"), ("vp", "exact"),
                                                   ("straight", "hutchinson")])
def test_ode_log_likelihood_is_the_gaussian_log_density(path, divergence):
    model = gaussian_model(path, likelihood_divergence=divergence, likelihood_rtol=1e-8, likelihood_atol=1e-8)
    generator = torch.Generator().manual_seed(1)
    x1 = (MEAN + VAR.sqrt() * torch.randn(6, 4, generator=generator, dtype=torch.float64)).view(6, *SHAPE)
    log_p = model.log_density(x1)
    # Hutchinson is exact here too: this velocity's Jacobian is diagonal and Rademacher probes square to one.
    assert torch.allclose(log_p, gaussian_log_prob(x1), atol=1e-5)
    # nll of the data in [0, 1]: the same density with the map's log-determinant (D log 2).
    nll = model.nll((x1 + 1) / 2)
    # Continuous data: the exact trace gives the density itself (no dequantization gap); probes an estimate.
    assert nll.kind == ("exact" if divergence == "exact" else "estimate")
    assert torch.allclose(nll.nats.double(), -(gaussian_log_prob(x1) + 4 * math.log(2)), atol=1e-5)


def test_likelihood_with_a_fixed_step_solver_converges_to_the_adaptive_one():
    x1 = MEAN.view(1, *SHAPE).repeat(2, 1, 1, 1) + 0.1
    exact = gaussian_log_prob(x1)
    errors = [(gaussian_model(likelihood_solver="heun", likelihood_steps=n).log_density(x1) - exact).abs().max()
              for n in (4, 8)]
    assert errors[1] < errors[0] / 3  # second order


def test_the_loss_regresses_the_paths_velocity():
    model = FlowMatching(backbone=TINY, data_shape=(1, 8, 8), num_levels=17)
    x = from_levels(torch.randint(0, 17, (6, 1, 8, 8), generator=torch.Generator().manual_seed(0)), 17)
    torch.manual_seed(5)
    loss = model.loss(x)["loss"]
    torch.manual_seed(5)
    # The same draws in the same order: dequantization noise, t, x0.
    x1 = model.to_signed_data(x)
    t = torch.rand(6)
    x0 = torch.randn_like(x1)
    xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * x1
    expected = (model.backbone(xt, t * TIME_SCALE, None) - (x1 - x0)).pow(2).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in model.backbone.parameters() if p.requires_grad)


def test_dequantized_data_maps_back_to_its_levels():
    model = FlowMatching(backbone=TINY, data_shape=(1, 8, 8), num_levels=17)
    x = from_levels(torch.randint(0, 17, (4, 1, 8, 8), generator=torch.Generator().manual_seed(0)), 17)
    assert torch.equal(model.to_data_levels(model.to_signed_data(x)), x)


class LabelVelocity(nn.Module):
    """A velocity that is the label itself (the "no label" class included), to check guidance's arithmetic."""

    def __init__(self, data_shape, num_classes=None):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(()))

    def forward(self, x, time, labels=None):
        return torch.zeros_like(x) + labels.view(-1, 1, 1, 1).to(x.dtype) + self.weight


def test_guidance_scale_one_is_the_conditional_velocity_and_zero_the_unconditional():
    model = FlowMatching(backbone=LabelVelocity, data_shape=(1, 2, 2), num_levels=17, num_classes=10,
                         conditional=True)
    x = torch.zeros(2, 1, 2, 2)
    labels = torch.tensor([3, 7])
    t = torch.tensor(0.5)
    assert model.velocity(labels, 1.0)(x, t)[:, 0, 0, 0].tolist() == [3.0, 7.0]
    assert model.velocity(labels, 0.0)(x, t)[:, 0, 0, 0].tolist() == [10.0, 10.0]  # the "no label" class
    guided = model.velocity(labels, 2.0)(x, t)[:, 0, 0, 0]
    assert guided.tolist() == [10 + 2 * (3 - 10), 10 + 2 * (7 - 10)]


def test_label_dropout_replaces_labels_in_training_only():
    seen = []

    class Recorder(LabelVelocity):
        def forward(self, x, time, labels=None):
            seen.append(labels.clone())
            return super().forward(x, time, labels)

    model = FlowMatching(backbone=Recorder, data_shape=(1, 2, 2), num_levels=17, num_classes=10,
                         conditional=True, label_dropout=0.5)
    x = torch.rand(400, 1, 2, 2)
    labels = torch.zeros(400, dtype=torch.long)
    model.train()
    model.loss(x, labels)
    model.eval()
    model.loss(x, labels)
    dropped = (seen[0] == 10).float().mean().item()
    assert 0.4 < dropped < 0.6 and not (seen[1] == 10).any()


def test_sampling_is_deterministic_given_the_noise_and_reports_its_nfe():
    model = FlowMatching(backbone=TINY, data_shape=(1, 8, 8), num_levels=17).eval()
    a = model.sample(3, generator=torch.Generator().manual_seed(0), solver="heun", steps=5)
    b = model.sample(3, generator=torch.Generator().manual_seed(0), solver="heun", steps=5)
    assert torch.equal(a, b) and model.last_sample_nfe == 10
    assert set((a * 16).round().unique().tolist()) <= set(range(17)) and a.shape == (3, 1, 8, 8)
    model.sample(2, solver="euler", steps=3)
    assert model.last_sample_nfe == 3


def test_the_divergence_and_the_kind_follow_the_dimension():
    small = FlowMatching(backbone=TINY, data_shape=(1, 8, 8), num_levels=17)
    large = FlowMatching(backbone=TINY, data_shape=(1, 16, 16), num_levels=17, hutchinson_probes=2)
    assert (small.divergence, small.likelihood_kind) == ("exact", "bound")
    assert (large.divergence, large.likelihood_kind) == ("hutchinson", "estimate")
    assert large.likelihood_details("nll") == {"path": "straight", "solver": "dopri5", "divergence": "hutchinson",
                                               "rtol": 1e-5, "atol": 1e-5, "hutchinson_probes": 2}
    fixed = FlowMatching(backbone=TINY, likelihood_solver="rk4", likelihood_steps=12)
    assert fixed.likelihood_details("nll")["steps"] == 12 and "rtol" not in fixed.likelihood_details("nll")


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"path": "curved"}, "path must be one of straight, vp, got 'curved'"),
    ({"label_dropout": 1.0}, "label_dropout must be in [0, 1)"),
    ({"likelihood_solver": "rk5"}, "solver must be one of"),
    ({"likelihood_divergence": "trace"}, "divergence must be one of exact, hutchinson, auto, got .trace."),
    ({"hutchinson_probes": 0}, "hutchinson_probes"),
    ({"sample_kwargs": {"steps": 0}}, "steps must be a positive integer, got 0"),
    ({"sample_kwargs": {"guidance_scale": 2.0}}, "guidance_scale needs a conditional model"),
    ({"sample_kwargs": {"solver": "dopri5", "rtol": -1.0}}, "rtol must be a positive number"),
])
def test_bad_knobs_are_configuration_errors(kwargs, message):
    with pytest.raises(ConfigurationError, match=message.replace("[", r"\[").replace(")", r"\)")):
        FlowMatching(backbone=TINY, **kwargs)


# ------------------------------------------------------------------ condition-annealed sampling
class EmbeddingProbe(nn.Module):
    """A conditional backbone that takes a condition transform, records the embeddings it used and answers
    their mean as the velocity."""

    def __init__(self, data_shape, num_classes=None):
        super().__init__()
        self.embed = nn.Embedding(num_classes + 1, 6)
        self.seen: list[torch.Tensor] = []

    def forward(self, x, time, labels=None, condition_transform=None):
        embedding = self.embed(labels)
        if condition_transform is not None:
            embedding = condition_transform(embedding, labels)
        self.seen.append(embedding.detach().clone())
        return torch.zeros_like(x) + embedding.mean(-1).view(-1, 1, 1, 1)


def conditional(backbone, **kwargs):
    return FlowMatching(backbone=backbone, data_shape=(1, 8, 8), num_levels=17, num_classes=10, conditional=True,
                        **kwargs).eval()


def test_cads_with_noise_scale_zero_is_the_guided_sampler_bit_for_bit():
    torch.manual_seed(0)
    model = conditional(functools.partial(UNet, channels=8, channel_mults=(1, 2), num_res_blocks=1))
    with torch.no_grad():  # a class embedding that matters (the U-Net's is random, its output layer zero)
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    labels = torch.tensor([1, 4, 7])
    knobs = {"solver": "heun", "steps": 4, "guidance_scale": 2.0}
    plain = model.sample(3, labels=labels, generator=torch.Generator().manual_seed(1), **knobs)
    off = model.sample(3, labels=labels, generator=torch.Generator().manual_seed(1), cads_noise_scale=0.0,
                       **knobs)
    on = model.sample(3, labels=labels, generator=torch.Generator().manual_seed(1), cads_noise_scale=1.0,
                      **knobs)
    assert torch.equal(plain, off)
    assert not torch.equal(plain, on)  # the comparison above is not vacuous


def test_cads_noises_the_conditional_pass_only_and_anneals_to_the_clean_condition():
    model = conditional(EmbeddingProbe)
    cads = cads_from_options(noise_scale=0.5)
    labels = torch.tensor([2, 5])
    clean = model.backbone.embed(torch.tensor([2, 5, 10])).detach()
    field = model.velocity(labels, 3.0, cads, torch.Generator().manual_seed(0))
    x = torch.zeros(2, 1, 8, 8)
    field(x, torch.tensor(0.0))  # noise level 1 >= tau2: gamma = 0, all noise (rescaled to y's statistics)
    early = model.backbone.seen[-1]
    assert not torch.allclose(early[:2], clean[:2])
    assert torch.equal(early[2:], clean[2:].expand(2, -1))  # classifier-free guidance's "no label" rows
    # Rescaled: each noisy embedding has the clean one's mean and standard deviation (psi = 1).
    assert torch.allclose(early[:2].mean(-1), clean[:2].mean(-1), atol=1e-6)
    assert torch.allclose(early[:2].std(-1), clean[:2].std(-1), atol=1e-6)
    field(x, torch.tensor(0.5))  # noise level 0.5 <= tau1: gamma = 1, the clean condition
    assert torch.allclose(model.backbone.seen[-1][:2], clean[:2], atol=1e-6)


def test_cads_draws_each_examples_noise_from_its_own_generator():
    model = conditional(functools.partial(UNet, channels=8, channel_mults=(1, 2), num_res_blocks=1))
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    knobs = {"solver": "euler", "steps": 3, "guidance_scale": 2.0, "cads_noise_scale": 0.5}
    labels = torch.tensor([0, 1, 2, 3])
    whole = model.sample(4, labels=labels, generator=ExampleGenerators(0, range(4)), **knobs)
    parts = torch.cat([model.sample(2, labels=labels[:2], generator=ExampleGenerators(0, range(2)), **knobs),
                       model.sample(2, labels=labels[2:], generator=ExampleGenerators(0, range(2, 4)), **knobs)])
    assert torch.allclose(whole, parts, atol=1e-6)


class NoTransformBackbone(LabelVelocity):
    pass


@pytest.mark.parametrize(("build", "knobs", "message"), [
    (lambda: FlowMatching(backbone=TINY), {"cads_noise_scale": 0.5}, "needs a conditional model"),
    (lambda: conditional(NoTransformBackbone), {"cads_noise_scale": 0.5}, "takes no condition_transform"),
    (lambda: conditional(EmbeddingProbe), {"cads_noise_scale": 0.5, "cads_tau1": 0.95},
     "cads needs 0 <= tau1 < tau2 <= 1"),
    (lambda: conditional(EmbeddingProbe), {"cads_noise_scale": -1.0}, "cads noise_scale must be >= 0"),
])
def test_bad_cads_knobs_are_configuration_errors(build, knobs, message):
    model = build()
    with pytest.raises(ConfigurationError, match=message):
        model.sample(2, **knobs)
