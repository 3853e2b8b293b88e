"""Any folder of images: class subfolders (labeled) or a flat folder (unlabeled).

By default the images are decoded once into a memory-mapped uint8 array under lit-gen's cache directory,
so epochs read pixels instead of decoding JPEGs; ``cache=False`` decodes every image on every access.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import closing, contextmanager, suppress
from itertools import repeat
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import PIL
import torch
from lightning.pytorch.utilities.rank_zero import rank_zero_info, rank_zero_warn
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from lit_gen.core.runtime import cache_dir as lit_gen_cache_dir
from lit_gen.datamodules.base import (
    GenerativeDataModule,
    check_split_size,
    split_train_val_test,
)
from lit_gen.errors import DataNotFoundError, LitGenError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")

# Part of every cache key: bump it whenever decode_levels returns other pixels for the same file.
PREPROCESS_VERSION = 1
CACHE_SUBDIR = "image_folders"
DECODE_CHUNK = 64  # images per task of the decode pool: large enough that pickling them costs little
PROGRESS_EVERY = 5000  # images between two progress lines of a build


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def decode_levels(path: Path, image_size: int, grayscale: bool) -> np.ndarray:
    """Decode, resize the shorter side to ``image_size`` (bicubic, antialiased), center-crop to a square.

    Returns uint8 (C, image_size, image_size); C = 1 for grayscale, else 3 (alpha is dropped, palettes
    expanded). Raises ``LitGenError`` naming the file when it cannot be decoded. Any change to what this
    returns for the same file must bump ``PREPROCESS_VERSION``, or old caches would still be read.
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
    return arr.copy()


def load_image(path: Path, image_size: int, grayscale: bool) -> torch.Tensor:
    """``decode_levels`` as a uint8 tensor (C, image_size, image_size)."""
    return torch.from_numpy(decode_levels(path, image_size, grayscale))


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


class CachedImageDataset(Dataset):
    """The items of ``ImageFileDataset``, bit for bit, read from one decoded uint8 array (N, C, S, S).

    The array is mapped at once, so this process (and workers it forks) keep reading it even if a rebuild
    for a changed folder deletes the file. A memmap would pickle as a full copy of the data, so workers
    started by spawn get the file name instead and map it on first access.
    """

    def __init__(
        self, images: Path, paths: list[Path], labels: list[int], undecodable: dict[int, str]
    ) -> None:
        self.images = images
        self.paths = paths
        self.labels = labels
        self.undecodable = undecodable  # index -> the error that reading it raises, as without the cache
        self._label_tensor = torch.tensor(labels, dtype=torch.int64)
        self._levels: np.ndarray | None = np.load(images, mmap_mode="r")

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_levels": None}

    @property
    def levels(self) -> np.ndarray:
        if self._levels is None:
            self._levels = np.load(self.images, mmap_mode="r")
        return self._levels

    def __len__(self) -> int:
        return len(self.paths)

    def _refuse_undecodable(self, indices: list[int]) -> None:
        if self.undecodable:
            bad = next((i for i in indices if i in self.undecodable), None)
            if bad is not None:
                raise LitGenError(self.undecodable[bad])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = range(len(self))[index]  # negative indices and IndexError as for a list
        self._refuse_undecodable([index])
        levels = torch.from_numpy(np.array(self.levels[index]))
        # The same float32 division as ImageFileDataset: exactly k / 255.
        return levels.to(torch.float32) / 255.0, torch.tensor(self.labels[index], dtype=torch.int64)

    def __getitems__(self, indices: list[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A whole batch in one read of the array (the DataLoader calls this when it exists)."""
        self._refuse_undecodable(indices)
        index = np.asarray(indices, dtype=np.int64)
        levels = torch.from_numpy(self.levels[index])  # fancy indexing copies out of the memmap
        xs = (levels.to(torch.float32) / 255.0).unbind(0)
        return list(zip(xs, self._label_tensor[torch.from_numpy(index)].unbind(0)))


def folder_cache_key(
    root: Path, image_size: int, grayscale: bool, paths: list[Path], labels: list[int]
) -> str:
    """A digest of everything that decides the cached pixels: the preprocessing and its settings, Pillow's
    version (its decoders and resampling), and every file with its label, size and mtime."""
    digest = hashlib.sha256()
    settings = [PREPROCESS_VERSION, PIL.__version__, str(root), image_size, bool(grayscale)]
    digest.update(json.dumps(settings).encode())
    for path, label in zip(paths, labels):
        try:
            stat = path.stat()
        except OSError as err:
            raise DataNotFoundError(f"cannot read image {path}: {err.strerror}") from None
        line = f"\n{path.relative_to(root)}\0{label}\0{stat.st_size}\0{stat.st_mtime_ns}"
        digest.update(line.encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def _decode_chunk(paths: list[str], image_size: int, grayscale: bool) -> tuple[np.ndarray, dict[int, str]]:
    """Levels of a run of files, and the errors of those that cannot be decoded (their rows stay 0)."""
    levels = np.zeros((len(paths), 1 if grayscale else 3, image_size, image_size), np.uint8)
    failures = {}
    for i, path in enumerate(paths):
        try:
            levels[i] = decode_levels(Path(path), image_size, grayscale)
        except LitGenError as err:
            failures[i] = str(err)
    return levels, failures


def _decoded_chunks(
    paths: list[Path], image_size: int, grayscale: bool, processes: int
) -> Iterator[tuple[int, np.ndarray, dict[int, str]]]:
    """``(first index, levels, failures)`` of consecutive runs of ``paths``, in order."""
    starts = range(0, len(paths), DECODE_CHUNK)
    chunks = [[str(p) for p in paths[start : start + DECODE_CHUNK]] for start in starts]
    if processes == 1:
        for start, chunk in zip(starts, chunks):
            yield start, *_decode_chunk(chunk, image_size, grayscale)
        return
    pool = ProcessPoolExecutor(processes)
    try:
        results = pool.map(_decode_chunk, chunks, repeat(image_size), repeat(grayscale))
        for start, (levels, failures) in zip(starts, results):
            yield start, levels, failures
    finally:
        # On an error or Ctrl-C, drop the queued chunks instead of decoding the rest of the folder.
        pool.shutdown(wait=True, cancel_futures=True)


@contextmanager
def _atomic_file(dst: Path) -> Iterator[BinaryIO]:
    """A file that appears at ``dst`` (os.replace) only if the block completes; the temp file is removed
    otherwise. Its name carries host and pid, so a later build can tell a killed build's leftovers."""
    prefix = f".{dst.name}~{socket.gethostname()}~{os.getpid()}~"
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp's 0600 would hide a shared cache_dir from others
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)  # the only way to read it is to set it
    os.umask(mask)
    return mask


def _remove_abandoned_temps(directory: Path, stem: str) -> None:
    """Delete temp files of killed builds on this host (as large as the cache, and never read)."""
    host = socket.gethostname()
    for tmp in directory.glob(f".{stem}-*.tmp"):
        parts = tmp.name[: -len(".tmp")].split("~")
        if len(parts) == 4 and parts[1] == host and parts[2].isdigit() and not _process_alive(int(parts[2])):
            with suppress(FileNotFoundError):
                tmp.unlink()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _check_free_space(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    if free < needed:
        raise LitGenError(
            f"the image cache needs {needed / 2**30:.2f} GiB in {directory} but {free / 2**30:.2f} GiB are "
            "free; set data cache_dir to a larger disk, or cache: false to decode images on every access"
        )


def write_folder_cache(
    images: Path, index: Path, record: dict[str, Any], paths: list[Path], workers: int
) -> dict[str, Any]:
    """Decode ``paths`` once into ``images`` (an .npy of uint8 (N, C, S, S)), then write ``index``.

    Both are written through temp files, the index last: a cache counts only once its index exists and
    names its key, so a build stopped by an exception, Ctrl-C or a killed job is never read later.
    Rows are written in order with plain writes (a full disk is an OSError, where a memmap would crash).
    Returns ``record`` with ``undecodable`` filled in.
    """
    shape = tuple(record["shape"])
    header = {"descr": np.dtype(np.uint8).str, "fortran_order": False, "shape": shape}
    _check_free_space(images.parent, int(np.prod(shape)))
    processes = max(1, min(workers, -(-shape[0] // DECODE_CHUNK)))  # a pool only for two chunks or more
    rank_zero_info(f"lit-gen: image cache: decoding {shape[0]} images of {record['root']} once into {images} "
                   f"(decode processes: {processes})")
    undecodable: dict[int, str] = {}
    began, reported = time.perf_counter(), 0
    decoded = _decoded_chunks(paths, shape[2], shape[1] == 1, processes)
    # closing(): an error here stops the decode pool at once, not when the generator is collected.
    with _atomic_file(images) as f, closing(decoded) as chunks:
        np.lib.format.write_array_header_1_0(f, header)
        for start, levels, failures in chunks:
            f.write(levels.data)
            undecodable.update({start + i: message for i, message in failures.items()})
            done = start + len(levels)
            if done - reported >= PROGRESS_EVERY or done == shape[0]:
                rate = done / max(time.perf_counter() - began, 1e-9)
                rank_zero_info(f"lit-gen: image cache: {done}/{shape[0]} decoded ({rate:.0f} images/s)")
                reported = done
    record = {**record, "undecodable": {str(i): message for i, message in sorted(undecodable.items())}}
    with _atomic_file(index) as f:
        f.write(json.dumps(record).encode("utf-8", "surrogateescape"))
    return record


def read_folder_cache(images: Path, index: Path, key: str, shape: tuple[int, ...]) -> dict[str, Any] | None:
    """The index of a complete cache with this key and shape; None when there is none to trust."""
    try:
        record = json.loads(index.read_bytes().decode("utf-8", "surrogateescape"))
        levels = np.load(images, mmap_mode="r")
    except (OSError, ValueError):
        return None
    if record.get("key") != key or levels.shape != shape or levels.dtype != np.uint8:
        return None
    return record


def _distributed_rank() -> int | None:
    """This process's rank in a run of several processes; None in a single-process run."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank()
    return None


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))  # the cores this job may use, not the machine's
    except AttributeError:
        return os.cpu_count() or 1


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

    ``cache`` (default on): the images are decoded once, by ``decode_workers`` processes (default: every
    core this job may use), into ``<cache_dir>/<name>-<key>.npy`` (uint8 (N, C, S, S), memory-mapped) and
    a ``.json`` index; ``cache_dir`` defaults to ``image_folders/`` under lit-gen's cache
    (``$LIT_GEN_CACHE``). The key covers the preprocessing, Pillow's version, the settings and every
    file's path, label, size and mtime, so a changed, added or removed file builds a new cache (and the old
    one of this folder is deleted). Lightning builds it in ``prepare_data`` (one process per node); in a
    distributed run other processes only read it. Items are the uncached ones bit for bit.
    """

    def __init__(
        self,
        *,
        root: str,
        image_size: int = 64,
        grayscale: bool = False,
        val_size: int | float = 0.1,
        test_size: int | float = 0.1,
        cache: bool = True,
        cache_dir: str | None = None,
        decode_workers: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            **kwargs,
            val_size=val_size,
        )
        if isinstance(image_size, bool) or not isinstance(image_size, int) or image_size < 1:
            raise LitGenError(f"image_size must be a positive integer, got {image_size!r}")
        check_split_size("test_size", test_size)
        if not isinstance(cache, bool):
            raise LitGenError(f"cache must be true or false, got {cache!r}")
        if decode_workers is not None and (
            isinstance(decode_workers, bool) or not isinstance(decode_workers, int) or decode_workers < 1
        ):
            raise LitGenError(f"decode_workers must be a positive integer or null, got {decode_workers!r}")
        self.root = Path(root).expanduser().absolute()
        self.image_size = image_size
        self.grayscale = grayscale
        self.test_size = test_size
        self.cache = cache
        self.cache_dir = Path(cache_dir).expanduser().absolute() if cache_dir is not None else None
        self.decode_workers = decode_workers
        self._full: Dataset | None = None
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

    def prepare_data(self) -> None:
        # Lightning runs this on one process per node before setup: the one place a distributed run builds.
        if self.cache and self._full is None:
            self._full = self._cached_dataset(may_build=True)

    def _build_splits(self) -> dict[str, Dataset]:
        if self._full is None:
            if self.cache:
                self._full = self._cached_dataset(may_build=_distributed_rank() is None)
            else:
                self._full = ImageFileDataset(*self._list_files(), self.image_size, self.grayscale)
        return split_train_val_test(self._full, self.test_size, self.val_size)

    def _cache_files(self, key: str) -> tuple[Path, Path]:
        directory = self.cache_dir if self.cache_dir is not None else lit_gen_cache_dir() / CACHE_SUBDIR
        stem = f"{self.name}-{key[:20]}"
        return directory / f"{stem}.npy", directory / f"{stem}.json"

    def _cached_dataset(self, *, may_build: bool) -> CachedImageDataset:
        paths, labels = self._list_files()
        key = folder_cache_key(self.root, self.image_size, self.grayscale, paths, labels)
        images, index = self._cache_files(key)
        shape = (len(paths), *self.data_shape)
        record = read_folder_cache(images, index, key, shape)
        if record is None and not may_build:
            raise LitGenError(
                f"image cache {images} is missing on rank {_distributed_rank()}: in a distributed run only "
                "prepare_data builds it (Lightning calls it before setup); call prepare_data() first"
            )
        if record is None:
            record = self._build_cache(images, index, key, shape, paths, labels)
        undecodable = {int(i): message for i, message in record["undecodable"].items()}
        if undecodable:
            rank_zero_warn(f"{len(undecodable)} of {len(paths)} images under {self.root} cannot be decoded; "
                           f"reading them raises (first: {next(iter(undecodable.values()))})")
        return CachedImageDataset(images, paths, labels, undecodable)

    def _build_cache(
        self, images: Path, index: Path, key: str, shape: tuple[int, ...],
        paths: list[Path], labels: list[int],
    ) -> dict[str, Any]:
        record = {
            "key": key, "root": str(self.root), "image_size": self.image_size, "grayscale": self.grayscale,
            "preprocess_version": PREPROCESS_VERSION, "pillow": PIL.__version__, "shape": list(shape),
            "files": [str(p.relative_to(self.root)) for p in paths], "labels": labels,
        }
        directory = images.parent
        try:
            directory.mkdir(parents=True, exist_ok=True)
            _remove_abandoned_temps(directory, self.name)
            older = [p for p in directory.glob(f"{self.name}-*") if p not in (images, index)]
            if any(p.suffix == ".json" for p in older):
                rank_zero_info(f"lit-gen: image cache: {self.root} changed since it was cached; rebuilding")
            workers = self.decode_workers or default_workers()
            record = write_folder_cache(images, index, record, paths, workers)
            for stale in older:  # an older state of this folder, whose files are gone or changed
                with suppress(FileNotFoundError):
                    stale.unlink()
        except OSError as err:
            raise LitGenError(f"cannot write the image cache {images}: {err}; set data cache_dir to a "
                              "writable folder, or cache: false") from err
        return record
