"""The factorized per-pixel categorical model: the baseline every family must beat.

p(x) = prod_d Categorical(x_d; softmax(logits_d)), one independent K-way distribution per dimension.
Its maximum-likelihood fit is the per-dimension histogram of the training data, so it can be fitted
in closed form (:meth:`fit_counts`) or by gradient descent like any family. It is also the smallest
complete example of the protocol (docs/adding-a-family.md).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_gen.core.levels import to_levels
from lit_gen.core.likelihood import NLL
from lit_gen.core.seeds import RandomSource
from lit_gen.errors import ConfigurationError
from lit_gen.models.base import GenerativeModule
from lit_gen.nn.distributions import categorical_log_prob, categorical_sample


class FactorizedCategorical(GenerativeModule):
    """Independent K-way categorical per dimension; exact NLL; ``temperature`` as the sampling knob."""

    likelihood_kind = "exact"
    sampling_knob = "temperature"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if self.num_levels is None:
            raise ConfigurationError("FactorizedCategorical needs discrete data (num_levels)")
        self.check_unconditional()
        self.logits = nn.Parameter(torch.zeros(self.num_levels, *self.data_shape))

    def log_prob(self, x: Tensor) -> Tensor:
        logits = self.logits.unsqueeze(0).expand(x.shape[0], *self.logits.shape)
        return categorical_log_prob(x, logits, self.num_levels).flatten(1).sum(1)

    def loss(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return -self.log_prob(x).mean()

    def nll(self, x: Tensor, labels: Tensor | None = None, **kwargs: Any) -> NLL:
        return NLL(-self.log_prob(x).double(), "exact")

    @torch.no_grad()
    def sample(self, num_samples: int, *, labels: Tensor | None = None,
               generator: RandomSource = None, temperature: float = 1.0) -> Tensor:
        logits = self.logits.unsqueeze(0).expand(num_samples, *self.logits.shape)
        return categorical_sample(logits, self.num_levels, temperature, generator)

    @torch.no_grad()
    def fit_counts(self, batches: Iterable[Any], smoothing: float = 1.0) -> "FactorizedCategorical":
        """Closed-form maximum likelihood with add-``smoothing`` (Laplace) counts; returns self."""
        counts = torch.full_like(self.logits, smoothing)
        for batch in batches:
            x = batch[0] if isinstance(batch, (tuple, list)) else batch
            levels = to_levels(x.to(counts.device), self.num_levels)
            counts += F.one_hot(levels, self.num_levels).sum(0).movedim(-1, 0).to(counts.dtype)
        self.logits.copy_(torch.log(counts / counts.sum(0, keepdim=True)))
        return self
