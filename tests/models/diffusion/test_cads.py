"""Condition-annealed sampling in the diffusion family: off is the plain guided sampler bit for bit with every
sampler, on it changes the samples, anneals only the conditional pass, and draws each example's noise from
that example's generator."""

from __future__ import annotations

import functools

import pytest
import torch

from lit_gen.core.seeds import ExampleGenerators
from lit_gen.errors import ConfigurationError
from lit_gen.models.diffusion import Diffusion, UNet

TINY = functools.partial(UNet, channels=8, channel_mults=(1, 2), num_res_blocks=1)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    built = Diffusion(backbone=TINY, num_timesteps=20, num_classes=10, conditional=True).eval()
    with torch.no_grad():  # away from the zero-output initialisation, so the class embedding matters
        for p in built.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return built


@pytest.mark.parametrize("knobs", [{"sampler": "ddim", "steps": 5, "eta": 1.0}, {"sampler": "ddpm"},
                                   {"sampler": "dpmpp_2m", "steps": 4}, {"sampler": "heun", "steps": 3}])
def test_cads_off_is_the_guided_sampler_and_on_changes_it(model, knobs):
    labels = torch.tensor([1, 5, 9])

    def draw(**cads):
        return model.sample(3, labels=labels, generator=torch.Generator().manual_seed(2), guidance_scale=2.0,
                            **knobs, **cads)

    plain = draw()
    assert torch.equal(plain, draw(cads_noise_scale=0.0))
    assert not torch.equal(plain, draw(cads_noise_scale=1.0, cads_tau1=0.1, cads_tau2=0.3))


def test_only_the_conditional_pass_is_annealed(model, monkeypatch):
    seen = []
    forward = model.backbone.forward

    def recording(x, time, labels=None, condition_transform=None):
        def spy(embedding, lab):
            out = condition_transform(embedding, lab)
            seen.append((embedding.detach().clone(), out.detach().clone()))
            return out

        return forward(x, time, labels, condition_transform=spy if condition_transform else None)

    monkeypatch.setattr(model.backbone, "forward", recording)
    model.sample(2, labels=torch.tensor([3, 4]), guidance_scale=3.0, sampler="ddim", steps=2,
                 cads_noise_scale=0.5, generator=torch.Generator().manual_seed(0))
    first_before, first_after = seen[0]  # t = T-1: noise level 1, gamma 0
    assert not torch.allclose(first_before[:2], first_after[:2])
    assert torch.equal(first_before[2:], first_after[2:])  # the "no label" rows
    last_before, last_after = seen[-1]  # t = 0: gamma 1, the clean condition (rescaling leaves it)
    assert torch.allclose(last_before, last_after, atol=1e-5)


def test_cads_noise_is_per_example(model):
    knobs = {"sampler": "ddim", "steps": 4, "guidance_scale": 2.0, "cads_noise_scale": 0.5}
    labels = torch.tensor([0, 1, 2, 3])
    whole = model.sample(4, labels=labels, generator=ExampleGenerators(0, range(4)), **knobs)
    parts = torch.cat([model.sample(1, labels=labels[:1], generator=ExampleGenerators(0, range(1)), **knobs),
                       model.sample(3, labels=labels[1:], generator=ExampleGenerators(0, range(1, 4)), **knobs)])
    assert torch.allclose(whole, parts, atol=1e-6)


def test_cads_needs_a_conditional_model():
    with pytest.raises(ConfigurationError, match="cads_noise_scale > 0 needs a conditional model"):
        Diffusion(backbone=TINY, num_timesteps=10, sample_kwargs={"cads_noise_scale": 0.3})
