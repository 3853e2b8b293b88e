"""Data loading: a digits training batch fetched in one indexing op vs one ``__getitem__`` call per example.

``LevelTensorDataset.__getitems__`` lets the DataLoader build a batch with one indexing op; without it the
loader calls ``__getitem__`` once per example. Both loaders read the digits training split in the same
order; the ratio is printed.

    python benchmarks/data_loading.py
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import time

import torch
from bench_common import machine_line
from torch.utils.data import DataLoader


def seconds_per_batch(dataset, batch_size: int, epochs: int) -> float:
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    start, batches = time.perf_counter(), 0
    for _ in range(epochs):
        batches += sum(1 for _ in loader)
    return (time.perf_counter() - start) / batches


def main() -> None:
    from lit_gen.datamodules import DigitsDataModule
    from lit_gen.datamodules.base import LevelTensorDataset

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    data = DigitsDataModule(batch_size=args.batch_size)
    data.setup("fit")
    batched = data.split_dataset("train")
    one_by_one = type(batched)(batched.dataset, batched.indices)
    one_by_one.__getitems__ = None  # the Subset then asks its dataset item by item
    assert isinstance(batched.dataset, LevelTensorDataset)
    print(machine_line(args.threads))
    fast = seconds_per_batch(batched, args.batch_size, args.epochs)
    slow = seconds_per_batch(one_by_one, args.batch_size, args.epochs)
    print(f"digits train split, batch {args.batch_size}, {args.epochs} epochs: one indexing op "
          f"{fast * 1000:.2f} ms per batch, item by item {slow * 1000:.2f} ms per batch ({slow / fast:.1f}x)")


if __name__ == "__main__":
    main()
