"""Exact means over a split: float64 sums and example counts, per split and metric, reduced across ranks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor


class SplitMeans:
    """Running float64 sums of per-example metrics and their numbers of examples, per split.

    Counts are host integers (no copy to the device at every step). :meth:`pop` sums every rank's totals
    when given the strategy's sum-reduction: Lightning's own synced mean divides by an integer mean of
    per-rank batch sizes, which truncates when ranks hold different numbers of examples (as the unrepeated
    evaluation sampler gives them).
    """

    def __init__(self) -> None:
        self._sums: dict[str, dict[str, Tensor]] = {}
        self._counts: dict[str, dict[str, int]] = {}

    def add(self, split: str, name: str, total: Tensor, count: int) -> None:
        """Add ``total`` (summed to a float64 scalar) and ``count`` examples to the split's metric."""
        sums, counts = self._sums.setdefault(split, {}), self._counts.setdefault(split, {})
        total = total.sum().double()
        sums[name] = total if name not in sums else sums[name] + total
        counts[name] = counts.get(name, 0) + count

    def reset(self, split: str) -> None:
        self._sums.pop(split, None)
        self._counts.pop(split, None)

    def pop(self, split: str,
            reduce: Callable[[Tensor], Tensor] | None = None) -> dict[str, tuple[Tensor, Tensor]]:
        """Each metric's (sum, number of examples), reduced with ``reduce`` (a sum over ranks) when given;
        the split's running sums are cleared."""
        sums, counts = self._sums.get(split, {}), self._counts.get(split, {})
        self.reset(split)
        if not sums:
            return {}
        names = sorted(sums)
        stacked = torch.stack([torch.stack([sums[name], sums[name].new_tensor(float(counts[name]))])
                               for name in names])
        if reduce is not None:
            stacked = reduce(stacked)
        return {name: (total, count) for name, (total, count) in zip(names, stacked)}

    def state(self, split: str) -> dict[str, list[Any]]:
        """The split's running sums as plain CPU tensors and ints (loadable with ``weights_only``)."""
        sums, counts = self._sums.get(split, {}), self._counts.get(split, {})
        return {name: [sums[name].detach().cpu(), counts[name]] for name in sums}

    def load(self, split: str, state: dict[str, list[Any]], device: torch.device | str) -> None:
        """Add a :meth:`state` back (a run resumed part-way through an epoch goes on where it was)."""
        for name, (total, count) in state.items():
            self.add(split, name, total.to(device), count)
