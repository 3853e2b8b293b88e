"""Reading an image folder: torchvision's ImageFolder vs lit-gen's ImageFolderDataModule, uncached and cached.

A temporary folder of ``--num`` JPEGs (``--size`` px squares from a seeded generator, in ``--classes`` class
subfolders; or ``--root``, an existing folder of class subfolders) is read epoch by epoch through a
shuffled DataLoader (batch ``--batch``, ``--loader-workers`` workers), each image resized (shorter side to
``--image-size``, bicubic, antialiased) and center-cropped:

- torchvision.datasets.ImageFolder with Resize + CenterCrop + ToTensor;
- lit-gen with ``cache: false``: decodes every image on every access, as torchvision does;
- lit-gen cached: the first epoch includes the one-time decode into the cache (``--decode-workers``
  processes, default every core), later epochs read the memory-mapped uint8 array.

The readers take turns epoch by epoch, so load changes on a shared machine hit each alike; the median of
``--epochs`` epochs is printed. The JPEGs were just written, so all readers find them in the page cache.
Before timing, a few items of torchvision and lit-gen are checked to be the same pixels and labels.

    python benchmarks/image_folder.py
    python benchmarks/image_folder.py --num 10000 --loader-workers 2
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import machine_line
from PIL import Image
from torch.utils.data import DataLoader


def write_jpegs(root: Path, num: int, size: int, classes: int, seed: int) -> None:
    """Smooth random images with some grain (a JPEG of pure noise decodes unusually slowly)."""
    rng = np.random.default_rng(seed)
    for i in range(num):
        coarse = Image.fromarray(rng.integers(0, 256, (max(size // 8, 2),) * 2 + (3,), dtype=np.uint8))
        smooth = np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
        pixels = np.clip(smooth + rng.normal(0, 6, smooth.shape), 0, 255).astype(np.uint8)
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / f"{i:07d}.jpg", quality=90)


def torchvision_dataset(root: Path, image_size: int):
    from torchvision import datasets, transforms

    transform = transforms.Compose([
        transforms.Resize(image_size, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
        transforms.CenterCrop(image_size),
        transforms.ToTensor(),
    ])
    return datasets.ImageFolder(str(root), transform=transform)


def lit_gen_datamodule(root: Path, image_size: int, **cache_options):
    from lit_gen.datamodules import ImageFolderDataModule

    return ImageFolderDataModule(root=str(root), image_size=image_size, val_size=0, test_size=0,
                                 **cache_options)


def epoch_seconds(dataset, batch: int, workers: int, epoch: int) -> float:
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                        generator=torch.Generator().manual_seed(epoch))
    start = time.perf_counter()
    seen = sum(len(y) for _, y in loader)
    assert seen == len(dataset)
    return time.perf_counter() - start


def check_same_items(reference, dataset) -> None:
    """torchvision and lit-gen list the same files in the same order and give the same pixels."""
    full = dataset.dataset  # the train split of val_size=0, test_size=0 is every image
    assert [Path(p) for p, _ in reference.samples] == full.paths, "the two list other files"
    for i in sorted({0, len(full) // 2, len(full) - 1}):
        (x, y), (ref_x, ref_y) = dataset[i], reference[i]
        assert torch.equal(x, ref_x) and int(y) == ref_y, f"item {i} differs from torchvision's"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=2000, help="JPEGs to write (ignored with --root)")
    parser.add_argument("--size", type=int, default=96, help="side of the written JPEGs")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--root", type=Path, help="read this folder of class subfolders instead")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--loader-workers", type=int, default=0)
    parser.add_argument("--decode-workers", type=int, default=None, help="default: every core")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads))

    with tempfile.TemporaryDirectory() as tmp:
        root = args.root
        if root is None:
            root = Path(tmp) / "images"
            start = time.perf_counter()
            write_jpegs(root, args.num, args.size, args.classes, seed=0)
            print(f"wrote {args.num} JPEGs of {args.size}x{args.size} in {time.perf_counter() - start:.1f} s")
        reference = torchvision_dataset(root, args.image_size)
        uncached = lit_gen_datamodule(root, args.image_size, cache=False).split_dataset("train")
        check_same_items(reference, uncached)
        num = len(reference)

        # The one-time decode, into a fresh cache, then the first epoch over it.
        start = time.perf_counter()
        data = lit_gen_datamodule(root, args.image_size, cache_dir=str(Path(tmp) / "cache"),
                                  decode_workers=args.decode_workers)
        data.prepare_data()
        decode = time.perf_counter() - start
        cached = data.split_dataset("train")
        check_same_items(reference, cached)
        first = decode + epoch_seconds(cached, args.batch, args.loader_workers, epoch=0)
        cache_bytes = cached.dataset.images.stat().st_size

        readers = {"torchvision": reference, "uncached": uncached, "cached": cached}
        seconds: dict[str, list[float]] = {name: [] for name in readers}
        for epoch in range(1, args.epochs + 1):
            for name, dataset in readers.items():
                seconds[name].append(epoch_seconds(dataset, args.batch, args.loader_workers, epoch))

    rate = {name: num / statistics.median(times) for name, times in seconds.items()}
    rate["first"] = num / first
    print(f"{num} images -> {args.image_size}x{args.image_size} RGB, batch {args.batch}, "
          f"{args.loader_workers} loader workers, median of {args.epochs} epochs; one-time decode "
          f"{decode:.1f} s ({num / decode:.0f} images/s), cache {cache_bytes / 2**20:.1f} MiB\n")
    rows = [("torchvision ImageFolder (Resize + CenterCrop + ToTensor)", "torchvision"),
            ("lit-gen, cache: false", "uncached"),
            ("lit-gen cached, first epoch (one-time decode included)", "first"),
            ("lit-gen cached, later epochs", "cached")]
    print("| reader | images/s | vs torchvision |")
    print("|---|---|---|")
    for label, name in rows:
        print(f"| {label} | {rate[name]:,.0f} | {rate[name] / rate['torchvision']:.2f}x |")


if __name__ == "__main__":
    main()
