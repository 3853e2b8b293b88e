"""The one place that turns per-example log-likelihoods into NLL and bits/dim.

A model with a *discrete* likelihood (softmax, discretized logistic, Bernoulli, DDPM's L0) reports
``-log P(x)`` in nats directly. A model with a *density* on ``[0, 1]^D`` trains on uniformly dequantized
data ``y = (k + u) / K`` (:func:`lit_gen.core.levels.dequantize`) and reports

    NLL(x) = -log p(y) + D * log K        (nats; an upper bound on -log P(x), Theis et al. 2016)

so both kinds are numbers about the same discrete data and compare in bits/dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from torch import Tensor

from lit_gen.core.levels import dequantization_nats

LikelihoodKind = Literal["exact", "bound", "estimate"]
LIKELIHOOD_KINDS: tuple[str, ...] = ("exact", "bound", "estimate")


@dataclass
class NLL:
    """Per-example negative log-likelihood of the discrete data, in nats.

    ``kind`` says what the number is: ``exact`` (autoregressive, flow), ``bound`` (ELBO, diffusion VLB)
    or ``estimate`` (IWAE with k samples, AIS). ``terms`` holds further per-example quantities in nats
    worth logging beside it (e.g. a VAE's ELBO next to its IWAE estimate), each with its own kind.
    """

    nats: Tensor
    kind: LikelihoodKind
    terms: dict[str, tuple[Tensor, LikelihoodKind]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in LIKELIHOOD_KINDS:
            raise ValueError(f"likelihood kind must be one of {LIKELIHOOD_KINDS}, got {self.kind!r}")
        if self.nats.dim() != 1:
            raise ValueError(f"NLL.nats must be per example (shape [B]), got shape {tuple(self.nats.shape)}")


def discrete_nll_from_density(log_density: Tensor, num_dims: int, num_levels: int) -> Tensor:
    """Per-example nats of the discrete data from the log-density of its dequantized point in [0, 1]^D."""
    return -log_density.double() + dequantization_nats(num_dims, num_levels)


def bits_per_dim(nats: Tensor | float, num_dims: int) -> Tensor | float:
    """``nats / (D ln 2)``."""
    return nats / (num_dims * math.log(2.0))
