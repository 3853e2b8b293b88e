"""MADE: masks give the autoregressive property for every ordering, the (ensemble) likelihood is exact
and normalised, and sampling draws from it in D passes per example."""

from __future__ import annotations

import math

import pytest
import torch

from lit_gen.core.levels import from_levels, to_levels
from lit_gen.models.autoregressive import MADE
from tests.models.autoregressive.helpers import PassCounter, all_configurations, dependency_matrix


def tiny_made(shape=(1, 5, 5), levels=4, hidden=(64, 64), seed=0, **kwargs):
    torch.manual_seed(seed)
    return MADE(data_shape=shape, num_levels=levels, hidden_sizes=hidden, **kwargs).double()


@pytest.mark.parametrize(
    "num_masks,order_agnostic,conditional", [(1, False, False), (3, True, False), (2, True, True)]
)
def test_autoregressive_property_for_every_mask(num_masks, order_agnostic, conditional):
    """d params[i] / d x[j] = 0 for j at or after i in each mask's ordering; nonzero for every j < i."""
    model = tiny_made(
        hidden=(256, 256),
        num_masks=num_masks,
        order_agnostic=order_agnostic,
        num_classes=10 if conditional else None,
        conditional=conditional,
    )
    x = torch.rand(8, 1, 5, 5, dtype=torch.float64)
    labels = torch.arange(8) if conditional else None
    orders = [model.ordering(m) for m in range(num_masks)]
    if order_agnostic:
        assert len({tuple(o.tolist()) for o in orders}) == num_masks, (
            "order-agnostic masks need distinct orders"
        )
    else:
        assert all(torch.equal(o, torch.arange(25)) for o in orders)
    for m, order in enumerate(orders):
        dep = dependency_matrix(
            lambda inp, m=m: model.conditionals(inp, model.check_labels(labels), m), x, order
        )
        assert torch.all(dep.triu() == 0), f"mask {m}: an output depends on its own or a later input"
        # Hidden layers wider than D: every conditional sees every earlier dimension.
        earlier = torch.ones(25, 25).tril(-1).bool()
        assert torch.all(dep[earlier] > 0), f"mask {m}: an earlier input is cut off"


def test_order_agnostic_masks_use_distinct_orderings_while_there_are_enough():
    model = tiny_made(
        (2,), None, hidden=(8,), likelihood="gaussian_mixture", num_masks=2, order_agnostic=True
    )
    assert sorted(tuple(model.ordering(m).tolist()) for m in range(2)) == [(0, 1), (1, 0)]
    model = tiny_made(
        (2,), None, hidden=(8,), likelihood="gaussian_mixture", num_masks=3, order_agnostic=True
    )
    assert {tuple(model.ordering(m).tolist()) for m in range(3)} == {(0, 1), (1, 0)}


def test_connectivity_agnostic_masks_differ():
    model = tiny_made(num_masks=2)
    assert not torch.equal(model.net.hidden[0].masks[0], model.net.hidden[0].masks[1])


@pytest.mark.parametrize(
    "num_masks,likelihood", [(1, "categorical"), (3, "categorical"), (2, "logistic_mixture")]
)
def test_probabilities_of_all_points_sum_to_one(num_masks, likelihood):
    shape, levels = (4,), 3
    model = tiny_made(shape, levels, num_masks=num_masks, order_agnostic=True, likelihood=likelihood)
    total = torch.exp(-model.nll(all_configurations(shape, levels)).nats).sum()
    assert total.item() == pytest.approx(1.0, abs=1e-6)  # heads compute in float32


def test_gaussian_mixture_made_is_a_normalised_density_on_the_plane():
    model = tiny_made(
        (2,),
        None,
        hidden=(32, 32),
        likelihood="gaussian_mixture",
        num_mixtures=3,
        num_masks=2,
        order_agnostic=True,
    )
    axis = torch.linspace(-9, 9, 401, dtype=torch.float64)
    grid = torch.cartesian_prod(axis, axis)
    density = torch.exp(-model.nll(grid).nats).view(401, 401)
    mass = torch.trapezoid(torch.trapezoid(density, axis, dim=1), axis)
    assert model.nll(grid).kind == "exact"
    assert mass.item() == pytest.approx(1.0, abs=1e-3)


def test_nll_is_the_sum_of_independently_computed_conditionals():
    """For each step of the ordering, scramble that dimension and all later ones, take the softmax of
    its logits by hand: the summed log-probabilities of the true levels equal ``nll``."""
    shape, levels, n = (1, 3, 3), 5, 4
    model = tiny_made(shape, levels, order_agnostic=True)
    g = torch.Generator().manual_seed(1)
    x = from_levels(torch.randint(0, levels, (n, *shape), generator=g), levels).double()
    order = model.ordering(0)
    total = torch.zeros(n, dtype=torch.float64)
    for step, dim in enumerate(order.tolist()):
        scrambled = x.clone().view(n, -1)
        later = order[step:]
        scrambled[:, later] = torch.rand(n, len(later), generator=g, dtype=torch.float64)
        logits = model.conditionals(scrambled.view_as(x)).reshape(n, levels, -1)[:, :, dim]
        level = torch.round(x.view(n, -1)[:, dim] * (levels - 1)).long()
        total += torch.log_softmax(logits, dim=1).gather(1, level[:, None]).squeeze(1)
    assert torch.allclose(model.nll(x).nats, -total, atol=1e-4)


def test_ensemble_nll_is_the_log_mean_of_the_masks_probabilities():
    model = tiny_made((1, 3, 3), 5, num_masks=3, order_agnostic=True)
    x = from_levels(torch.randint(0, 5, (6, 1, 3, 3)), 5)
    per_mask = torch.stack([model.log_prob(x, mask_index=m) for m in range(3)])
    expected = -torch.log(per_mask.exp().mean(0))
    assert torch.allclose(model.nll(x).nats, expected, atol=1e-9)


def test_training_loss_uses_one_mask_evaluation_uses_the_ensemble():
    model = tiny_made((1, 3, 3), 5, num_masks=3, order_agnostic=True)
    x = from_levels(torch.randint(0, 5, (6, 1, 3, 3)), 5)
    per_mask = {round(-model.log_prob(x, mask_index=m).mean().item(), 6) for m in range(3)}
    model.train()
    assert round(model.loss(x).item(), 4) in {round(v, 4) for v in per_mask}
    model.eval()
    assert model.loss(x).item() == pytest.approx(model.nll(x).nats.mean().item(), rel=1e-6)


def test_digits_head_is_17_way():
    model = MADE(data_shape=(1, 8, 8), num_levels=17, hidden_sizes=(32,))
    assert model.conditionals(torch.rand(2, 1, 8, 8)).shape == (2, 17, 1, 8, 8)


@pytest.mark.parametrize("num_masks", [1, 3])
def test_sampling_takes_d_passes_per_example_and_follows_the_conditionals(num_masks):
    shape, levels, n = (1, 3, 4), 6, 10
    model = tiny_made(shape, levels, num_masks=num_masks, order_agnostic=True).float()
    counter = PassCounter(model.net)
    s = model.sample(n, temperature=0.0, generator=torch.Generator().manual_seed(0))
    counter.remove()
    assert counter.rows == n * 12, "every example must go through exactly D passes"
    if num_masks == 1:
        assert counter.calls == 12
        # Greedy decoding is a fixed point of the argmax conditionals (in the mask's own order).
        assert torch.equal(model.conditionals(s).argmax(dim=1), to_levels(s, levels))


def test_samples_are_valid_levels_and_reproducible():
    model = tiny_made((1, 4, 4), 17, num_masks=2, order_agnostic=True).float()
    a = model.sample(8, generator=torch.Generator().manual_seed(0))
    b = model.sample(8, generator=torch.Generator().manual_seed(0))
    assert a.shape == (8, 1, 4, 4) and torch.equal(a, b)
    assert torch.equal(a, from_levels(to_levels(a, 17), 17)) and a.min() >= 0 and a.max() <= 1


def test_ensemble_sample_frequencies_match_the_model_probabilities():
    """Samples of a 3-mask order-agnostic ensemble on a 3-dim, 3-level grid follow exp(-nll)."""
    shape, levels, n = (3,), 3, 40000
    model = tiny_made(shape, levels, hidden=(16,), num_masks=3, order_agnostic=True, seed=5).float()
    grid = all_configurations(shape, levels)
    probs = torch.exp(-model.nll(grid).nats)
    s = model.sample(n, generator=torch.Generator().manual_seed(0))
    codes = (to_levels(s, levels) * torch.tensor([9, 3, 1])).sum(1)
    freq = torch.bincount(codes, minlength=27).double() / n
    assert 0.5 * (freq - probs).abs().sum() < 0.02


def kolmogorov_smirnov_to_uniform(u: torch.Tensor) -> float:
    """sup |F_n(u) - u| of the empirical CDF of ``u`` against U(0, 1)."""
    u, _ = u.double().sort()
    i = torch.arange(1, len(u) + 1, dtype=torch.float64)
    return torch.maximum(i / len(u) - u, u - (i - 1) / len(u)).max().item()


def test_gaussian_mixture_samples_follow_the_density():
    """A mixture head's sample mean and variance match the model's (x2 | x1 via the second conditional)."""
    model = tiny_made((2,), None, hidden=(16,), likelihood="gaussian_mixture", num_mixtures=3, seed=1).float()
    with torch.no_grad():  # larger weights: x2's conditional moves a lot with x1 (mean spread ~0.2 of 0.74)
        for layer in model.net.hidden:
            layer.weight.mul_(4)
    n = 40000
    s = model.sample(n, generator=torch.Generator().manual_seed(0))
    params = model.conditionals(torch.zeros(1, 2))[0, :, 0]  # p(x1): no inputs before it
    w, mu, log_s = params.double().chunk(3)
    w = torch.softmax(w, 0)
    mean = (w * mu).sum()
    var = (w * (torch.exp(2 * log_s) + mu**2)).sum() - mean**2
    assert s[:, 0].double().mean().item() == pytest.approx(mean.item(), abs=4 * math.sqrt(var.item() / n))
    assert s[:, 0].double().var().item() == pytest.approx(var.item(), rel=0.05)

    # x2 | x1: each sample's x2 pushed through the CDF of its own conditional p(x2 | x1) is U(0, 1)
    # (probability integral transform); the same x2 under the conditional of another sample's x1 is not.
    def conditional_cdf(x1, x2):
        with torch.no_grad():
            weights, means, log_scales = model.conditionals(torch.stack([x1, torch.zeros_like(x1)], 1))[:, :, 1] \
                .double().chunk(3, dim=1)
        z = (x2.double()[:, None] - means) / log_scales.exp()
        return (torch.softmax(weights, 1) * torch.special.ndtr(z)).sum(1)

    bound = 1.63 / math.sqrt(n)  # the Kolmogorov-Smirnov test's 1 % critical value
    assert kolmogorov_smirnov_to_uniform(conditional_cdf(s[:, 0], s[:, 1])) < bound
    shuffled = s[torch.randperm(n, generator=torch.Generator().manual_seed(1)), 0]
    assert kolmogorov_smirnov_to_uniform(conditional_cdf(shuffled, s[:, 1])) > 10 * bound


def test_categorical_samples_follow_each_conditional():
    """Two dimensions, four levels: for each level a of x1, the frequencies of x2 among samples with
    x1 = a are the softmax of the second conditional's logits at x1 = a (enumerated)."""
    levels, n = 4, 40000
    model = tiny_made((2,), levels, hidden=(16,), seed=2).float()
    with torch.no_grad():
        for layer in model.net.hidden:
            layer.weight.mul_(4)
    s = to_levels(model.sample(n, generator=torch.Generator().manual_seed(0)), levels)
    x1 = from_levels(torch.arange(levels), levels)
    with torch.no_grad():
        logits = model.conditionals(torch.stack([x1, torch.zeros(levels)], 1))  # (a, K, D)
    first = torch.softmax(logits[0, :, 0].double(), 0)  # p(x1): the same row for every input
    second = torch.softmax(logits[:, :, 1].double(), 1)  # p(x2 | x1 = a), row a
    counts = torch.zeros(levels, levels, dtype=torch.float64).index_put_((s[:, 0], s[:, 1]),
                                                                        torch.ones(n, dtype=torch.float64),
                                                                        accumulate=True)
    assert 0.5 * (counts.sum(1) / n - first).abs().sum() < 0.01
    for a in range(levels):
        assert counts[a].sum() > 1000, "every level of x1 must be drawn often enough to be tested"
        assert 0.5 * (counts[a] / counts[a].sum() - second[a]).abs().sum() < 0.03, a
    assert 0.5 * (second[0] - second[1:]).abs().sum(1).max() > 0.1, "x2 must depend on x1 for this to test it"


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="gaussian_mixture"):
        MADE(data_shape=(2,), num_levels=None, likelihood="categorical")
    with pytest.raises(ValueError, match="continuous"):
        MADE(data_shape=(1, 8, 8), num_levels=17, likelihood="gaussian_mixture")
    with pytest.raises(ValueError, match="num_masks"):
        MADE(data_shape=(2,), num_levels=4, num_masks=0)
