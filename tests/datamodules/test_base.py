"""Shared dataset pieces of the datamodules."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Subset

from lit_gen.datamodules.base import LevelTensorDataset, random_hflip


class ItemByItem(LevelTensorDataset):
    __getitems__ = None  # the DataLoader falls back to one __getitem__ call per example


def test_batched_fetch_gives_the_items_one_by_one_fetch_gives():
    levels = torch.randint(0, 17, (50, 1, 8, 8), dtype=torch.uint8)
    labels = torch.randint(0, 10, (50,))
    indices = list(range(3, 45))
    for transform in (None, random_hflip):
        loaders = [DataLoader(Subset(cls(levels, labels, 17, transform), indices), batch_size=8, shuffle=True,
                              generator=torch.Generator().manual_seed(0)) for cls in (LevelTensorDataset, ItemByItem)]
        torch.manual_seed(1)  # the flips draw from the global stream, in the same item order either way
        batched = list(loaders[0])
        torch.manual_seed(1)
        one_by_one = list(loaders[1])
        assert len(batched) == len(one_by_one) == 6
        for (x, y), (x1, y1) in zip(batched, one_by_one):
            assert x.dtype == torch.float32 and y.dtype == torch.int64
            assert torch.equal(x, x1) and torch.equal(y, y1)
