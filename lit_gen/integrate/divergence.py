"""The divergence ``div f(x) = tr(df/dx)`` of a vector field on a batch, exactly or by Hutchinson's estimator.

``fn`` maps a batch ``(B, *shape)`` to a batch of the same shape, example by example (row b of the output
depends on row b of the input only). Both functions return ``(fn(x), div)`` with ``div`` of shape ``(B,)``,
detached: they are for evaluating a likelihood, not for training through it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from lit_gen.core import seeds
from lit_gen.core.seeds import RandomSource

Field = Callable[[Tensor], Tensor]


def _vector_jacobian_products(fn: Field, x: Tensor, vectors: Tensor) -> tuple[Tensor, Tensor]:
    """``(fn(x), v^T df/dx)`` for each of the ``(N, B, *shape)`` vectors, in one batched backward pass."""
    # Lightning evaluates under inference mode, where no graph is recorded: leave it for this pass.
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        out = fn(x)
        (products,) = torch.autograd.grad(out, x, grad_outputs=vectors.to(out.dtype), is_grads_batched=True)
    return out.detach(), products


def exact_divergence(fn: Field, x: Tensor, chunk_size: int = 256) -> tuple[Tensor, Tensor]:
    """The trace of the Jacobian from D vector-Jacobian products (the rows ``e_i^T df/dx``), ``chunk_size``
    of them per backward pass: D network gradients per call, for small D."""
    batch, dims = x.shape[0], x[0].numel()
    diagonal = []
    out = None
    for first in range(0, dims, chunk_size):
        rows = torch.arange(first, min(first + chunk_size, dims), device=x.device)
        basis = torch.zeros(len(rows), batch, dims, dtype=x.dtype, device=x.device)
        basis[torch.arange(len(rows)), :, rows] = 1.0
        out, products = _vector_jacobian_products(fn, x, basis.view(len(rows), *x.shape))
        # products[i, b] is row rows[i] of example b's Jacobian: keep its diagonal entry.
        diagonal.append(products.flatten(2)[torch.arange(len(rows)), :, rows])
    return out, torch.cat(diagonal).sum(0)


def rademacher_probes(num_probes: int, like: Tensor, generator: RandomSource = None) -> Tensor:
    """``(num_probes, B, *shape)`` signs +-1, each example's from its own generator when given per example."""
    shape = (num_probes, *like.shape)
    signs = seeds.randint(0, 2, shape, generator=generator, device=like.device, example_dim=1)
    return signs.to(like.dtype) * 2 - 1


def hutchinson_divergence(fn: Field, x: Tensor, probes: Tensor) -> tuple[Tensor, Tensor]:
    """Hutchinson's unbiased estimate ``mean_k eps_k^T (df/dx) eps_k`` over ``probes`` ``(K, B, *shape)``
    (Rademacher or Gaussian): K vector-Jacobian products per call, whatever D."""
    out, products = _vector_jacobian_products(fn, x, probes)
    return out, (products * probes).flatten(2).sum(-1).mean(0)


__all__ = ["exact_divergence", "hutchinson_divergence", "rademacher_probes"]
