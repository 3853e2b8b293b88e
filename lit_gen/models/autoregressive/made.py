"""MADE: a masked MLP whose output for dimension d sees only the inputs before d (Germain et al. 2015).

Every input dimension gets a *degree*, its position (1..D) in an ordering; every hidden unit a degree
in ``1..D-1`` (see :func:`made_degrees`). A hidden unit connects to the units below with
degree <= its own; an output of dimension d connects to hidden units with degree < degree(d). Hence
output d is a function of the inputs strictly before d in the ordering only.

Several masks (``num_masks``) give an ensemble of autoregressive models sharing one set of weights:
each mask has its own hidden degrees (connectivity-agnostic training) and, with ``order_agnostic``,
its own random ordering of the inputs (order-agnostic training, Uria et al. 2014). Masks are buffers
drawn once from ``seed``, so a checkpoint carries exactly the masks it was trained with.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_gen.errors import ConfigurationError


class MaskedLinear(nn.Linear):
    """A linear layer with fixed 0/1 connectivity masks, one per ordering; ``mask_index`` picks one."""

    def __init__(self, in_features: int, out_features: int, masks: Tensor) -> None:
        super().__init__(in_features, out_features)
        if masks.shape[1:] != (out_features, in_features):
            raise ConfigurationError(
                f"masks must be (num_masks, {out_features}, {in_features}), got {tuple(masks.shape)}"
            )
        self.register_buffer("masks", masks.to(self.weight.dtype))

    def forward(self, x: Tensor, mask_index: int = 0) -> Tensor:
        return F.linear(x, self.weight * self.masks[mask_index], self.bias)


def made_degrees(order: Tensor, hidden_sizes: Sequence[int], generator: torch.Generator) -> list[Tensor]:
    """Degrees of the inputs (position in ``order``, 1..D) and of each hidden layer's units.

    ``order[t]`` is the dimension at step t. Hidden degrees are spread evenly over ``1..D-1`` and shuffled
    among the units. Even spreading, rather than the paper's i.i.d. uniform draws, keeps every degree
    present when a layer has >= D-1 units, so every conditional sees *all* earlier dimensions (random
    draws can miss a degree and silently cut p(x_d | x_<d) down to fewer inputs); the shuffle still
    gives every mask its own connectivity.
    """
    num_dims = order.numel()
    input_degrees = torch.empty(num_dims, dtype=torch.long)
    input_degrees[order] = torch.arange(1, num_dims + 1)
    degrees = [input_degrees]
    for size in hidden_sizes:
        spread = 1 + torch.arange(size) * max(num_dims - 1, 1) // size
        degrees.append(spread[torch.randperm(size, generator=generator)])
    return degrees


def random_orders(num_dims: int, num_orders: int, generator: torch.Generator) -> list[Tensor]:
    """``num_orders`` random orderings of ``range(num_dims)``, distinct until all D! of them are used."""
    total = math.factorial(num_dims)
    orders: list[Tensor] = []
    seen: set[tuple[int, ...]] = set()
    while len(orders) < num_orders:
        order = torch.randperm(num_dims, generator=generator)
        key = tuple(order.tolist())
        if key in seen and len(seen) < total:
            continue
        seen.add(key)
        orders.append(order)
    return orders


def made_masks(degrees: list[Tensor]) -> list[Tensor]:
    """(out, in) masks of every layer: hidden ``m_out >= m_in``, output ``degree(d) > m_in``."""
    masks = [(out[:, None] >= inp[None, :]) for inp, out in itertools.pairwise(degrees)]
    masks.append(degrees[0][:, None] > degrees[-1][None, :])
    return [m.float() for m in masks]


class MADENet(nn.Module):
    """Masked MLP mapping ``(B, D)`` inputs to ``(B, P, D)`` parameters of each dimension's conditional.

    Args:
        num_dims: D.
        params_per_dim: P, parameters of one conditional (K logits, 3M mixture parameters, ...).
        hidden_sizes: widths of the hidden layers (ReLU).
        num_masks: masks / orderings in the ensemble.
        order_agnostic: draw a random ordering per mask (else every mask uses the natural order 0..D-1).
        context_dim: size of an optional context (one-hot class) fed, unmasked, into every layer: it is
            known before any dimension, so it may reach all of them.
        seed: seed of the orderings and hidden degrees.
    """

    def __init__(
        self,
        num_dims: int,
        params_per_dim: int,
        hidden_sizes: Sequence[int] = (512, 512),
        num_masks: int = 1,
        order_agnostic: bool = False,
        context_dim: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if num_masks < 1:
            raise ConfigurationError(f"num_masks must be >= 1, got {num_masks}")
        if not hidden_sizes:
            raise ConfigurationError("MADE needs at least one hidden layer")
        self.num_dims, self.params_per_dim, self.num_masks = num_dims, params_per_dim, num_masks
        generator = torch.Generator().manual_seed(seed)
        orders = (
            random_orders(num_dims, num_masks, generator)
            if order_agnostic
            else [torch.arange(num_dims)] * num_masks
        )
        per_mask = [made_masks(made_degrees(order, hidden_sizes, generator)) for order in orders]
        #: orders[m, t] = the dimension generated at step t under mask m.
        self.register_buffer("orders", torch.stack(orders))
        sizes = [num_dims, *hidden_sizes]
        self.hidden = nn.ModuleList(
            MaskedLinear(sizes[i], sizes[i + 1], torch.stack([masks[i] for masks in per_mask]))
            for i in range(len(hidden_sizes))
        )
        # Output rows are laid out (P, D): row p * D + d belongs to dimension d.
        output_masks = torch.stack([masks[-1].repeat(params_per_dim, 1) for masks in per_mask])
        self.output = MaskedLinear(sizes[-1], params_per_dim * num_dims, output_masks)
        self.context = (
            nn.ModuleList(nn.Linear(context_dim, size) for size in [*hidden_sizes, params_per_dim * num_dims])
            if context_dim
            else None
        )

    def forward(self, x: Tensor, context: Tensor | None = None, mask_index: int = 0) -> Tensor:
        h = x
        layers = [*self.hidden, self.output]
        for i, layer in enumerate(layers):
            h = layer(h, mask_index)
            if self.context is not None and context is not None:
                h = h + self.context[i](context)
            if i < len(layers) - 1:
                h = F.relu(h)
        return h.view(x.shape[0], self.params_per_dim, self.num_dims)
