"""ImageFolderDataModule on folders of small images written by the test."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from lit_gen.datamodules import ImageFolderDataModule
from lit_gen.errors import DataNotFoundError, LitGenError


def _save(path, array, mode=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8), mode=mode).save(path)


def _solid(h, w, rgb):
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


@pytest.fixture
def class_folder(tmp_path):
    root = tmp_path / "imgs"
    for i in range(6):
        _save(root / "cat" / f"c{i}.png", _solid(12, 12, (10 * i, 20, 30)))
    for i in range(4):
        path = root / "dog" / "sub" / f"d{i}.jpg" if i % 2 else root / "dog" / f"d{i}.bmp"  # recursive, any ext
        _save(path, _solid(12, 12, (0, 0, 255)))
    (root / "dog" / "notes.txt").write_text("not an image, ignored by extension")
    (root / ".hidden").mkdir()
    return root


def test_class_subfolders(class_folder):
    dm = ImageFolderDataModule(root=str(class_folder), image_size=8, val_size=2, test_size=2)
    assert dm.classes == ["cat", "dog"] and dm.num_classes == 2
    assert dm.data_shape == (3, 8, 8) and dm.num_levels == 256
    assert dm.name.startswith("folder-")
    train, val, test = (dm.split_dataset(s) for s in ("train", "val", "test"))
    assert (len(train), len(val), len(test)) == (6, 2, 2)
    full = train.dataset
    assert sorted(full.labels) == [0] * 6 + [1] * 4
    for i in range(len(full)):
        x, y = full[i]
        assert x.shape == (3, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
        assert torch.equal(x, (x * 255).round() / 255)  # exactly k / 255
        if int(y) == 0:
            assert torch.equal(x[1], torch.full((8, 8), 20 / 255))  # PNG is lossless


def test_split_deterministic_and_fractional(class_folder):
    a = ImageFolderDataModule(root=str(class_folder), image_size=8, val_size=0.25, test_size=0.2)
    b = ImageFolderDataModule(root=str(class_folder), image_size=8, val_size=0.25, test_size=0.2)
    assert len(a.split_dataset("test")) == 2 and len(a.split_dataset("val")) == 2
    for s in ("train", "val", "test"):
        assert a.split_dataset(s).indices == b.split_dataset(s).indices


def test_flat_folder_unlabeled(tmp_path):
    for i in range(5):
        _save(tmp_path / f"{i}.png", _solid(8, 8, (i, i, i)))
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=8, val_size=1, test_size=1)
    assert dm.num_classes is None and dm.classes == []
    full = dm.split_dataset("train").dataset
    assert [int(full[i][1]) for i in range(5)] == [0] * 5
    assert [float(full[i][0][0, 0, 0]) * 255 for i in range(5)] == pytest.approx([0, 1, 2, 3, 4])


def test_center_crop_without_resize(tmp_path):
    img = np.zeros((10, 20, 3), np.uint8)  # 20 wide, 10 high: crop keeps the middle 10 columns
    img[:, 5:15] = 255
    _save(tmp_path / "wide.png", img)
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=10, val_size=0, test_size=0)
    x, _ = dm.split_dataset("train")[0]
    assert x.shape == (3, 10, 10) and bool((x == 1).all())


def test_resize_shorter_side_then_crop(tmp_path):
    img = np.zeros((40, 20, 3), np.uint8)  # tall: resized to 8x16, then the middle 8 rows kept
    img[:10], img[10:30], img[30:] = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    _save(tmp_path / "tall.png", img)
    x, _ = ImageFolderDataModule(root=str(tmp_path), image_size=8, val_size=0, test_size=0).split_dataset(
        "train"
    )[0]
    assert x.shape == (3, 8, 8)
    assert bool((x[1, 2:6] > 0.9).all()) and bool((x[0, 2:6] < 0.1).all())  # center rows are green
    assert float(x[1].mean()) > 0.7


def test_solid_color_survives_resize(tmp_path):
    _save(tmp_path / "big.png", _solid(33, 50, (17, 130, 250)))
    x, _ = ImageFolderDataModule(root=str(tmp_path), image_size=8, val_size=0, test_size=0).split_dataset(
        "train"
    )[0]
    expected = torch.tensor([17, 130, 250], dtype=torch.float32).view(3, 1, 1) / 255
    assert torch.equal(x, expected.expand(3, 8, 8))


def test_grayscale(tmp_path):
    _save(tmp_path / "red.png", _solid(8, 8, (255, 0, 0)))
    _save(tmp_path / "gray.png", np.full((8, 8), 77, np.uint8), mode="L")
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=8, grayscale=True, val_size=0, test_size=0)
    assert dm.data_shape == (1, 8, 8)
    full = dm.split_dataset("train").dataset
    values = {p.name: float(full[i][0][0, 0, 0]) * 255 for i, p in enumerate(full.paths)}
    assert values["gray.png"] == pytest.approx(77)
    assert values["red.png"] == pytest.approx(76)  # ITU-R 601 luma: 0.299 * 255
    assert full[0][0].shape == (1, 8, 8)
    # A grayscale source read as RGB gets three equal channels.
    rgb = ImageFolderDataModule(root=str(tmp_path), image_size=8, val_size=0, test_size=0)
    x = rgb.split_dataset("train").dataset[0][0]
    assert x.shape == (3, 8, 8) and torch.equal(x[0], x[1])


def test_name_depends_on_path_size_grayscale(class_folder, tmp_path):
    _save(tmp_path / "other" / "a.png", _solid(8, 8, (1, 2, 3)))
    names = {
        ImageFolderDataModule(root=str(class_folder), image_size=8).name,
        ImageFolderDataModule(root=str(class_folder), image_size=16).name,
        ImageFolderDataModule(root=str(class_folder), image_size=8, grayscale=True).name,
        ImageFolderDataModule(root=str(tmp_path / "other"), image_size=8).name,
    }
    assert len(names) == 4
    assert ImageFolderDataModule(root=str(class_folder), image_size=8).name in names  # stable


def test_missing_and_empty_folders(tmp_path):
    with pytest.raises(DataNotFoundError, match="does not exist"):
        ImageFolderDataModule(root=str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    with pytest.raises(LitGenError, match="contains no images"):
        ImageFolderDataModule(root=str(tmp_path / "empty"))
    (tmp_path / "classes" / "a").mkdir(parents=True)
    _save(tmp_path / "classes" / "b" / "x.png", _solid(8, 8, (0, 0, 0)))
    dm = ImageFolderDataModule(root=str(tmp_path / "classes"), image_size=8)
    with pytest.raises(LitGenError, match="class folder .*a contains no images"):
        dm.split_dataset("train")


def test_mixed_layout_rejected(tmp_path):
    _save(tmp_path / "x.png", _solid(8, 8, (0, 0, 0)))
    _save(tmp_path / "cls" / "y.png", _solid(8, 8, (0, 0, 0)))
    with pytest.raises(LitGenError, match="both images and subfolders"):
        ImageFolderDataModule(root=str(tmp_path))


def test_undecodable_image_named(tmp_path):
    for i in range(3):
        _save(tmp_path / f"ok{i}.png", _solid(8, 8, (0, 0, 0)))
    (tmp_path / "broken.png").write_bytes(b"this is not a png")
    dm = ImageFolderDataModule(root=str(tmp_path), image_size=8, val_size=0, test_size=0)  # listing is fine
    full = dm.split_dataset("train").dataset
    bad = [i for i, p in enumerate(full.paths) if p.name == "broken.png"][0]
    with pytest.raises(LitGenError, match="cannot decode image .*broken.png"):
        full[bad]


def test_too_few_images_for_splits(tmp_path):
    _save(tmp_path / "only.png", _solid(8, 8, (0, 0, 0)))
    with pytest.raises(LitGenError, match="no training data"):
        ImageFolderDataModule(root=str(tmp_path), image_size=8, test_size=1).split_dataset("train")
