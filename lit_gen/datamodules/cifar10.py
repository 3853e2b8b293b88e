"""CIFAR-10 from the official python pickle batches (``root/cifar-10-batches-py``)."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lit_gen.datamodules.base import GenerativeDataModule, LevelTensorDataset, carve_train_val, random_hflip
from lit_gen.errors import DataNotFoundError, LitGenError

BATCH_FOLDER = "cifar-10-batches-py"
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only what a CIFAR batch holds (dicts, lists, bytes, numpy arrays).

    Plain ``pickle.load`` runs any callable a file names; a batch file dropped into a data folder should not
    be able to execute code, so every other global is refused.
    """

    _ALLOWED = {
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.numeric", "_frombuffer"),  # protocol 5 arrays
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # protocol <= 2 bytes
    }

    def find_class(self, module: str, name: str):
        # Files pickled by numpy < 2 (the official ones) name ``numpy.core``; numpy >= 2 has ``numpy._core``.
        canonical = "numpy._core." + module[11:] if module.startswith("numpy.core.") else module
        if (canonical, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        try:
            return super().find_class(canonical, name)
        except ModuleNotFoundError:  # numpy < 2 has no ``numpy._core``
            return super().find_class(canonical.replace("numpy._core.", "numpy.core.", 1), name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One batch file → (uint8 images (N, 3, 32, 32), int64 labels (N,)).

    Each row of ``data`` is 3072 bytes: the 1024 red values, then green, then blue, each plane row-major, so
    a plain reshape to (N, 3, 32, 32) gives channels-first RGB.
    """
    try:
        with open(path, "rb") as f:
            # latin1 decodes the official (Python 2) pickles' str keys and numpy payloads losslessly.
            batch = _BatchUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise DataNotFoundError(f"CIFAR-10 batch file not found: {path}") from None
    except Exception as err:  # any unpickling failure means a corrupt or foreign file
        raise LitGenError(f"cannot read CIFAR-10 batch {path}: {err}") from None
    if not isinstance(batch, dict):
        raise LitGenError(f"CIFAR-10 batch {path} is not a dict (got {type(batch).__name__})")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise LitGenError(f"CIFAR-10 batch {path} lacks 'data' or 'labels' (keys: {sorted(map(str, batch))})")
    data, labels = np.asarray(batch["data"]), np.asarray(batch["labels"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise LitGenError(
            f"CIFAR-10 batch {path}: expected uint8 data of shape (N, 3072), got {data.dtype} {data.shape}"
        )
    if labels.ndim != 1 or len(labels) != len(data):
        raise LitGenError(f"CIFAR-10 batch {path}: {len(data)} images but labels of shape {labels.shape}")
    if len(labels) and (labels.min() < 0 or labels.max() > 9):
        raise LitGenError(f"CIFAR-10 batch {path}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


class CIFAR10DataModule(GenerativeDataModule):
    """CIFAR-10: (3, 32, 32) RGB, 256 levels, 10 classes; 45k/5k/10k train/val/test by default.

    ``random_flip`` applies a random horizontal flip to training items only; validation and test items are
    never augmented, so their metrics are comparable across runs.
    """

    def __init__(
        self,
        *,
        root: str = "data",
        download: bool = False,
        random_flip: bool = False,
        val_size: int | float = 5000,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            **kwargs,
            val_size=val_size,
        )
        self.root = str(root)
        self.download = download
        self.random_flip = random_flip
        self.name = "cifar10"
        self.data_shape = (3, 32, 32)
        self.num_levels = 256
        self.num_classes = 10

    @property
    def batch_dir(self) -> Path:
        return Path(self.root).expanduser().absolute() / BATCH_FOLDER

    def _missing(self) -> list[str]:
        return [n for n in (*TRAIN_BATCHES, TEST_BATCH) if not (self.batch_dir / n).is_file()]

    def _not_found(self, missing: list[str]) -> DataNotFoundError:
        return DataNotFoundError(
            f"CIFAR-10: batch files not found in {self.batch_dir} (missing: {', '.join(missing)}). "
            f"Expected the official python version ({', '.join(TRAIN_BATCHES)}, {TEST_BATCH}). "
            f"Set `download: true` on the datamodule to fetch it with torchvision into {self.root}, "
            "or extract cifar-10-python.tar.gz there."
        )

    def prepare_data(self) -> None:
        # One process per node downloads before setup; other ranks only read.
        if not self.download or not self._missing():
            return
        import torchvision.datasets

        try:
            torchvision.datasets.CIFAR10(self.root, train=False, download=True)
        except Exception as err:  # network/checksum failures: RuntimeError, URLError, OSError
            raise DataNotFoundError(
                f"CIFAR-10: download into {self.batch_dir} failed: {err}\n"
                f"Extract cifar-10-python.tar.gz into {self.root} instead."
            ) from err

    def _build_splits(self) -> dict[str, Dataset]:
        missing = self._missing()
        if missing:
            raise self._not_found(missing)
        parts = [read_cifar_batch(self.batch_dir / n) for n in TRAIN_BATCHES]
        train_x = torch.from_numpy(np.concatenate([p[0] for p in parts]))
        train_y = torch.from_numpy(np.concatenate([p[1] for p in parts]))
        test_x, test_y = read_cifar_batch(self.batch_dir / TEST_BATCH)
        # Two views of the same tensors: only the training view flips.
        train_view = LevelTensorDataset(
            train_x, train_y, self.num_levels, transform=random_hflip if self.random_flip else None
        )
        plain_view = LevelTensorDataset(train_x, train_y, self.num_levels)
        train, val = carve_train_val(train_view, plain_view, len(train_x), self.val_size)
        test = LevelTensorDataset(torch.from_numpy(test_x), torch.from_numpy(test_y), self.num_levels)
        return {"train": train, "val": val, "test": test}
