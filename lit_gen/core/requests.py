"""Seeded, chunked sampling that gives the same sample set for any chunk size and number of processes.

A request for N samples is cut into chunks of a fixed size, and chunk ``i`` goes to rank
``i % world_size``. Sample ``j`` of the request is drawn from its own generator seeded ``seed + j``
(:class:`~lit_gen.core.seeds.ExampleGenerators`), whichever chunk and rank draw it. Every rank draws only
its own chunks, results are all-gathered and put back in chunk order, so 1 process and 8 processes, in
chunks of 16 or of 64, evaluate the same images with no duplicates and no rank-zero-only work.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def balanced_labels(start: int, size: int, num_classes: int) -> Tensor:
    """Labels of samples ``start, ..., start + size - 1`` of a request: sample j gets class j mod C."""
    return torch.arange(start, start + size) % num_classes


@dataclass
class SampleChunk:
    """Samples ``start, ..., start + size - 1`` of a request, each from a generator seeded ``seed + j``.

    ``labels`` are the classes to draw (balanced, j mod C, unless the request names them) when the request
    is for labeled data; a conditional model draws them, an unconditional one ignores the balanced ones and
    refuses named ones (``labels_named``).
    """

    index: int
    start: int
    size: int
    seed: int
    labels: Tensor | None = None
    labels_named: bool = False
    #: > 0: each of the chunk's samples is a row of that many images between two seeded latents
    interpolation_steps: int = 0


class SampleRequest(Dataset):
    """A request for ``num_samples`` seeded samples, cut into chunks of ``chunk_size``: the one object the
    datamodule (predict) and the evaluation callback hand to a model, item i being chunk i."""

    def __init__(self, num_samples: int, seed: int, chunk_size: int, num_classes: int | None = None,
                 labels: Tensor | None = None, interpolation_steps: int = 0) -> None:
        if labels is not None and len(labels) != num_samples:
            raise ValueError(f"{len(labels)} labels for a request of {num_samples} samples")
        self.num_samples, self.seed, self.chunk_size = num_samples, seed, chunk_size
        self.num_classes = num_classes
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long)
        self.interpolation_steps = interpolation_steps
        self.sizes = chunk_sizes(num_samples, chunk_size)

    def __len__(self) -> int:
        return len(self.sizes)

    def __getitem__(self, index: int) -> SampleChunk:
        start, size = index * self.chunk_size, self.sizes[index]
        if self.labels is not None:
            return SampleChunk(index, start, size, self.seed, self.labels[start:start + size], labels_named=True,
                               interpolation_steps=self.interpolation_steps)
        labels = balanced_labels(start, size, self.num_classes) if self.num_classes else None
        return SampleChunk(index, start, size, self.seed, labels, interpolation_steps=self.interpolation_steps)

    def for_rank(self, rank: int, world_size: int) -> list[SampleChunk]:
        """The chunks ``rank`` draws (see :func:`rank_chunks`)."""
        return [self[i] for i in rank_chunks(len(self), rank, world_size)]


def single_chunk(items: list[SampleChunk]) -> SampleChunk:
    """``collate_fn`` of a loader over a :class:`SampleRequest` (batch size 1): the chunk itself."""
    (chunk,) = items
    return chunk


@torch.no_grad()
def draw_samples(model: Any, start: int, size: int, seed: int, sample_kwargs: dict[str, Any],
                 labels: Tensor | None = None) -> Tensor:
    """Samples ``start, ..., start + size - 1`` of a request: sample j from a generator seeded ``seed + j``
    on the model's device."""
    generators = ExampleGenerators.for_range(seed, start, size, model.device)
    return model.sample(size, labels=labels, generator=generators, **sample_kwargs)


def draw_chunk(model: Any, chunk: SampleChunk, sample_kwargs: dict[str, Any]) -> Tensor:
    """The samples of ``chunk`` from ``model``, with its labels if the model is conditional."""
    labels = chunk.labels.to(model.device) if model.conditional and chunk.labels is not None else None
    return draw_samples(model, chunk.start, chunk.size, chunk.seed, sample_kwargs, labels)
