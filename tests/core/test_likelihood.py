"""Bits/dim accounting on densities with known answers."""

import math

import pytest
import torch

from lit_gen.core.levels import dequantize, from_levels, quantize, to_levels
from lit_gen.core.likelihood import NLL, bits_per_dim, discrete_nll_from_density
from lit_gen.models.factorized import FactorizedCategorical


@pytest.mark.parametrize("num_levels", [2, 17, 256])
def test_levels_round_trip(num_levels):
    k = torch.arange(num_levels)
    assert torch.equal(to_levels(from_levels(k, num_levels), num_levels), k)
    assert torch.equal(quantize(from_levels(k, num_levels) + 0.3 / num_levels, num_levels), from_levels(k, num_levels))


@pytest.mark.parametrize("num_levels", [17, 256])
def test_dequantized_point_lies_in_its_bin(num_levels):
    x = from_levels(torch.randint(0, num_levels, (1000,)), num_levels)
    y = dequantize(x, num_levels, torch.Generator().manual_seed(0))
    assert torch.equal(torch.floor(y * num_levels).long(), to_levels(x, num_levels))


@pytest.mark.parametrize("num_levels", [17, 256])
def test_uniform_density_gives_log2_k_bits_per_dim(num_levels):
    """The uniform density on [0, 1]^D has log p = 0: NLL = D log K, exactly log2 K bits/dim."""
    dims = 64
    nats = discrete_nll_from_density(torch.zeros(5), dims, num_levels)
    assert torch.allclose(bits_per_dim(nats, dims), torch.full((5,), math.log2(num_levels), dtype=torch.float64))


@pytest.mark.parametrize("num_levels", [17, 256])
def test_uniform_discrete_model_gives_log2_k_bits_per_dim(num_levels):
    model = FactorizedCategorical(data_shape=(1, 4, 4), num_levels=num_levels)  # zero logits: uniform
    x = from_levels(torch.randint(0, num_levels, (8, 1, 4, 4)), num_levels)
    out = model.nll(x)
    assert out.kind == "exact"
    assert torch.allclose(bits_per_dim(out.nats, 16), torch.full((8,), math.log2(num_levels), dtype=torch.float64))


def test_density_and_discrete_accounting_agree():
    """A density constant on each bin, p(y) = prod_d K * P(k_d), reports exactly the discrete -log P(x)."""
    num_levels, dims = 17, 10
    probs = torch.softmax(torch.randn(dims, num_levels), dim=-1)
    k = torch.randint(0, num_levels, (32, dims))
    log_p_discrete = torch.log(probs.gather(1, k.T).T).sum(1)
    y = dequantize(from_levels(k, num_levels), num_levels)
    bins = torch.floor(y * num_levels).long()
    log_density = torch.log(num_levels * probs.gather(1, bins.T).T).sum(1)
    nats = discrete_nll_from_density(log_density, dims, num_levels)
    assert torch.allclose(nats, -log_p_discrete.double(), atol=1e-4)


def test_nll_rejects_unknown_kind_and_non_per_example_values():
    with pytest.raises(ValueError, match="kind"):
        NLL(torch.zeros(3), "guess")
    with pytest.raises(ValueError, match="per example"):
        NLL(torch.zeros(3, 2), "exact")
