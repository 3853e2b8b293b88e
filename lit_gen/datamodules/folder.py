"""Any folder of images: class subfolders (labeled) or a flat folder (unlabeled)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from lit_gen.datamodules.base import (
    GenerativeDataModule,
    check_split_size,
    split_train_val_test,
)
from lit_gen.errors import DataNotFoundError, LitGenError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def load_image(path: Path, image_size: int, grayscale: bool) -> torch.Tensor:
    """Decode, resize the shorter side to ``image_size`` (bicubic, antialiased), center-crop to a square.

    Returns uint8 (C, image_size, image_size); C = 1 for grayscale, else 3 (alpha is dropped, palettes
    expanded). Raises ``LitGenError`` naming the file when it cannot be decoded.
    """
    try:
        with Image.open(path) as img:
            img = ImageOps.exif_transpose(img)  # phone photos store rotation in EXIF, not in pixels
            img = img.convert("L" if grayscale else "RGB")
    except Exception as err:  # PIL raises UnidentifiedImageError, OSError, ValueError, SyntaxError...
        raise LitGenError(f"cannot decode image {path}: {err}") from None
    w, h = img.size
    if min(w, h) != image_size:
        scale = image_size / min(w, h)
        new = (max(image_size, round(w * scale)), max(image_size, round(h * scale)))
        img = img.resize(new, Image.Resampling.BICUBIC)
        w, h = new
    left, top = (w - image_size) // 2, (h - image_size) // 2
    img = img.crop((left, top, left + image_size, top + image_size))
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy())


class ImageFileDataset(Dataset):
    """Reads images on access, so a large folder costs no memory up front."""

    def __init__(self, paths: list[Path], labels: list[int], image_size: int, grayscale: bool) -> None:
        self.paths = paths
        self.labels = labels
        self.image_size = image_size
        self.grayscale = grayscale

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        levels = load_image(self.paths[index], self.image_size, self.grayscale)
        # Divide in float32 like ToTensor: values are exactly k / 255.
        return levels.to(torch.float32) / 255.0, torch.tensor(self.labels[index], dtype=torch.int64)


class ImageFolderDataModule(GenerativeDataModule):
    """Images under ``root``, either in class subfolders or directly in ``root``.

    - Class subfolders: classes are the sorted names of the (non-hidden) subfolders; each is searched
      recursively. A subfolder without any image is an error (its class index would be meaningless).
    - Flat folder: every image directly in ``root``; unlabeled (``num_classes`` None, ``y`` = 0).
    - A root holding both images and subfolders is ambiguous and rejected.

    Images are resized (shorter side → ``image_size``, bicubic) and center-cropped to squares; ``grayscale``
    gives one channel, otherwise RGB. A fixed permutation of the sorted file list (independent of the
    run's seed) gives ``test_size`` to test, then ``val_size`` of the rest to validation.

    ``name`` is ``folder-<hash>`` of the absolute root, ``image_size`` and ``grayscale``, so metric caches
    of differently preprocessed versions of the same folder never mix.
    """

    def __init__(
        self,
        *,
        root: str,
        image_size: int = 64,
        grayscale: bool = False,
        val_size: int | float = 0.1,
        test_size: int | float = 0.1,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            **kwargs,
            val_size=val_size,
        )
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise LitGenError(f"image_size must be a positive integer, got {image_size!r}")
        check_split_size("test_size", test_size)
        self.root = Path(root).expanduser().absolute()
        self.image_size = image_size
        self.grayscale = grayscale
        self.test_size = test_size
        # Scanning only the top level here: enough to know the classes, cheap even for huge folders.
        self.classes = self._scan_top_level()
        key = f"{self.root}|{image_size}|{bool(grayscale)}"
        self.name = "folder-" + hashlib.sha1(key.encode()).hexdigest()[:10]
        self.data_shape = (1 if grayscale else 3, image_size, image_size)
        self.num_levels = 256
        self.num_classes = len(self.classes) if self.classes else None

    def _scan_top_level(self) -> list[str]:
        """Class names (sorted subfolders), or [] for a flat folder."""
        if not self.root.is_dir():
            raise DataNotFoundError(
                f"image folder {self.root} does not exist (or is not a folder). Point `root` at a folder of "
                f"images ({', '.join(IMAGE_EXTENSIONS)}), flat or in one subfolder per class."
            )
        entries = [e for e in self.root.iterdir() if not e.name.startswith(".")]
        subdirs = sorted(e.name for e in entries if e.is_dir())
        has_images = any(e.is_file() and is_image_file(e) for e in entries)
        if has_images and subdirs:
            raise LitGenError(
                f"image folder {self.root} holds both images and subfolders ({', '.join(subdirs[:5])}); "
                "put all images directly in it (unlabeled) or all in one subfolder per class (labeled)"
            )
        if not has_images and not subdirs:
            raise DataNotFoundError(
                f"image folder {self.root} contains no images (looked for {', '.join(IMAGE_EXTENSIONS)}) "
                "and no class subfolders"
            )
        return subdirs

    def _list_files(self) -> tuple[list[Path], list[int]]:
        if not self.classes:
            paths = sorted(p for p in self.root.iterdir() if p.is_file() and is_image_file(p))
            return paths, [0] * len(paths)
        paths, labels = [], []
        for index, cls in enumerate(self.classes):
            found = []
            for dirpath, dirnames, filenames in os.walk(self.root / cls, followlinks=True):
                dirnames[:] = [d for d in dirnames if not d.startswith(".")]
                found += [Path(dirpath) / f for f in filenames if is_image_file(Path(f))]
            if not found:
                raise DataNotFoundError(
                    f"class folder {self.root / cls} contains no images "
                    f"(looked for {', '.join(IMAGE_EXTENSIONS)}); "
                    "remove it or add images, since every subfolder of root is a class"
                )
            found.sort()
            paths += found
            labels += [index] * len(found)
        return paths, labels

    def _build_splits(self) -> dict[str, Dataset]:
        paths, labels = self._list_files()
        full = ImageFileDataset(paths, labels, self.image_size, self.grayscale)
        return split_train_val_test(full, self.test_size, self.val_size)
