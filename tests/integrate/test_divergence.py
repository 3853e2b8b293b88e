"""Divergences: the exact trace equals a brute-force Jacobian's, Hutchinson's mean over many probes equals it,
each example's divergence depends on that example alone, and both run under inference mode."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from lit_gen.core.seeds import ExampleGenerators
from lit_gen.integrate import exact_divergence, hutchinson_divergence, rademacher_probes


def network(dims=6, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dims, 16), nn.Tanh(), nn.Linear(16, dims)).double()


def brute_force_traces(fn, x):
    return torch.stack([torch.autograd.functional.jacobian(fn, row).trace() for row in x])


def test_exact_divergence_is_the_jacobian_trace_in_any_chunking():
    fn = network()
    x = torch.randn(5, 6, dtype=torch.float64)
    out, div = exact_divergence(fn, x)
    assert torch.allclose(out, fn(x))
    expected = brute_force_traces(fn, x)
    assert torch.allclose(div, expected, atol=1e-12)
    assert torch.allclose(exact_divergence(fn, x, chunk_size=4)[1], expected, atol=1e-12)


def test_exact_divergence_of_image_shaped_states():
    conv = nn.Conv2d(1, 1, 3, padding=1).double()

    def fn(y):
        return torch.tanh(conv(y))

    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    expected = brute_force_traces(lambda row: fn(row.view(1, 1, 4, 4)).flatten(), x.flatten(1))
    assert torch.allclose(exact_divergence(fn, x, chunk_size=5)[1], expected, atol=1e-12)


def test_hutchinson_mean_over_many_probes_is_the_exact_divergence():
    fn = network()
    x = torch.randn(4, 6, dtype=torch.float64)
    probes = rademacher_probes(20000, x, torch.Generator().manual_seed(0))
    assert set(probes.unique().tolist()) == {-1.0, 1.0}
    _, estimate = hutchinson_divergence(fn, x, probes)
    exact = brute_force_traces(fn, x)
    # Rademacher variance is 2 * sum of squared off-diagonal entries; 20000 probes: well within 0.05.
    assert torch.allclose(estimate, exact, atol=0.05)
    # One probe per example is already unbiased: its mean over probes is the estimate above.
    single = torch.stack([hutchinson_divergence(fn, x, p[None])[1] for p in probes[:200]])
    assert torch.allclose(single.mean(0), hutchinson_divergence(fn, x, probes[:200])[1], atol=1e-10)


def test_an_example_divergence_depends_on_that_example_only():
    fn = network()
    x = torch.randn(4, 6, dtype=torch.float64)
    alone = exact_divergence(fn, x[1:2])[1]
    assert torch.allclose(exact_divergence(fn, x)[1][1:2], alone, atol=1e-12)


def test_per_example_generators_give_each_example_its_own_probes():
    x = torch.zeros(3, 6)
    # Generator i is seeded 10 + index i: examples 0 and 2 share index 5, so they share their probes.
    probes = rademacher_probes(4, x, ExampleGenerators(10, [5, 6, 5]))
    assert torch.equal(probes[:, 0], probes[:, 2]) and not torch.equal(probes[:, 0], probes[:, 1])


def test_divergences_work_under_inference_mode():
    fn = network()
    x = torch.randn(2, 6, dtype=torch.float64)
    with torch.inference_mode():
        _, div = exact_divergence(fn, x)
        _, est = hutchinson_divergence(fn, x, rademacher_probes(2, x))
    assert torch.allclose(div, brute_force_traces(fn, x), atol=1e-12)
    assert est.shape == (2,)


@pytest.mark.parametrize("dims", [1, 3])
def test_divergence_of_a_linear_field_is_its_trace(dims):
    matrix = torch.randn(dims, dims, dtype=torch.float64)
    x = torch.randn(5, dims, dtype=torch.float64)
    _, div = exact_divergence(lambda y: y @ matrix.T, x)
    assert torch.allclose(div, matrix.trace().expand(5))
