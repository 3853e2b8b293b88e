"""Checks shared by the MADE and PixelCNN tests: dependency structure, normalisation, pass counting."""

from __future__ import annotations

import itertools

import torch
from torch import nn

from lit_gen.core.levels import from_levels


def dependency_matrix(conditionals, x: torch.Tensor, order: torch.Tensor) -> torch.Tensor:
    """dep[a, b] = sum over examples of |d <w, params[dim order[a]]> / d x[dim order[b]]|, w random.

    ``conditionals(x) -> (B, P, *D)``. One backward pass per output dimension: a random projection of its
    P parameters (and of the batch: examples are independent, so each example's gradient stays its own)
    is zero exactly where the Jacobian is, almost surely. Rows and columns are put in the model's
    generation order, so the autoregressive property reads: ``dep`` is strictly lower triangular.
    """
    x = x.detach().clone().requires_grad_(True)
    params = conditionals(x)
    params = params.reshape(params.shape[0], params.shape[1], -1)
    weights = torch.randn(params.shape, generator=torch.Generator().manual_seed(0), dtype=params.dtype)
    rows = []
    for d in range(params.shape[2]):
        (grad,) = torch.autograd.grad((params[:, :, d] * weights[:, :, d]).sum(), x, retain_graph=True)
        rows.append(grad.abs().reshape(x.shape[0], -1).sum(0))
    dep = torch.stack(rows)  # (D_out, D_in)
    return dep[order][:, order]


def all_configurations(shape: tuple[int, ...], num_levels: int) -> torch.Tensor:
    """Every point of the K-level grid of ``shape``: (K^D, *shape)."""
    num_dims = int(torch.tensor(shape).prod())
    levels = torch.tensor(list(itertools.product(range(num_levels), repeat=num_dims)))
    return from_levels(levels, num_levels).view(-1, *shape)


class PassCounter:
    """Counts forward calls of a module and the rows they process."""

    def __init__(self, module: nn.Module) -> None:
        self.calls = self.rows = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.calls += 1
        self.rows += args[0].shape[0]

    def remove(self) -> None:
        self.handle.remove()
