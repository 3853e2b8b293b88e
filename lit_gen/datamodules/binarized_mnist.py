"""Binarized MNIST, the likelihood benchmark the VAE, IWAE, MADE and PixelCNN papers report in nats.

Two protocols, stated in the datamodule's ``name`` (and so in ``metrics.json``):

- ``dynamic`` (Burda et al.): a training image is drawn as Bernoulli(its intensity) every time it is read,
  so two epochs see different binary images of the same digit; the validation (carved from the training
  set) and test images are binarized once with a fixed seed, the same in every run. Reads the standard
  MNIST IDX files (:class:`~lit_gen.datamodules.idx.MNISTDataModule`); 10 classes.
- ``static`` (Larochelle & Murray): the fixed binary train / valid / test files
  ``binarized_mnist_{train,valid,test}.amat`` (50k / 10k / 10k, one image of 784 0/1 values per line);
  unlabeled.

K = 2 levels: every family's likelihood is then of the binary image itself, in nats per image.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from lit_gen.datamodules.base import LevelTensorDataset, carve_train_val
from lit_gen.datamodules.idx import MNISTDataModule
from lit_gen.errors import DataNotFoundError, LitGenError

#: The seed of the one-time binarization of the validation and test images (dynamic protocol): fixed, never
#: the run's seed, so every run and every family is scored on the same binary images.
BINARIZE_SEED = 20170406
AMAT_FILES = {"train": "binarized_mnist_train.amat", "val": "binarized_mnist_valid.amat",
              "test": "binarized_mnist_test.amat"}
AMAT_URL = "http://www.cs.toronto.edu/~larocheh/public/datasets/binarized_mnist/"


def binarize_once(levels: torch.Tensor, seed: int = BINARIZE_SEED) -> torch.Tensor:
    """uint8 intensities -> 0/1 uint8 levels, Bernoulli(intensity / 255), one fixed draw for the whole set."""
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(levels.shape, generator=generator) < levels.to(torch.float32) / 255.0).to(torch.uint8)


class DynamicBinarization(Dataset):
    """Items ``(x, y)`` with x a fresh Bernoulli(intensity) binary image at every read (the global torch
    stream: a resumed run restores it, so it draws what the uninterrupted run would have)."""

    def __init__(self, levels: torch.Tensor, labels: torch.Tensor) -> None:
        self.levels, self.labels = levels, labels.to(torch.int64)

    def __len__(self) -> int:
        return self.levels.shape[0]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        intensity = self.levels[index].to(torch.float32) / 255.0
        return (torch.rand(intensity.shape) < intensity).to(torch.float32), self.labels[index]


def read_amat(path: Path) -> torch.Tensor:
    """A binarized-MNIST ``.amat`` file (one image per line, 784 values 0 or 1 separated by spaces) ->
    uint8 (N, 1, 28, 28); a clear error naming the file and line when it is not that."""
    try:
        raw = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    except FileNotFoundError:
        raise DataNotFoundError(f"binarized MNIST file not found: {path}") from None
    digit = (raw == ord("0")) | (raw == ord("1"))
    if not (digit | np.isin(raw, np.frombuffer(b" \t\r\n", dtype=np.uint8))).all():
        raise LitGenError(f"{path}: characters other than 0, 1 and spaces (not a binarized MNIST file)")
    ends = np.flatnonzero(raw == ord("\n"))
    if raw.size and raw[-1] != ord("\n"):
        ends = np.append(ends, raw.size)
    digits_before = np.concatenate([[0], np.cumsum(digit)])  # digits_before[i]: digits in raw[:i]
    counts = np.diff(np.concatenate([[0], digits_before[ends]])).astype(np.int64)
    counts = counts[counts > 0]  # blank lines
    if not counts.size or (counts != 784).any():
        bad = int(np.flatnonzero(counts != 784)[0]) + 1 if counts.size else 1
        raise LitGenError(f"{path}: image {bad} does not hold 784 values (a corrupt or foreign file)")
    return torch.from_numpy((raw[digit] - ord("0")).astype(np.uint8)).view(-1, 1, 28, 28)


class BinarizedMNISTDataModule(MNISTDataModule):
    """Binarized MNIST: (1, 28, 28), K = 2 levels; ``protocol`` ``dynamic`` (default) or ``static``.

    Args:
        protocol: ``dynamic`` (MNIST's IDX files under ``root``, 55k / 5k / 10k with ``val_size``) or
            ``static`` (the three ``.amat`` files under ``root`` or ``root/binarized_mnist``, their own
            50k / 10k / 10k split; ``val_size`` does not apply).
        download: fetch the files when missing (torchvision for the IDX files; the ``.amat`` files from
            their authors' site).
    """

    dataset_title = "binarized MNIST"

    def __init__(self, *, protocol: Literal["dynamic", "static"] = "dynamic", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if protocol not in ("dynamic", "static"):
            raise LitGenError(f"protocol must be 'dynamic' or 'static', got {protocol!r}")
        self.protocol = protocol
        self.name = f"binarized_mnist-{protocol}"
        self.num_levels = 2
        self.num_classes = 10 if protocol == "dynamic" else None

    # -- static files -------------------------------------------------------------------------------------
    def amat_dirs(self) -> list[Path]:
        root = Path(self.root).expanduser().absolute()
        return [root, root / "binarized_mnist"]

    def locate_amat(self) -> dict[str, Path]:
        for folder in self.amat_dirs():
            found = {split: folder / name for split, name in AMAT_FILES.items()}
            if all(path.is_file() for path in found.values()):
                return found
        raise DataNotFoundError(
            f"binarized MNIST (static): {', '.join(AMAT_FILES.values())} not found together in "
            f"{' or '.join(str(d) for d in self.amat_dirs())}; set `download: true` to fetch them from "
            f"{AMAT_URL}, or copy them there."
        )

    def prepare_data(self) -> None:
        if self.protocol == "dynamic":
            return super().prepare_data()
        if not self.download:
            return
        try:
            self.locate_amat()
            return
        except DataNotFoundError:
            pass
        from torchvision.datasets.utils import download_url

        target = self.amat_dirs()[1]
        try:
            for name in AMAT_FILES.values():
                download_url(AMAT_URL + name, str(target), name)
        except Exception as err:  # network failures arrive as URLError / OSError / RuntimeError
            raise DataNotFoundError(f"binarized MNIST (static): download into {target} failed: {err}") from err

    # -- splits -------------------------------------------------------------------------------------------
    def _build_splits(self) -> dict[str, Dataset]:
        if self.protocol == "static":
            files = self.locate_amat()
            return {split: LevelTensorDataset(images, torch.zeros(len(images), dtype=torch.int64), 2)
                    for split, images in ((s, read_amat(files[s])) for s in AMAT_FILES)}
        files = self.locate_files()
        train_levels, train_labels = self._load_pair(files["train_images"], files["train_labels"])
        test_levels, test_labels = self._load_pair(files["test_images"], files["test_labels"])
        dynamic = DynamicBinarization(train_levels, train_labels)
        fixed_train = LevelTensorDataset(binarize_once(train_levels), train_labels, 2)  # its val part only
        train, val = carve_train_val(dynamic, fixed_train, len(dynamic), self.val_size)
        # Another seed for the test images than for the training ones: the two draws stay independent.
        test = LevelTensorDataset(binarize_once(test_levels, BINARIZE_SEED + 1), test_labels, 2)
        return {"train": train, "val": val, "test": test}
