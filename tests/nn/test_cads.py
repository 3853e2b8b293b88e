"""Condition-annealed sampling's pieces (lit_gen.nn.cads): the schedule, the rescaling, the switch-off."""

from __future__ import annotations

import pytest
import torch

from lit_gen.core.seeds import ExampleGenerators
from lit_gen.errors import ConfigurationError
from lit_gen.nn.cads import CADS, cads_from_options, cads_gamma, rescale_to
from lit_gen.nn.unet import UNet


def test_gamma_is_one_late_zero_early_and_linear_between():
    t = torch.tensor([0.0, 0.6, 0.7, 0.75, 0.9, 1.0], dtype=torch.float64)
    assert cads_gamma(t, 0.6, 0.9).tolist() == pytest.approx([1.0, 1.0, 2 / 3, 0.5, 0.0, 0.0])


def test_noise_scale_zero_returns_the_condition_itself():
    y = torch.randn(3, 8)
    assert CADS(noise_scale=0.0).anneal(y, 1.0, torch.Generator().manual_seed(0)) is y


def test_clean_end_without_rescaling_is_the_condition_and_noisy_start_is_scaled_noise():
    y = torch.randn(4, 512, generator=torch.Generator().manual_seed(1))
    cads = CADS(noise_scale=0.5, psi=0.0)
    torch.testing.assert_close(cads.anneal(y, 0.1, torch.Generator().manual_seed(2)), y)
    start = cads.anneal(y, 1.0, torch.Generator().manual_seed(2))
    noise = torch.randn(4, 512, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(start, 0.5 * noise)


def test_rescaled_condition_keeps_each_examples_mean_and_std():
    y = torch.randn(5, 256) * torch.arange(1, 6)[:, None] + torch.arange(5)[:, None]
    out = CADS(noise_scale=2.0, psi=1.0).anneal(y, 0.8, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out.mean(-1), y.mean(-1), atol=1e-5, rtol=0)
    torch.testing.assert_close(out.std(-1), y.std(-1), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, y)
    half = CADS(noise_scale=2.0, psi=0.5).anneal(y, 0.8, torch.Generator().manual_seed(0))
    none = CADS(noise_scale=2.0, psi=0.0).anneal(y, 0.8, torch.Generator().manual_seed(0))
    torch.testing.assert_close(half, 0.5 * out + 0.5 * none)
    torch.testing.assert_close(rescale_to(none, y), out)


def test_per_example_noise_does_not_depend_on_the_batch():
    y = torch.randn(4, 16)
    cads = CADS(noise_scale=1.0)
    whole = cads.anneal(y, 0.8, ExampleGenerators.for_range(7, 0, 4))
    tail = cads.anneal(y[2:], 0.8, ExampleGenerators.for_range(7, 2, 2))
    torch.testing.assert_close(whole[2:], tail)


@pytest.mark.parametrize("options, message", [
    ({"noise_scale": -1.0}, "noise_scale"), ({"tau1": 0.9, "tau2": 0.6}, "tau1 < tau2"),
    ({"psi": 2.0}, "psi"), ({"noise_scale": "big"}, "cads_noise_scale"),
])
def test_bad_knobs_are_one_line_errors(options, message):
    with pytest.raises(ConfigurationError, match=message):
        cads_from_options(**options)


def test_unet_condition_transform_replaces_the_class_embedding():
    torch.manual_seed(0)
    net = UNet((1, 8, 8), num_classes=3, channels=8, channel_mults=(1, 2), num_res_blocks=1, dropout=0.0)
    torch.nn.init.normal_(net.out[-1].weight)  # the output layer starts at zero
    x, time, labels = torch.randn(2, 1, 8, 8), torch.tensor([10.0, 500.0]), torch.tensor([0, 3])
    plain = net(x, time, labels)
    torch.testing.assert_close(net(x, time, labels, condition_transform=lambda emb, lab: emb), plain)
    seen = {}

    def zero(emb, lab):
        seen["labels"] = lab
        return torch.zeros_like(emb)

    assert not torch.allclose(net(x, time, labels, condition_transform=zero), plain)
    assert seen["labels"].tolist() == [0, 3]
