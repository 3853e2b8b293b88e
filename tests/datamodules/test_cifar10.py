"""CIFAR10DataModule on batch files of the official pickle layout written by the test."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from lit_gen.datamodules import CIFAR10DataModule
from lit_gen.errors import DataNotFoundError, LitGenError
from tests.datamodules.conftest import write_cifar_batch

N_PER_BATCH, N_TEST = 4, 6


def _make_cifar(root, protocol=4, str_keys=False):
    """Five train batches and a test batch of random pixels; returns (train data, train labels, test...)."""
    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    train_x, train_y = [], []
    for i in range(1, 6):
        data = rng.integers(0, 256, (N_PER_BATCH, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, N_PER_BATCH).tolist()
        write_cifar_batch(folder / f"data_batch_{i}", data, labels, protocol=protocol, str_keys=str_keys)
        train_x.append(data)
        train_y += labels
    test_x = rng.integers(0, 256, (N_TEST, 3072), dtype=np.uint8)
    test_x[0, :1024], test_x[0, 1024:2048], test_x[0, 2048:] = 200, 100, 7  # a pure R/G/B-plane image
    test_y = rng.integers(0, 10, N_TEST).tolist()
    write_cifar_batch(folder / "test_batch", test_x, test_y, protocol=protocol, str_keys=str_keys)
    return np.concatenate(train_x), train_y, test_x, test_y


@pytest.mark.parametrize("protocol, str_keys", [(4, False), (5, False), (2, True)])
def test_cifar_loads_exactly(tmp_path, protocol, str_keys):
    train_x, train_y, test_x, test_y = _make_cifar(tmp_path, protocol, str_keys)
    dm = CIFAR10DataModule(root=str(tmp_path), val_size=5)
    assert (dm.name, dm.data_shape, dm.num_levels, dm.num_classes) == ("cifar10", (3, 32, 32), 256, 10)
    train, val, test = (dm.split_dataset(s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (15, 5, 6)
    assert sorted(train.indices + val.indices) == list(range(20))

    x, y = test[0]
    assert x.dtype == torch.float32 and x.shape == (3, 32, 32) and y.dtype == torch.int64
    # Row layout: 1024 red values, then green, then blue (each plane row-major).
    assert bool((x[0] == 200 / 255).all() and (x[1] == 100 / 255).all() and (x[2] == 7 / 255).all())
    for i in range(N_TEST):
        x, y = test[i]
        assert torch.equal(x, torch.from_numpy(test_x[i].reshape(3, 32, 32)).float() / 255)
        assert int(y) == test_y[i]
    # A pixel away from the diagonal pins down the row-major order within a plane.
    assert test[1][0][2, 3, 17] == torch.tensor(float(test_x[1][2048 + 3 * 32 + 17])) / 255
    for pos, src in enumerate(train.indices):
        x, y = train[pos]
        assert torch.equal(x, torch.from_numpy(train_x[src].reshape(3, 32, 32)).float() / 255)
        assert int(y) == train_y[src]


def test_random_flip_train_only(tmp_path):
    train_x, _, _, _ = _make_cifar(tmp_path)
    dm = CIFAR10DataModule(root=str(tmp_path), val_size=5, random_flip=True)
    train, val = dm.split_dataset("train"), dm.split_dataset("val")
    torch.manual_seed(0)
    src = torch.from_numpy(train_x[train.indices[0]].reshape(3, 32, 32)).float() / 255
    seen = {"plain": 0, "flipped": 0}
    for _ in range(40):
        x = train[0][0]
        if torch.equal(x, src):
            seen["plain"] += 1
        else:
            assert torch.equal(x, src.flip(-1))
            seen["flipped"] += 1
    assert seen["plain"] > 0 and seen["flipped"] > 0
    vsrc = torch.from_numpy(train_x[val.indices[0]].reshape(3, 32, 32)).float() / 255
    assert all(torch.equal(val[0][0], vsrc) for _ in range(20))
    assert all(torch.equal(dm.split_dataset("test")[0][0], dm.split_dataset("test")[0][0]) for _ in range(5))


def test_cifar_missing(tmp_path):
    _make_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    dm = CIFAR10DataModule(root=str(tmp_path))
    with pytest.raises(DataNotFoundError) as info:
        dm.split_dataset("test")
    msg = str(info.value)
    assert "data_batch_3" in msg and "download" in msg and "cifar-10-batches-py" in msg


def test_cifar_bad_shape(tmp_path):
    _make_cifar(tmp_path)
    write_cifar_batch(tmp_path / "cifar-10-batches-py" / "test_batch", np.zeros((2, 1000), np.uint8), [0, 1])
    with pytest.raises(LitGenError, match="test_batch.*shape"):
        CIFAR10DataModule(root=str(tmp_path), val_size=2).split_dataset("test")


class _Evil:
    def __reduce__(self):
        return (os.getcwd, ())  # harmless, but any callable must be refused


def test_cifar_refuses_arbitrary_pickles(tmp_path):
    _make_cifar(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": []}, f)
    with pytest.raises(LitGenError, match="refusing to load global"):
        CIFAR10DataModule(root=str(tmp_path), val_size=2).split_dataset("test")


def test_cifar_download_skipped_when_present(tmp_path, monkeypatch):
    import torchvision.datasets

    def no_network(*args, **kwargs):
        raise AssertionError("must not download when the files are present")

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", no_network)
    _make_cifar(tmp_path)
    CIFAR10DataModule(root=str(tmp_path), download=True).prepare_data()
