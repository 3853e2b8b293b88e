"""Helpers (imported by the tests) that write small files in the official dataset formats.

Tests never need the real downloads: they write a few known samples and check they load exactly.
"""

from __future__ import annotations

import gzip
import pickle
import struct
from pathlib import Path

import numpy as np

IDX_NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode a uint8 array as IDX: magic 0x0000080<ndim>, big-endian uint32 dims, raw bytes."""
    assert array.dtype == np.uint8
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool = False) -> Path:
    data = idx_bytes(array)
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def make_idx_set(folder: Path, n_train: int = 20, n_test: int = 7, seed: int = 0) -> dict[str, np.ndarray]:
    """Write the four MNIST-style files (images gz, labels plain: both forms must load); return the arrays."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    arrays["train-images-idx3-ubyte"][0, 0, :] = np.arange(28)  # make level 0 and small levels certain
    arrays["train-images-idx3-ubyte"][0, 1, :] = 255
    for name, arr in arrays.items():
        write_idx(folder / name, arr, gz="images" in name)
    return arrays


def write_cifar_batch(
    path: Path, data: np.ndarray, labels: list[int], protocol: int = 4, str_keys: bool = False
) -> None:
    """A batch in the official layout: dict with data (N, 3072) uint8 rows = R plane, G plane, B plane."""
    keys = ("data", "labels", "batch_label", "filenames")
    if not str_keys:
        keys = tuple(k.encode() for k in keys)
    batch = dict(zip(keys, (data, list(labels), "test batch", [f"img_{i}.png" for i in range(len(labels))])))
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=protocol)

