"""IDX reader, MNIST from files the test writes, Fashion-MNIST from Debian's dataset-fashion-mnist package."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lit_gen.datamodules import FashionMNISTDataModule, MNISTDataModule, read_idx
from lit_gen.errors import DataNotFoundError, LitGenError
from tests.datamodules.conftest import IDX_NAMES, idx_bytes, make_idx_set, write_idx

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")


# -- reader ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_roundtrip(tmp_path, gz):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = write_idx(tmp_path / "x-idx3-ubyte", arr, gz=gz)
    out = read_idx(path)
    assert out.dtype == np.uint8 and out.shape == (2, 3, 4) and np.array_equal(out, arr)
    assert out.flags.writeable  # torch.from_numpy on a read-only buffer warns


def test_read_idx_gzip_detected_by_content(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"  # plain name, gzip content
    path.write_bytes(gzip.compress(idx_bytes(np.array([3, 1, 4], dtype=np.uint8))))
    assert read_idx(path).tolist() == [3, 1, 4]


@pytest.mark.parametrize(
    "content, match",
    [
        (b"\x01\x02\x08\x01\x00\x00\x00\x03abc", "not an IDX file"),  # bad magic
        (b"\x00\x00\x07\x01\x00\x00\x00\x03abc", "not an IDX file"),  # unknown type code
        (b"", "not an IDX file"),
        (b"\x00\x00\x08\x03\x00\x00", "truncated inside its header"),
        (idx_bytes(np.zeros((4, 28, 28), np.uint8))[:-10], "truncated or corrupt"),
        (idx_bytes(np.zeros(5, np.uint8)) + b"extra", "truncated or corrupt"),
        (b"\x1f\x8b\x08\x00garbage", "cannot read IDX file"),
    ],
)
def test_read_idx_corrupt(tmp_path, content, match):
    path = tmp_path / "bad-idx3-ubyte"
    path.write_bytes(content)
    with pytest.raises(LitGenError, match=match) as info:
        read_idx(path)
    assert str(path) in str(info.value)


# -- MNIST from written files ---------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["flat", "torchvision"])
def test_mnist_loads_exactly(tmp_path, layout):
    folder = tmp_path if layout == "flat" else tmp_path / "MNIST" / "raw"
    arrays = make_idx_set(folder, n_train=20, n_test=7)
    dm = MNISTDataModule(root=str(tmp_path), val_size=5, batch_size=4)
    assert (dm.name, dm.data_shape, dm.num_levels, dm.num_classes) == ("mnist", (1, 28, 28), 256, 10)
    train, val, test = (dm.split_dataset(s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (15, 5, 7)
    assert sorted(train.indices + val.indices) == list(range(20))

    images, labels = arrays["t10k-images-idx3-ubyte"], arrays["t10k-labels-idx1-ubyte"]
    for i in range(7):
        x, y = test[i]
        assert x.dtype == torch.float32 and x.shape == (1, 28, 28) and y.dtype == torch.int64
        assert torch.equal(x, torch.from_numpy(images[i]).float().unsqueeze(0) / 255)
        assert int(y) == labels[i]
    tr_images, tr_labels = arrays["train-images-idx3-ubyte"], arrays["train-labels-idx1-ubyte"]
    for pos, src in enumerate(val.indices):
        x, y = val[pos]
        assert torch.equal((x * 255).round().to(torch.uint8)[0], torch.from_numpy(tr_images[src]))
        assert int(y) == tr_labels[src]
    # Values are exactly the float32 k / 255 that ToTensor yields.
    x0 = train.dataset[0][0]
    assert torch.equal(x0[0, 0], torch.arange(28, dtype=torch.float32) / 255) and bool((x0[0, 1] == 1).all())


def test_mnist_missing_files(tmp_path):
    make_idx_set(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    dm = MNISTDataModule(root=str(tmp_path))  # __init__ must not look for files
    with pytest.raises(DataNotFoundError) as info:
        dm.setup("fit")
    msg = str(info.value)
    assert "t10k-labels-idx1-ubyte" in msg and "download" in msg and str(tmp_path) in msg
    assert "MNIST" in msg and str(tmp_path / "MNIST" / "raw") in msg


def test_mnist_corrupt_file_named(tmp_path):
    make_idx_set(tmp_path)
    bad = tmp_path / "train-labels-idx1-ubyte"
    bad.write_bytes(bad.read_bytes()[:-3])
    with pytest.raises(LitGenError, match="train-labels-idx1-ubyte"):
        MNISTDataModule(root=str(tmp_path)).split_dataset("train")


def test_mnist_label_count_mismatch(tmp_path):
    make_idx_set(tmp_path, n_train=20)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(19, np.uint8))
    with pytest.raises(LitGenError, match="expected 20 uint8 labels"):
        MNISTDataModule(root=str(tmp_path), val_size=2).split_dataset("train")


def test_mnist_download_skipped_when_present(tmp_path, monkeypatch):
    import torchvision.datasets

    def no_network(*args, **kwargs):
        raise AssertionError("must not download when the files are present")

    monkeypatch.setattr(torchvision.datasets, "MNIST", no_network)
    make_idx_set(tmp_path)
    MNISTDataModule(root=str(tmp_path), download=True, val_size=2).prepare_data()


def test_mnist_download_uses_torchvision_layout(tmp_path, monkeypatch):
    import torchvision.datasets

    calls = []

    def fake_mnist(root, train=True, download=False):  # stands in for the network fetch
        calls.append((root, download))
        make_idx_set(Path(root) / "MNIST" / "raw")

    monkeypatch.setattr(torchvision.datasets, "MNIST", fake_mnist)
    dm = MNISTDataModule(root=str(tmp_path), download=True, val_size=2)
    dm.prepare_data()
    assert calls == [(str(tmp_path), True)]
    assert len(dm.split_dataset("test")) == 7


def test_mnist_download_failure_is_clear(tmp_path, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(DataNotFoundError, match="download into .* failed"):
        MNISTDataModule(root=str(tmp_path), download=True).prepare_data()


# -- Fashion-MNIST from the Debian package --------------------------------------------------------------
def _require_debian_fashion():
    if not all((DEBIAN_FASHION / f"{n}.gz").is_file() for n in IDX_NAMES):
        message = f"Fashion-MNIST not installed at {DEBIAN_FASHION} (apt-get install dataset-fashion-mnist)"
        if os.environ.get("CI"):
            pytest.fail(message + " - CI must run this test")
        pytest.skip(message)


def test_fashion_mnist_from_debian_package(tmp_path):
    _require_debian_fashion()
    dm = FashionMNISTDataModule(root=str(tmp_path))  # empty root: falls back to the package folder
    assert (dm.name, dm.data_shape, dm.num_levels, dm.num_classes) == ("fashion_mnist", (1, 28, 28), 256, 10)
    sizes = [len(dm.split_dataset(s)) for s in ("train", "val", "test")]
    assert sizes == [55000, 5000, 10000]
    first_label = read_idx(DEBIAN_FASHION / "t10k-labels-idx1-ubyte.gz")[0]
    first_image = read_idx(DEBIAN_FASHION / "t10k-images-idx3-ubyte.gz")[0]
    x, y = dm.split_dataset("test")[0]
    assert int(y) == int(first_label) == 9  # the first Fashion-MNIST test image is an ankle boot
    assert torch.equal(x[0], torch.from_numpy(first_image).float() / 255)


def test_fashion_mnist_root_takes_precedence(tmp_path):
    make_idx_set(tmp_path / "FashionMNIST" / "raw", n_train=12, n_test=3)
    dm = FashionMNISTDataModule(root=str(tmp_path), val_size=2)
    assert len(dm.split_dataset("test")) == 3
