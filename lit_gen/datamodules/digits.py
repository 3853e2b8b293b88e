"""scikit-learn's bundled 8x8 digits: the embedded default dataset (no download, loads in milliseconds)."""

from __future__ import annotations

from typing import Any

import torch
from torch.utils.data import Dataset

from lit_gen.datamodules.base import (
    GenerativeDataModule,
    LevelTensorDataset,
    check_split_size,
    split_train_val_test,
)
from lit_gen.errors import LitGenError


class DigitsDataModule(GenerativeDataModule):
    """1797 grayscale 8x8 digits with 17 intensity levels (0..16), 10 classes.

    There is no official test set, so a fixed permutation (independent of the run's seed) gives
    ``test_size`` items to test, then ``val_size`` to validation, and the rest to training
    (defaults 300 / 200 / 1297).
    """

    def __init__(
        self,
        *,
        val_size: int | float = 200,
        test_size: int | float = 300,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            **kwargs,
            val_size=val_size,
        )
        check_split_size("test_size", test_size)
        self.test_size = test_size
        self.name = "digits"
        self.data_shape = (1, 8, 8)
        self.num_levels = 17
        self.num_classes = 10

    def _build_splits(self) -> dict[str, Dataset]:
        from sklearn.datasets import load_digits  # deferred: importing sklearn costs ~1 s

        bunch = load_digits()
        images = torch.from_numpy(bunch.images.round()).to(torch.uint8).unsqueeze(1)  # (N, 1, 8, 8)
        if int(images.max()) > 16:
            raise LitGenError(f"sklearn digits: expected values in 0..16, found max {int(images.max())}")
        labels = torch.from_numpy(bunch.target).to(torch.int64)
        full = LevelTensorDataset(images, labels, num_levels=self.num_levels)
        return split_train_val_test(full, self.test_size, self.val_size)
