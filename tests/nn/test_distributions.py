"""Discrete likelihoods: normalised over the K levels, samples on the grid, means consistent."""

import pytest
import torch

from lit_gen.core.levels import from_levels, to_levels
from lit_gen.nn.distributions import (
    BernoulliLikelihood,
    CategoricalLikelihood,
    LogisticMixtureLikelihood,
    build_likelihood,
)


def all_levels_log_prob(head, params, num_levels):
    """log P(level k) for every k, for each dimension of a batch of one parameter set: (K, *D)."""
    grid = from_levels(torch.arange(num_levels), num_levels)
    x = grid.view(num_levels, 1, 1, 1).expand(num_levels, *params.shape[2:])
    return head.log_prob(x, params.expand(num_levels, *params.shape[1:]))


@pytest.mark.parametrize("num_levels", [2, 17, 256])
@pytest.mark.parametrize("kind", ["categorical", "logistic_mixture"])
def test_probabilities_sum_to_one_over_levels(kind, num_levels):
    torch.manual_seed(0)
    head = build_likelihood(kind, num_levels, num_mixtures=3)
    params = torch.randn(1, head.params_per_dim, 1, 3, 3) * 2
    log_p = all_levels_log_prob(head, params, num_levels)
    total = torch.logsumexp(log_p.double(), dim=0).exp()
    assert torch.allclose(total, torch.ones_like(total), atol=1e-4)


def test_bernoulli_normalised_and_rejects_non_binary():
    head = BernoulliLikelihood()
    params = torch.randn(1, 1, 1, 3, 3)
    log_p = all_levels_log_prob(head, params, 2)
    assert torch.allclose(log_p.exp().sum(0), torch.ones(1, 3, 3), atol=1e-6)
    with pytest.raises(ValueError, match="binary"):
        build_likelihood("bernoulli", 256)


@pytest.mark.parametrize("head", [CategoricalLikelihood(17), LogisticMixtureLikelihood(17, 2)])
def test_samples_lie_on_the_level_grid_and_follow_the_distribution(head):
    params = torch.randn(1, head.params_per_dim, 1, 1, 1).expand(20000, -1, -1, -1, -1)
    x = head.sample(params, generator=torch.Generator().manual_seed(0))
    assert torch.equal(x, from_levels(to_levels(x, 17), 17))
    empirical = torch.bincount(to_levels(x, 17).flatten(), minlength=17).double() / x.numel()
    expected = all_levels_log_prob(head, params[:1], 17).flatten().double().exp()
    assert torch.allclose(empirical, expected, atol=0.015)


def test_categorical_mean_is_the_expected_value():
    head = CategoricalLikelihood(5)
    logits = torch.log(torch.tensor([0.1, 0.2, 0.3, 0.2, 0.2])).view(1, 5, 1)
    expected = (torch.tensor([0.1, 0.2, 0.3, 0.2, 0.2]) * torch.linspace(0, 1, 5)).sum()
    assert torch.allclose(head.mean(logits), expected.view(1, 1))


def test_continuous_data_needs_the_gaussian_head():
    with pytest.raises(ValueError, match="gaussian"):
        build_likelihood("categorical", None)
    assert build_likelihood("gaussian", None).params_per_dim == 2
