"""Seeded, chunked sampling that gives the same sample set for any chunk size and number of processes.

A request for N samples is cut into chunks of a fixed size, and chunk ``i`` goes to rank
``i % world_size``. Sample ``j`` of the request is drawn from its own generator seeded ``seed + j``
(:class:`~lit_gen.core.seeds.ExampleGenerators`), whichever chunk and rank draw it. Every rank draws only
its own chunks, results are all-gathered and put back in chunk order, so 1 process and 8 processes, in
chunks of 16 or of 64, evaluate the same images with no duplicates and no rank-zero-only work.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from lit_gen.core.seeds import ExampleGenerators


def chunk_sizes(num_samples: int, chunk_size: int) -> list[int]:
    """Sizes of the chunks a request for ``num_samples`` is cut into (the last may be smaller)."""
    if num_samples < 0 or chunk_size < 1:
        raise ValueError(f"need num_samples >= 0 and chunk_size >= 1, got {num_samples}, {chunk_size}")
    full, rest = divmod(num_samples, chunk_size)
    return [chunk_size] * full + ([rest] if rest else [])


def rank_chunks(num_chunks: int, rank: int, world_size: int) -> list[int]:
    """Chunk indices drawn by ``rank``: ``rank, rank + W, rank + 2W, ...``."""
    return list(range(rank, num_chunks, world_size))


def chunk_labels(model: Any, index: int, size: int, chunk_size: int) -> Tensor | None:
    """Balanced labels of chunk ``index`` for conditional models: sample j of the request gets j mod C."""
    labels = model.default_labels(size)
    return None if labels is None else (labels + index * chunk_size) % model.num_classes


@torch.no_grad()
def draw_samples(model: Any, start: int, size: int, seed: int, sample_kwargs: dict[str, Any],
                 labels: Tensor | None = None) -> Tensor:
    """Samples ``start, ..., start + size - 1`` of a request: sample j from a generator seeded ``seed + j``
    on the model's device."""
    generators = ExampleGenerators.for_range(seed, start, size, model.device)
    return model.sample(size, labels=labels, generator=generators, **sample_kwargs)


class SampleRequests(Dataset):
    """A predict 'dataset' of sample requests: item i is ``[chunk index, its size, seed, chunk size]``."""

    def __init__(self, num_samples: int, chunk_size: int, seed: int) -> None:
        self.sizes = chunk_sizes(num_samples, chunk_size)
        self.chunk_size = chunk_size
        self.seed = seed

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, index: int) -> Tensor:
        return torch.tensor([index, self.sizes[index], self.seed, self.chunk_size], dtype=torch.long)
