"""Per-example random streams: the noise of example i is a function of (seed, i) alone.

Evaluation draws noise: samples (latents, sampler and Langevin noise, categorical draws) and Monte-Carlo
likelihoods (IWAE noise, dequantization noise, a diffusion bound's timesteps and x_t). Drawn from one
generator per batch, the noise of an example depends on the batch it lands in, so on the batch size and
on the number of processes. :class:`ExampleGenerators` holds one ``torch.Generator`` per example, seeded
``seed + index`` with the example's global index (sample j of a request, example j of a split), as
NVlabs/edm draws each image from its own seeded generator. Row i of every draw comes from generator i: a
batched model stays batched in compute while its noise stays per example.

The functions :func:`randn`, :func:`rand`, :func:`randint`, :func:`multinomial` and :func:`rows` take
either kind of source. A plain ``torch.Generator`` (or ``None``, the global stream) draws the whole tensor
exactly as the ``torch`` function of the same name does, so code that passes one keeps its numbers; an
:class:`ExampleGenerators` draws row by row along ``example_dim``.

For the result to be independent of the batch, the per-example shape of every draw must not depend on
the batch (importance samples in fixed-size chunks, a bound's timesteps one at a time): a generator's
stream is not consumed the same way by one draw of 2n values as by two draws of n.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
from torch import Tensor


class ExampleGenerators:
    """One ``torch.Generator`` per example on ``device``, generator i seeded ``seed + indices[i]``.

    Draws return ``(N, *shape)`` with row i from generator i; each generator's stream continues from draw
    to draw, so a sequence of draws gives example i the same numbers whatever else is in its batch.
    """

    def __init__(self, seed: int, indices: Iterable[int] | Tensor,
                 device: torch.device | str | None = None) -> None:
        self.seed = int(seed)
        self.indices = [int(i) for i in (indices.tolist() if isinstance(indices, Tensor) else indices)]
        self.device = torch.device(device if device is not None else "cpu")
        self.generators = [torch.Generator(device=self.device).manual_seed(self.seed + index)
                           for index in self.indices]

    @classmethod
    def for_range(cls, seed: int, start: int, count: int,
                  device: torch.device | str | None = None) -> ExampleGenerators:
        """The generators of examples ``start, ..., start + count - 1``."""
        return cls(seed, range(start, start + count), device)

    def __len__(self) -> int:
        return len(self.generators)

    def __repr__(self) -> str:
        return f"ExampleGenerators(seed={self.seed}, {len(self)} examples, device={self.device})"

    def rows(self, positions: Tensor | Sequence[int]) -> ExampleGenerators:
        """The generators at ``positions`` of this set, shared (not reseeded): their streams continue."""
        positions = positions.tolist() if isinstance(positions, Tensor) else list(positions)
        out = object.__new__(ExampleGenerators)
        out.seed, out.device = self.seed, self.device
        out.indices = [self.indices[p] for p in positions]
        out.generators = [self.generators[p] for p in positions]
        return out

    def _stack(self, draw: Callable[[torch.Generator], Tensor], shape: tuple[int, ...],
               dtype: torch.dtype | None) -> Tensor:
        if not self.generators:
            return torch.empty((0, *shape), dtype=dtype, device=self.device)
        return torch.stack([draw(generator) for generator in self.generators])

    def randn(self, shape: Sequence[int] = (), dtype: torch.dtype | None = None) -> Tensor:
        """``(N, *shape)`` standard normal draws."""
        shape = tuple(shape)
        return self._stack(lambda g: torch.randn(shape, generator=g, device=self.device, dtype=dtype),
                           shape, dtype)

    def rand(self, shape: Sequence[int] = (), dtype: torch.dtype | None = None) -> Tensor:
        """``(N, *shape)`` uniform draws on [0, 1)."""
        shape = tuple(shape)
        return self._stack(lambda g: torch.rand(shape, generator=g, device=self.device, dtype=dtype),
                           shape, dtype)

    def randint(self, low: int, high: int, shape: Sequence[int] = (),
                dtype: torch.dtype = torch.long) -> Tensor:
        """``(N, *shape)`` integers in [low, high)."""
        shape = tuple(shape)
        return self._stack(lambda g: torch.randint(low, high, shape, generator=g, device=self.device,
                                                   dtype=dtype), shape, dtype)

    def multinomial(self, probs: Tensor, num_samples: int = 1, replacement: bool = False) -> Tensor:
        """``(N, num_samples)`` category indices; ``probs`` is ``(K,)`` for every row or ``(N, K)``."""
        if probs.dim() not in (1, 2) or (probs.dim() == 2 and probs.shape[0] != len(self)):
            raise ValueError(f"probs must be (K,) or ({len(self)}, K), got {tuple(probs.shape)}")
        on_device = probs.to(self.device)
        rows = [on_device if probs.dim() == 1 else on_device[i] for i in range(len(self))]
        if not rows:
            return torch.empty((0, num_samples), dtype=torch.long, device=probs.device)
        return torch.stack([torch.multinomial(p, num_samples, replacement, generator=g)
                            for p, g in zip(rows, self.generators)]).to(probs.device)


#: What a sampler or likelihood takes as its noise: a plain generator, the per-example set, or None.
RandomSource = torch.Generator | ExampleGenerators | None


def _per_example(shape: Sequence[int], source: ExampleGenerators,
                 example_dim: int) -> tuple[tuple[int, ...], int]:
    shape = tuple(int(s) for s in shape)
    dim = example_dim % len(shape) if shape else 0
    if not shape or shape[dim] != len(source):
        raise ValueError(f"a draw of shape {shape} does not have the {len(source)} examples of its "
                         f"generators along dim {example_dim}")
    return shape[:dim] + shape[dim + 1:], dim


def _placed(x: Tensor, device: torch.device | str | None) -> Tensor:
    # Drawn on the generators' device (the numbers are that device's), then moved where they are used.
    return x if device is None else x.to(device)


def randn(shape: Sequence[int], *, generator: RandomSource = None, device: torch.device | str | None = None,
          dtype: torch.dtype | None = None, example_dim: int = 0) -> Tensor:
    """``torch.randn(shape)``; per example along ``example_dim`` for :class:`ExampleGenerators`."""
    if isinstance(generator, ExampleGenerators):
        per, dim = _per_example(shape, generator, example_dim)
        return _placed(generator.randn(per, dtype).movedim(0, dim), device)
    return torch.randn(tuple(shape), generator=generator, device=device, dtype=dtype)


def rand(shape: Sequence[int], *, generator: RandomSource = None, device: torch.device | str | None = None,
         dtype: torch.dtype | None = None, example_dim: int = 0) -> Tensor:
    """``torch.rand(shape)``; per example along ``example_dim`` for :class:`ExampleGenerators`."""
    if isinstance(generator, ExampleGenerators):
        per, dim = _per_example(shape, generator, example_dim)
        return _placed(generator.rand(per, dtype).movedim(0, dim), device)
    return torch.rand(tuple(shape), generator=generator, device=device, dtype=dtype)


def randint(low: int, high: int, shape: Sequence[int], *, generator: RandomSource = None,
            device: torch.device | str | None = None, dtype: torch.dtype = torch.long,
            example_dim: int = 0) -> Tensor:
    """``torch.randint(low, high, shape)``; per example along ``example_dim`` for
    :class:`ExampleGenerators`."""
    if isinstance(generator, ExampleGenerators):
        per, dim = _per_example(shape, generator, example_dim)
        return _placed(generator.randint(low, high, per, dtype).movedim(0, dim), device)
    return torch.randint(low, high, tuple(shape), generator=generator, device=device, dtype=dtype)


def multinomial(probs: Tensor, num_samples: int, *, replacement: bool = False,
                generator: RandomSource = None) -> Tensor:
    """``torch.multinomial``. For :class:`ExampleGenerators`: with ``(K,)`` probs, one draw per example
    (``num_samples`` must be the number of examples), shape ``(N,)``; with ``(N, K)`` probs, row i's
    ``num_samples`` draws from generator i, shape ``(N, num_samples)``."""
    if isinstance(generator, ExampleGenerators):
        if probs.dim() == 1:
            if num_samples != len(generator):
                raise ValueError(f"{num_samples} draws from shared probs need as many generators, "
                                 f"got {len(generator)}")
            return generator.multinomial(probs, 1).squeeze(1)
        return generator.multinomial(probs, num_samples, replacement)
    return torch.multinomial(probs, num_samples, replacement, generator=generator)


def rows(source: RandomSource, positions: Tensor | Sequence[int]) -> RandomSource:
    """The source of a subset of a batch's rows: the same plain generator, or those rows' generators."""
    return source.rows(positions) if isinstance(source, ExampleGenerators) else source


__all__ = ["ExampleGenerators", "RandomSource", "multinomial", "rand", "randint", "randn", "rows"]
