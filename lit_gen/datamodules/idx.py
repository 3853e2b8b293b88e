"""MNIST and Fashion-MNIST from the standard IDX files, read by a small validating reader.

Own reader rather than torchvision's dataset classes: those only look in ``root/<Class>/raw`` and fail with a
generic message, while we also accept a flat folder, gzip or plain files, and Debian's
``dataset-fashion-mnist`` package, and report a corrupt or truncated file by name.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from lit_gen.datamodules.base import GenerativeDataModule, LevelTensorDataset, carve_train_val
from lit_gen.errors import DataNotFoundError, LitGenError

# IDX header: two zero bytes, a type code, the number of dimensions; then one big-endian uint32 per dim.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

IDX_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, plain or gzip-compressed, into an array of its stored shape.

    Compression is detected from the content (gzip magic bytes), not the name, so a mislabeled file still
    loads. Raises ``LitGenError`` naming the file when the header is not IDX or the payload size does not
    match it.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise DataNotFoundError(f"IDX file not found: {path}") from None
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError; EOFError = truncated gzip
        raise LitGenError(f"cannot read IDX file {path}: {err}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise LitGenError(
            f"{path} is not an IDX file (bad magic number {raw[:4].hex() or '<empty>'}); "
            "the file is corrupt or not what its name says - delete it and fetch it again"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise LitGenError(f"IDX file {path} is truncated inside its header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise LitGenError(
            f"IDX file {path} holds {len(raw) - header} data bytes but its header {shape} says {expected}; "
            "the file is truncated or corrupt - delete it and fetch it again"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


class _IDXDataModule(GenerativeDataModule):
    """Shared loader for the 28x28 grayscale 10-class IDX datasets (60k train, 10k official test)."""

    dataset_title: str  # for messages
    torchvision_class: str  # torchvision.datasets class used for download; also its raw-folder name
    system_dirs: tuple[str, ...] = ()  # OS package locations tried after ``root``

    def __init__(
        self,
        *,
        root: str = "data",
        download: bool = False,
        val_size: int | float = 5000,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            **kwargs,
            val_size=val_size,
        )
        self.root = str(root)
        self.download = download
        self.data_shape = (1, 28, 28)
        self.num_levels = 256
        self.num_classes = 10

    def search_dirs(self) -> list[Path]:
        """Folders tried in order: ``root``, torchvision's ``root/<Class>/raw``, then OS package folders."""
        root = Path(self.root).expanduser().absolute()
        return [root, root / self.torchvision_class / "raw", *(Path(d) for d in self.system_dirs)]

    def locate_files(self) -> dict[str, Path]:
        """The four IDX files, all from the first folder that holds all of them (each plain or ``.gz``)."""
        report = []
        for folder in self.search_dirs():
            found, missing = {}, []
            for key, stem in IDX_FILES.items():
                # Plain first: torchvision leaves both, and the plain one skips decompression.
                hit = next((folder / n for n in (stem, stem + ".gz") if (folder / n).is_file()), None)
                if hit is None:
                    missing.append(stem)
                else:
                    found[key] = hit
            if not missing:
                return found
            state = "missing " + ", ".join(missing) if folder.is_dir() else "no such folder"
            report.append(f"  {folder}: {state}")
        expected = ", ".join(f"{s}[.gz]" for s in IDX_FILES.values())
        raise DataNotFoundError(
            f"{self.dataset_title}: IDX files not found. Expected {expected} together in one of:\n"
            + "\n".join(report)
            + "\nSet `download: true` on the datamodule to fetch them with torchvision into "
            f"{self.search_dirs()[1]}, or copy the files into {self.search_dirs()[0]}."
        )

    def prepare_data(self) -> None:
        # Runs on one process per node before setup, so concurrent ranks never download the same files.
        if not self.download:
            return
        try:
            self.locate_files()
            return  # already present somewhere we look
        except DataNotFoundError:
            pass
        import torchvision.datasets

        cls = getattr(torchvision.datasets, self.torchvision_class)
        try:
            cls(self.root, train=False, download=True)  # download() fetches all four files
        except Exception as err:  # network and checksum failures arrive as RuntimeError/URLError/OSError
            raise DataNotFoundError(
                f"{self.dataset_title}: download into {self.search_dirs()[1]} failed: {err}\n"
                f"Copy {', '.join(IDX_FILES.values())} (plain or .gz) into {self.search_dirs()[0]} instead."
            ) from err

    def _load_pair(self, images_path: Path, labels_path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
            raise LitGenError(
                f"{images_path}: expected uint8 images of shape (N, 28, 28), "
                f"got {images.dtype} {images.shape}"
            )
        if labels.dtype != np.uint8 or labels.ndim != 1 or len(labels) != len(images):
            raise LitGenError(
                f"{labels_path}: expected {len(images)} uint8 labels to match {images_path.name}, "
                f"got {labels.dtype} {labels.shape}"
            )
        if len(labels) and int(labels.max()) >= self.num_classes:
            raise LitGenError(f"{labels_path}: label {int(labels.max())} outside 0..{self.num_classes - 1}")
        return torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels).to(torch.int64)

    def _build_splits(self) -> dict[str, Dataset]:
        files = self.locate_files()
        train = LevelTensorDataset(*self._load_pair(files["train_images"], files["train_labels"]), 256)
        test = LevelTensorDataset(*self._load_pair(files["test_images"], files["test_labels"]), 256)
        train_split, val_split = carve_train_val(train, train, len(train), self.val_size)
        return {"train": train_split, "val": val_split, "test": test}


class MNISTDataModule(_IDXDataModule):
    """MNIST handwritten digits: (1, 28, 28), 256 levels, 10 classes; 55k/5k/10k train/val/test by default.

    Files are looked up in ``root`` and ``root/MNIST/raw``; ``download=True`` fetches them with torchvision.
    """

    dataset_title = "MNIST"
    torchvision_class = "MNIST"
    name = "mnist"


class FashionMNISTDataModule(_IDXDataModule):
    """Fashion-MNIST clothing images: (1, 28, 28), 256 levels, 10 classes; 55k/5k/10k by default.

    Files are looked up in ``root``, ``root/FashionMNIST/raw``, then Debian's ``dataset-fashion-mnist``
    package folder ``/usr/share/datasets/fashion-mnist``; ``download=True`` fetches them with torchvision.
    """

    dataset_title = "Fashion-MNIST"
    torchvision_class = "FashionMNIST"
    name = "fashion_mnist"
    system_dirs = ("/usr/share/datasets/fashion-mnist",)

