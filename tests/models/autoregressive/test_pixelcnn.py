"""Gated PixelCNN: the autoregressive property (raster order, R < G < B within a pixel), no blind spot,
exact normalised likelihood, and sampling that draws from the model's own conditionals in H*W*C passes."""

from __future__ import annotations

import pytest
import torch

from lit_gen.core.levels import from_levels, to_levels
from lit_gen.models.autoregressive import GatedPixelCNN
from tests.models.autoregressive.helpers import PassCounter, all_configurations, dependency_matrix


def tiny_pixelcnn(shape=(1, 5, 5), levels=4, likelihood="categorical", num_layers=4, seed=0, **kwargs):
    torch.manual_seed(seed)
    channels = 4 * shape[0]
    return GatedPixelCNN(
        data_shape=shape,
        num_levels=levels,
        channels=channels,
        num_layers=num_layers,
        kernel_size=5,
        kernel_size_rest=3,
        head_channels=channels,
        likelihood=likelihood,
        num_mixtures=2,
        **kwargs,
    ).double()


def raster_order(shape):
    """Flat (C, H, W) indices in generation order: pixel by pixel, channel by channel within a pixel."""
    c, h, w = shape
    return torch.arange(c * h * w).view(c, h * w).t().reshape(-1)


@pytest.mark.parametrize(
    "shape,likelihood,conditional",
    [
        ((1, 5, 5), "categorical", False),
        ((3, 4, 4), "categorical", False),
        ((3, 4, 4), "logistic_mixture", False),
        ((3, 4, 4), "categorical", True),
    ],
)
def test_autoregressive_property_and_no_blind_spot(shape, likelihood, conditional):
    """d params[i] / d x[j] is exactly 0 for every j at or after i in the order, and nonzero for every j
    before i: the masks leak nothing (channel masks A/B included) and the receptive field has no hole."""
    model = tiny_pixelcnn(
        shape, likelihood=likelihood, num_classes=10 if conditional else None, conditional=conditional
    )
    x = torch.rand(3, *shape, dtype=torch.float64)
    labels = torch.tensor([0, 3, 7]) if conditional else None
    dep = dependency_matrix(lambda inp: model.conditionals(inp, labels), x, raster_order(shape))
    num_dims = dep.shape[0]
    at_or_after = torch.ones(num_dims, num_dims).triu().bool()
    assert torch.all(dep[at_or_after] == 0), "an output depends on its own or a later sub-pixel"
    assert torch.all(dep[~at_or_after] > 0), "blind spot: an output ignores an earlier sub-pixel"


def test_colour_channels_are_ordered_within_a_pixel():
    """At one pixel, R's parameters see no colour of it, G sees R only, B sees R and G."""
    model = tiny_pixelcnn((3, 4, 4))
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    params = model.conditionals(x)
    for c, sees in enumerate([[], [0], [0, 1]]):
        (grad,) = torch.autograd.grad(params[:, :, c, 2, 1].sum(), x, retain_graph=True)
        seen = [k for k in range(3) if grad[:, k, 2, 1].abs().sum() > 0]
        assert seen == sees


@pytest.mark.parametrize(
    "shape,levels,likelihood",
    [((1, 2, 2), 3, "categorical"), ((3, 1, 2), 3, "categorical"), ((3, 1, 2), 3, "logistic_mixture")],
)
def test_probabilities_of_all_images_sum_to_one(shape, levels, likelihood):
    model = tiny_pixelcnn(shape, levels, likelihood, num_layers=2)
    total = torch.exp(-model.nll(all_configurations(shape, levels)).nats).sum()
    assert total.item() == pytest.approx(1.0, abs=1e-6)  # heads compute in float32


def test_nll_is_the_sum_of_independently_computed_conditionals():
    """Chain rule by hand: for each sub-pixel in order, scramble it and everything after it, read its
    softmax, and sum the log-probabilities of the true levels; this must equal ``nll``."""
    shape, levels = (3, 3, 3), 5
    model = tiny_pixelcnn(shape, levels, num_layers=3)
    g = torch.Generator().manual_seed(1)
    x = from_levels(torch.randint(0, levels, (4, *shape), generator=g), levels).double()
    order = raster_order(shape)
    total = torch.zeros(4, dtype=torch.float64)
    for step, dim in enumerate(order.tolist()):
        scrambled = x.clone().view(4, -1)
        later = order[step:]
        scrambled[:, later] = from_levels(
            torch.randint(0, levels, (4, len(later)), generator=g), levels
        ).double()
        logits = model.conditionals(scrambled.view_as(x)).reshape(4, levels, -1)[:, :, dim]
        level = torch.round(x.view(4, -1)[:, dim] * (levels - 1)).long()
        total += torch.log_softmax(logits, dim=1).gather(1, level[:, None]).squeeze(1)
    out = model.nll(x)
    assert out.kind == "exact"
    assert torch.allclose(out.nats, -total, atol=1e-4)  # float32 heads


def test_digits_head_is_17_way():
    model = GatedPixelCNN(data_shape=(1, 8, 8), num_levels=17, channels=8, num_layers=2, head_channels=8)
    assert model.conditionals(torch.rand(2, 1, 8, 8)).shape == (2, 17, 1, 8, 8)


@pytest.mark.parametrize("shape", [(1, 4, 3), (3, 3, 2)])
def test_sampling_takes_hwc_passes_and_follows_the_conditionals(shape):
    """Greedy decoding (temperature 0) must be a fixed point of the model's argmax conditionals: every
    sub-pixel is the mode given the ones drawn before it. Any wrong order, channel or row crop breaks it."""
    levels = 6
    model = tiny_pixelcnn(shape, levels, num_layers=3).float()
    counter = PassCounter(model.net)
    s = model.sample(5, temperature=0.0)
    counter.remove()
    assert counter.calls == shape[0] * shape[1] * shape[2]
    assert torch.equal(model.conditionals(s).argmax(dim=1), to_levels(s, levels))


def test_samples_are_valid_levels_and_reproducible():
    model = tiny_pixelcnn((3, 3, 3), levels=7, num_layers=2).float()
    a = model.sample(6, generator=torch.Generator().manual_seed(0), temperature=1.0)
    b = model.sample(6, generator=torch.Generator().manual_seed(0), temperature=1.0)
    c = model.sample(6, generator=torch.Generator().manual_seed(1), temperature=1.0)
    assert a.shape == (6, 3, 3, 3) and a.dtype == torch.float32
    assert torch.equal(a, from_levels(to_levels(a, 7), 7)) and a.min() >= 0 and a.max() <= 1
    assert torch.equal(a, b) and not torch.equal(a, c)
    mixture = tiny_pixelcnn((3, 3, 3), levels=7, likelihood="logistic_mixture", num_layers=2).float()
    m = mixture.sample(4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(m, from_levels(to_levels(m, 7), 7))


@pytest.mark.parametrize("likelihood", ["categorical", "logistic_mixture"])
def test_sample_frequencies_match_the_model_probabilities(likelihood):
    """Empirical frequencies of 40k samples over all 64 images of a 3x1x2 binary grid match exp(-nll)."""
    shape, levels, n = (3, 1, 2), 2, 40000
    model = tiny_pixelcnn(shape, levels, likelihood, num_layers=2, seed=3).float()
    grid = all_configurations(shape, levels)
    probs = torch.exp(-model.nll(grid).nats)
    s = model.sample(n, generator=torch.Generator().manual_seed(0))
    codes = (to_levels(s, levels).view(n, -1) * (2 ** torch.arange(6).flip(0))).sum(1)
    freq = torch.bincount(codes, minlength=64).double() / n
    assert 0.5 * (freq - probs).abs().sum() < 0.02  # total variation; sampling noise is ~0.01


def test_temperature_sharpens_the_samples():
    """Lower temperature concentrates samples on likelier images: mean NLL of the samples decreases."""
    model = tiny_pixelcnn((1, 3, 3), levels=8, num_layers=2, seed=2).float()
    nll = {
        t: model.nll(model.sample(400, temperature=t, generator=torch.Generator().manual_seed(0))).nats.mean()
        for t in (1.5, 1.0, 0.5)
    }
    assert nll[1.5] > nll[1.0] > nll[0.5]


def test_class_conditional_variant_uses_the_labels():
    model = tiny_pixelcnn((1, 4, 4), levels=5, num_layers=2, num_classes=3, conditional=True)
    x = torch.rand(2, 1, 4, 4, dtype=torch.float64)
    assert not torch.allclose(
        model.conditionals(x, torch.tensor([0, 0])), model.conditionals(x, torch.tensor([2, 2]))
    )
    with pytest.raises(ValueError, match="labels"):
        model.nll(x)
    s = model.float().sample(6, generator=torch.Generator().manual_seed(0))  # balanced default labels
    assert s.shape == (6, 1, 4, 4)


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="multiples"):
        GatedPixelCNN(data_shape=(3, 8, 8), num_levels=256, channels=16)
    with pytest.raises(ValueError, match="discrete images"):
        GatedPixelCNN(data_shape=(2,), num_levels=None)
    with pytest.raises(ValueError, match="odd"):
        GatedPixelCNN(data_shape=(1, 8, 8), num_levels=17, kernel_size=4)
