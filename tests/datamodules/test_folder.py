"""ImageFolderDataModule on folders of small images written by the test."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

import lit_gen.datamodules.folder as folder_module
from lit_gen.datamodules import SPLITS, ImageFolderDataModule
from lit_gen.datamodules.folder import CachedImageDataset, ImageFileDataset
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


# ------------------------------------------------------------------ the decoded cache
NOISE_MODES = {2: "P", 3: "RGBA", 4: "L"}


def _noise_folder(root, layout="flat", n=7, seed=0):
    """Random-pixel images: PNG and JPEG, one non-square, one already at the target size, one palette and
    one RGBA image, one grayscale; in class subfolders (three classes) or flat."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = {0: (13, 21), 1: (8, 8)}.get(i, (16, 16))
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        img = img.convert(NOISE_MODES[i]) if i in NOISE_MODES else img
        folder = root / f"class{i % 3}" if layout == "classes" else root
        folder.mkdir(parents=True, exist_ok=True)
        img.save(folder / (f"{i}.jpg" if i % 2 and img.mode in ("RGB", "L") else f"{i}.png"))
    return root


def _bits(x):
    return x.contiguous().view(torch.int32)


def _assert_same_items(a, b):
    """Every split of two datamodules: the same indices, and items equal bit for bit, one by one and as
    one batch (the DataLoader's ``__getitems__`` path)."""
    for split in SPLITS:
        da, db = a.split_dataset(split), b.split_dataset(split)
        assert da.indices == db.indices
        order = list(range(len(da)))
        for (xa, ya), (xb, yb) in [*zip((da[i] for i in order), (db[i] for i in order)),
                                   *zip(da.__getitems__(order), db.__getitems__(order))]:
            assert xa.dtype == xb.dtype == torch.float32 and ya.dtype == yb.dtype == torch.int64
            assert xa.shape == xb.shape and torch.equal(_bits(xa), _bits(xb)) and torch.equal(ya, yb)


def _cache_files(cache):
    return sorted(p.name for p in cache.iterdir()) if cache.is_dir() else []


def _counting_decoder(monkeypatch, fail_at=None):
    """Count decode_levels calls; raise on call number ``fail_at`` (an interrupted build)."""
    calls = []
    real = folder_module.decode_levels

    def decode(*args):
        calls.append(args[0])
        if len(calls) == fail_at:
            raise RuntimeError("power cut")
        return real(*args)

    monkeypatch.setattr(folder_module, "decode_levels", decode)
    return calls


@pytest.mark.parametrize("grayscale", [False, True], ids=["rgb", "gray"])
@pytest.mark.parametrize("layout", ["flat", "classes"])
def test_cached_items_equal_uncached(tmp_path, layout, grayscale):
    root = _noise_folder(tmp_path / "imgs", layout)
    kwargs = dict(root=str(root), image_size=8, grayscale=grayscale, val_size=1, test_size=2)
    cached = ImageFolderDataModule(**kwargs, cache_dir=str(tmp_path / "cache"))
    plain = ImageFolderDataModule(**kwargs, cache=False)
    full, reference = cached.split_dataset("train").dataset, plain.split_dataset("train").dataset
    assert isinstance(full, CachedImageDataset) and isinstance(reference, ImageFileDataset)
    assert full.paths == reference.paths and full.labels == reference.labels
    assert len(set(full.labels)) == (3 if layout == "classes" else 1)
    _assert_same_items(cached, plain)
    assert len([n for n in _cache_files(tmp_path / "cache") if n.endswith(".npy")]) == 1


def test_second_datamodule_reads_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LIT_GEN_CACHE", str(tmp_path / "lit"))
    root = _noise_folder(tmp_path / "imgs", "classes")
    first = ImageFolderDataModule(root=str(root), image_size=8, val_size=1, test_size=1)
    first.prepare_data()
    cache = tmp_path / "lit" / "image_folders"
    names = _cache_files(cache)
    assert [n.rsplit(".", 1)[1] for n in names] == ["json", "npy"] and names[0].startswith(first.name + "-")
    index = (cache / names[0]).read_text()
    assert "class0/0.png" in index and '"labels": [0, 0, 0, 1, 1, 2, 2]' in index
    umask = os.umask(0o022)
    os.umask(umask)
    assert all((cache / n).stat().st_mode & 0o777 == 0o666 & ~umask for n in names)  # not mkstemp's 0600

    def no_decoding(*args):
        raise AssertionError("decoded although the cache exists")

    monkeypatch.setattr(folder_module, "decode_levels", no_decoding)
    second = ImageFolderDataModule(root=str(root), image_size=8, val_size=1, test_size=1)
    second.prepare_data()
    _assert_same_items(second, first)
    assert _cache_files(cache) == names


def test_changed_added_removed_file_is_a_new_cache(tmp_path, monkeypatch):
    root = _noise_folder(tmp_path / "imgs", n=4)
    cache = tmp_path / "cache"

    def data(**kwargs):
        return ImageFolderDataModule(root=str(root), image_size=8, val_size=0, test_size=0, **kwargs)

    old = data(cache_dir=str(cache)).split_dataset("train")
    old_files = _cache_files(cache)
    # New pixels in one file. Its mtime is moved on explicitly: a rewrite within one tick of the
    # filesystem's clock can keep the old mtime (and the size can match), which no key can see.
    target = root / "2.png"
    before = os.stat(target)
    Image.fromarray(np.full((16, 16, 3), 200, np.uint8)).save(target)
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    calls = _counting_decoder(monkeypatch)

    def rebuilt():
        """The train split of a new datamodule, checked to have decoded every file again."""
        before = len(calls)
        train = data(cache_dir=str(cache)).split_dataset("train")
        assert len(calls) - before == len(train)
        return train

    new = rebuilt()
    new_files = _cache_files(cache)
    assert len(new_files) == 2 and not set(new_files) & set(old_files)  # the old cache was deleted
    fresh = data(cache=False).split_dataset("train")
    assert torch.equal(new[2][0], fresh[2][0]) and torch.equal(new[2][0], torch.full((3, 8, 8), 200 / 255))
    assert not torch.equal(new[2][0], old[2][0]) and torch.equal(new[1][0], old[1][0])

    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "9.png")
    assert len(rebuilt()) == 5
    (root / "0.png").unlink()
    assert len(rebuilt()) == 4 and len(_cache_files(cache)) == 2


def test_interrupted_build_is_never_trusted(tmp_path, monkeypatch):
    root = _noise_folder(tmp_path / "imgs", n=5)
    cache = tmp_path / "cache"

    def data(**kwargs):
        return ImageFolderDataModule(root=str(root), image_size=8, val_size=1, test_size=1, **kwargs)

    _counting_decoder(monkeypatch, fail_at=3)
    with pytest.raises(RuntimeError, match="power cut"):
        data(cache_dir=str(cache)).split_dataset("train")
    assert _cache_files(cache) == []  # nothing left behind, not even the temp file
    calls = _counting_decoder(monkeypatch)
    good = data(cache_dir=str(cache))
    good.prepare_data()
    assert len(calls) == 5
    _assert_same_items(good, data(cache=False))

    # A job killed after the pixels but before the index, and temp files of a killed and of a live build.
    npy, index = (cache / n for n in _cache_files(cache)[::-1])
    index.unlink()
    partial = npy.read_bytes()[:200]
    npy.unlink()  # a new file, as every build writes one: the datamodule above keeps its mapping
    npy.write_bytes(partial)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = folder_module.socket.gethostname()
    for pid in (dead.pid, os.getpid()):
        (cache / f".{npy.name}~{host}~{pid}~abcd1234.tmp").write_bytes(b"half an array")
    rebuilt = data(cache_dir=str(cache))
    before = len(calls)
    rebuilt.prepare_data()
    assert len(calls) - before == 5
    _assert_same_items(rebuilt, good)
    live = f".{npy.name}~{host}~{os.getpid()}~abcd1234.tmp"  # another build still running: kept
    assert _cache_files(cache) == sorted([index.name, npy.name, live])


def test_cached_dataset_in_loader_workers(tmp_path):
    root = _noise_folder(tmp_path / "imgs", "classes", n=12)

    def data(num_workers):
        return ImageFolderDataModule(root=str(root), image_size=8, val_size=2, test_size=2, batch_size=3,
                                     num_workers=num_workers, cache_dir=str(tmp_path / "cache"))

    def batches(loader):
        return [(_bits(x), y) for x, y in loader]

    inline, forked = data(0), data(2)
    for expected, got in [(batches(inline.train_dataloader()), batches(forked.train_dataloader())),
                          (batches(inline.val_dataloader()), batches(forked.val_dataloader()))]:
        assert len(expected) == len(got) > 0
        assert all(torch.equal(a, c) and torch.equal(b, d) for (a, b), (c, d) in zip(expected, got))
    # Spawned workers get the file name, not the pixels (a memmap pickles as a full in-memory copy).
    train = forked.split_dataset("train")
    assert train.dataset._levels is not None and pickle.loads(pickle.dumps(train)).dataset._levels is None
    spawned = DataLoader(train, batch_size=3, num_workers=1, multiprocessing_context="spawn")
    assert all(torch.equal(_bits(x), a) and torch.equal(y, b)
               for (x, y), (a, b) in zip(spawned, batches(DataLoader(train, batch_size=3))))


def test_decode_pool_and_progress(tmp_path, monkeypatch):
    root = _noise_folder(tmp_path / "imgs", "classes", n=12)
    monkeypatch.setattr(folder_module, "DECODE_CHUNK", 4)  # three chunks, so the pool of two is used
    monkeypatch.setattr(folder_module, "PROGRESS_EVERY", 8)
    lines = []
    monkeypatch.setattr(folder_module, "rank_zero_info", lines.append)
    kwargs = dict(root=str(root), image_size=8, val_size=2, test_size=2)
    pooled = ImageFolderDataModule(**kwargs, decode_workers=2, cache_dir=str(tmp_path / "cache"))
    _assert_same_items(pooled, ImageFolderDataModule(**kwargs, cache=False))
    assert "(decode processes: 2)" in lines[0]
    assert [line.split(": ")[-1].split(" ")[0] for line in lines[1:]] == ["8/12", "12/12"]


def test_distributed_ranks_only_read_what_prepare_data_built(tmp_path, monkeypatch):
    root = _noise_folder(tmp_path / "imgs", n=4)
    kwargs = dict(root=str(root), image_size=8, val_size=0, test_size=0, cache_dir=str(tmp_path / "cache"))
    monkeypatch.setattr(folder_module, "_distributed_rank", lambda: 1)
    with pytest.raises(LitGenError, match="missing on rank 1: .*prepare_data"):
        ImageFolderDataModule(**kwargs).split_dataset("train")
    ImageFolderDataModule(**kwargs).prepare_data()  # what Lightning runs on one process per node
    calls = _counting_decoder(monkeypatch)
    assert len(ImageFolderDataModule(**kwargs).split_dataset("train")) == 4 and calls == []


def test_cache_options_checked(tmp_path):
    root = _noise_folder(tmp_path / "imgs", n=2)
    with pytest.raises(LitGenError, match="cache must be true or false"):
        ImageFolderDataModule(root=str(root), cache="yes")
    with pytest.raises(LitGenError, match="decode_workers must be a positive integer"):
        ImageFolderDataModule(root=str(root), decode_workers=0)
    (tmp_path / "a_file").write_text("not a folder")
    dm = ImageFolderDataModule(root=str(root), image_size=8, val_size=0, test_size=0,
                               cache_dir=str(tmp_path / "a_file" / "cache"))
    with pytest.raises(LitGenError, match="cannot write the image cache"):
        dm.split_dataset("train")
