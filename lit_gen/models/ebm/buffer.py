"""A replay buffer of persistent sampler states (Du & Mordatch 2019, IGEBM; Grathwohl et al. 2020, JEM).

Negatives for contrastive divergence start from states the sampler reached on earlier steps, so a short
chain per step adds up to a long chain over training. Each drawn state is replaced by fresh noise with
probability ``reinit_rate``, which keeps the buffer from collapsing onto a few modes; after sampling the
refined states are written back where they were drawn from. The buffer's size never changes.

It is plain state, not an ``nn.Module`` buffer, on purpose: weight-averaging callbacks (EMA) average and
swap every module buffer, which would blend sampler states. The EBM saves it in its checkpoints.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import torch
from torch import Tensor

from lit_gen.core import seeds
from lit_gen.core.seeds import RandomSource
from lit_gen.errors import ConfigurationError

NoiseFn = Callable[[int, RandomSource], Tensor]


class BufferDraw(NamedTuple):
    samples: Tensor  # (n, *item_shape): starting states
    indices: Tensor  # (n,) where they came from (and go back to)
    fresh: Tensor  # (n,) bool: replaced by noise


class ReplayBuffer:
    """``capacity`` states, initialised by ``noise(capacity, generator)`` (which also makes fresh states)."""

    def __init__(self, capacity: int, noise: NoiseFn, reinit_rate: float = 0.05,
                 generator: torch.Generator | None = None) -> None:
        if capacity < 1:
            raise ConfigurationError(f"buffer capacity must be >= 1, got {capacity}")
        if not 0.0 <= reinit_rate <= 1.0:
            raise ConfigurationError(f"reinit_rate must be in [0, 1], got {reinit_rate}")
        self.noise = noise
        self.reinit_rate = reinit_rate
        self.samples = noise(capacity, generator)

    def __len__(self) -> int:
        return self.samples.shape[0]

    @property
    def device(self) -> torch.device:
        return self.samples.device

    def to(self, device: torch.device | str) -> ReplayBuffer:
        self.samples = self.samples.to(device)
        return self

    def draw(self, n: int, generator: RandomSource = None, reinit: bool = True) -> BufferDraw:
        """n states at random positions (with replacement); each is fresh noise with prob. ``reinit_rate``."""
        indices = seeds.randint(0, len(self), (n,), generator=generator, device=self.device)
        samples = self.samples[indices].clone()
        fresh = torch.zeros(n, dtype=torch.bool, device=self.device)
        if reinit and self.reinit_rate > 0:
            fresh = seeds.rand((n,), generator=generator, device=self.device) < self.reinit_rate
            noise = self.noise(n, generator).to(self.device)
            samples = torch.where(fresh.view(-1, *([1] * (samples.dim() - 1))), noise, samples)
        return BufferDraw(samples, indices, fresh)

    def update(self, indices: Tensor, samples: Tensor) -> None:
        """Write refined states back at ``indices``."""
        self.samples[indices.to(self.device)] = samples.detach().to(self.samples.dtype).to(self.device)

    def state_dict(self) -> dict[str, Any]:
        return {"samples": self.samples.detach().cpu().clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        samples = state["samples"]
        if samples.shape[1:] != self.samples.shape[1:]:
            raise ConfigurationError(f"replay buffer states of shape {tuple(samples.shape[1:])} do not fit "
                             f"{tuple(self.samples.shape[1:])}")
        self.samples = samples.to(self.device, self.samples.dtype).clone()
