"""The real-feature cache is keyed by the content of the real images, the extractor's weights and its
preprocessing: any change of the images is a new entry, the same images hit the old one."""

from __future__ import annotations

import logging
import re
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from lit_gen.datamodules import DigitsDataModule
from lit_gen.datamodules.cifar10 import CIFAR10DataModule
from lit_gen.datamodules.folder import ImageFolderDataModule
from lit_gen.datamodules.idx import MNISTDataModule
from lit_gen.errors import WeightsNotFoundError
from lit_gen.evaluation.callback import GenerativeEvaluation
from lit_gen.evaluation.features import extractor_cache_id
from lit_gen.models.factorized import FactorizedCategorical
from tests.datamodules.conftest import make_idx_set, write_cifar_batch, write_idx
from tests.evaluation.test_callback import CountingExtractor, stub_trainer

LINE = re.compile(r"real-feature cache (?P<status>.+?): key (?P<key>\S+), N=(?P<n>\d+)$")


class Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture
def cache_log():
    """The real-feature cache lines, parsed, from the logger rank_zero_info writes to (Lightning's
    loggers do not propagate to the root logger, where caplog listens)."""
    logger = logging.getLogger("lightning.pytorch.utilities.rank_zero")
    records, level = Records(), logger.level
    logger.addHandler(records)
    logger.setLevel(logging.INFO)
    yield lambda: [m.groupdict() for m in map(LINE.search, records.messages) if m]
    logger.removeHandler(records)
    logger.setLevel(level)


def first_images(datamodule, split, n):
    dataset = datamodule.split_dataset(split)
    return torch.stack([dataset[i][0] for i in range(n)])


def read(datamodule, cache, extractor, monkeypatch, tmp_path, split="test", num=16, **kwargs):
    """Real features of ``split`` through a new callback (a new process, in effect)."""
    monkeypatch.setattr(GenerativeEvaluation, "_extractor", lambda self, pl_module: extractor)
    callback = GenerativeEvaluation(cache_dir=str(cache), real_split=split, sample_batch_size=8, **kwargs)
    model = FactorizedCategorical(data_shape=datamodule.data_shape, num_levels=datamodule.num_levels)
    return callback.real_features(stub_trainer(datamodule, tmp_path), model, num)


@pytest.mark.parametrize("split, changed", [("test", {"test_size": 250}), ("val", {"val_size": 150})])
def test_another_split_size_is_another_key(split, changed, cache_log, monkeypatch, tmp_path):
    extractor = CountingExtractor()
    old = read(DigitsDataModule(), tmp_path / "cache", extractor, monkeypatch, tmp_path, split)
    new = read(DigitsDataModule(**changed), tmp_path / "cache", extractor, monkeypatch, tmp_path, split)
    fresh = read(DigitsDataModule(**changed), tmp_path / "fresh", extractor, monkeypatch, tmp_path, split)
    (first, second, third) = cache_log()
    assert first["status"].startswith("miss") and second["status"].startswith("miss")
    assert second["key"] != first["key"] and third["key"] == second["key"] and second["n"] == "16"
    assert extractor.images_seen == 48  # every read embedded its 16 images
    # The changed config's features are those of its own images, not the old entry's.
    assert torch.equal(new, fresh) and not torch.equal(new, old)


def test_another_split_seed_is_another_key(cache_log, monkeypatch, tmp_path):
    extractor = CountingExtractor()
    read(DigitsDataModule(), tmp_path / "cache", extractor, monkeypatch, tmp_path)
    monkeypatch.setattr("lit_gen.datamodules.base.SPLIT_SEED", 1)  # permutations read it at call time
    read(DigitsDataModule(), tmp_path / "cache", extractor, monkeypatch, tmp_path)
    first, second = cache_log()
    assert second["status"].startswith("miss") and second["key"] != first["key"]


def test_the_same_images_hit_the_cache(cache_log, monkeypatch, tmp_path):
    extractor = CountingExtractor()
    feats = read(DigitsDataModule(), tmp_path / "cache", extractor, monkeypatch, tmp_path)
    assert extractor.images_seen == 16
    # The same config, and a test_size whose first 16 test images are the same ones: both hit on disk.
    assert torch.equal(first_images(DigitsDataModule(test_size=301), "test", 16),
                       first_images(DigitsDataModule(), "test", 16))
    again = read(DigitsDataModule(), tmp_path / "cache", extractor, monkeypatch, tmp_path)
    same = read(DigitsDataModule(test_size=301), tmp_path / "cache", extractor, monkeypatch, tmp_path)
    # Other batches of the same images: the fingerprint does not depend on how they are stacked.
    rebatched = GenerativeEvaluation(cache_dir=str(tmp_path / "cache"), real_split="test", sample_batch_size=5)
    trainer = stub_trainer(DigitsDataModule(), tmp_path)
    model = FactorizedCategorical(data_shape=(1, 8, 8), num_levels=17)
    rebatched.real_features(trainer, model, 16)
    rebatched.real_features(trainer, model, 16)  # the same callback again: its in-memory copy
    assert extractor.images_seen == 16
    assert torch.equal(again, feats) and torch.equal(same, feats)
    lines = cache_log()
    assert [line["key"] for line in lines] == [lines[0]["key"]] * 5
    assert lines[0]["status"].startswith("miss")
    assert [line["status"].split(" ")[0] for line in lines[1:]] == ["hit"] * 4
    assert lines[1]["status"] == f"hit (in {tmp_path / 'cache' / 'features'})"
    assert lines[-1]["status"] == "hit (in memory)"


def write_png(path, pixels, compress_level):
    Image.fromarray(pixels).save(path, compress_level=compress_level)  # 2-D uint8: grayscale


def test_a_changed_image_file_is_another_key(cache_log, monkeypatch, tmp_path):
    root = tmp_path / "images"
    root.mkdir()
    rng = np.random.default_rng(0)
    pixels = [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(6)]
    for i, p in enumerate(pixels):
        write_png(root / f"{i}.png", p, compress_level=9)

    def data():
        return ImageFolderDataModule(root=str(root), image_size=8, grayscale=True, val_size=0, test_size=0)

    extractor = CountingExtractor()
    old = read(data(), tmp_path / "cache", extractor, monkeypatch, tmp_path, "train", 6)

    # Other bytes, same pixels (another PNG compression): the same images, so the same entry.
    before = (root / "3.png").read_bytes()
    write_png(root / "3.png", pixels[3], compress_level=0)
    assert (root / "3.png").read_bytes() != before
    read(data(), tmp_path / "cache", extractor, monkeypatch, tmp_path, "train", 6)
    assert extractor.images_seen == 6

    # One changed pixel: a new entry, whose features are the new file's.
    pixels[3][4, 4] ^= 1
    write_png(root / "3.png", pixels[3], compress_level=9)
    new = read(data(), tmp_path / "cache", extractor, monkeypatch, tmp_path, "train", 6)
    fresh = read(data(), tmp_path / "fresh", extractor, monkeypatch, tmp_path, "train", 6)
    first, second, third, _ = cache_log()
    assert first["key"].startswith(data().name + "__")  # the name alone would not have told them apart
    assert second["key"] == first["key"] and second["status"].startswith("hit")
    assert third["key"] != first["key"] and third["status"].startswith("miss")
    assert torch.equal(new, fresh) and not torch.equal(new[3], old[3]) and torch.equal(new[:3], old[:3])


def test_mnist_root_matters_only_through_its_files(cache_log, monkeypatch, tmp_path):
    make_idx_set(tmp_path / "a", n_test=7)
    shutil.copytree(tmp_path / "a", tmp_path / "copy")
    images = make_idx_set(tmp_path / "b", n_test=7)["t10k-images-idx3-ubyte"]  # the same seed: a's files,
    images[6, 0, 0] ^= 1  # but for one pixel of the last test image
    (tmp_path / "b" / "t10k-images-idx3-ubyte.gz").unlink()
    write_idx(tmp_path / "b" / "t10k-images-idx3-ubyte", images)
    extractor = CountingExtractor(in_dim=784)
    for root in ("a", "copy", "b"):
        read(MNISTDataModule(root=str(tmp_path / root), val_size=2), tmp_path / "cache", extractor, monkeypatch,
             tmp_path, "test", 7)
    a, copy, b = cache_log()
    assert copy["key"] == a["key"] and copy["status"].startswith("hit")
    assert b["key"] != a["key"] and b["status"].startswith("miss")
    assert extractor.images_seen == 14


def test_augmented_train_split_reads_the_same_images(cache_log, monkeypatch, tmp_path):
    """CIFAR-10's random_flip draws from the global generator: real images are read under a fixed seed,
    so the same config hits its entry, and evaluation leaves training's random stream untouched."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "cifar-10-batches-py"
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_batch(folder / name, rng.integers(0, 256, (4, 3072), dtype=np.uint8), [0, 1, 2, 3])
    data = CIFAR10DataModule(root=str(tmp_path / "data"), random_flip=True, val_size=2)
    extractor = CountingExtractor(in_dim=3072)
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = read(data, tmp_path / "cache", extractor, monkeypatch, tmp_path, "train", 18)
    assert torch.equal(torch.get_rng_state(), state)
    again = read(data, tmp_path / "cache", extractor, monkeypatch, tmp_path, "train", 18)
    miss, hit = cache_log()
    assert hit["key"] == miss["key"] and hit["status"].startswith("hit") and torch.equal(again, first)
    # The flips did happen (some item differs from its stored, unflipped levels).
    dataset = data.split_dataset("train")
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(0)
        flipped = [not torch.equal(dataset[i][0], dataset.dataset.levels[dataset.indices[i]] / 255.0)
                   for i in range(18)]
    assert any(flipped) and not all(flipped)


def test_extractor_cache_id_follows_the_weights_content(tmp_path):
    a, b, copy = tmp_path / "a.pth", tmp_path / "b.pth", tmp_path / "copy.pth"
    a.write_bytes(b"weights" * 100)
    b.write_bytes(b"weights" * 99 + b"weightz")
    shutil.copy(a, copy)
    assert extractor_cache_id(a) == extractor_cache_id(copy) != extractor_cache_id(b)
    assert extractor_cache_id(a).startswith("inception-v3-compat-2015-12-05-w")


@pytest.fixture(scope="module")
def inception():
    from lit_gen.evaluation.features import get_inception

    try:
        return get_inception()
    except WeightsNotFoundError as err:
        pytest.skip(str(err))


class CountingInception(torch.nn.Module):
    """The real Inception, counting the images it embeds."""

    def __init__(self, net):
        super().__init__()
        self.net = net
        self.extractor_id, self.cache_id, self.preprocessing = net.extractor_id, net.cache_id, net.preprocessing
        self.images_seen = 0

    def forward(self, images):
        self.images_seen += images.shape[0]
        return self.net(images)


def test_fid_after_a_test_size_change_equals_a_fresh_computation(inception, cache_log, monkeypatch, tmp_path):
    """The issue's case with the real network: against_test.yaml (real_split test), then test_size changed.

    8 real vs 8 generated digits (~0.2 s per image on a CPU); 6 of the first 8 test images differ.
    """
    extractor = CountingInception(inception)
    monkeypatch.setattr(GenerativeEvaluation, "_extractor", lambda self, pl_module: extractor)
    model = FactorizedCategorical(data_shape=(1, 8, 8), num_levels=17)
    monkeypatch.setattr(model, "log", lambda *a, **k: None)

    def evaluate(datamodule, cache):
        callback = GenerativeEvaluation(cache_dir=str(cache), real_split="test", test_num_samples=8,
                                        grid_size=0, sample_batch_size=8)
        seen = extractor.images_seen
        value = callback.evaluate(stub_trainer(datamodule, tmp_path), model, "test")["fid"]
        return value, extractor.images_seen - seen

    assert extractor.cache_id == extractor_cache_id(inception.weights_path)
    old, embedded = evaluate(DigitsDataModule(), tmp_path / "cache")
    assert embedded == 16  # 8 samples + 8 real images
    again, embedded = evaluate(DigitsDataModule(), tmp_path / "cache")
    assert embedded == 8 and again == old  # the samples only: Inception never saw a real image again
    changed, embedded = evaluate(DigitsDataModule(test_size=200), tmp_path / "cache")
    assert embedded == 16
    fresh, _ = evaluate(DigitsDataModule(test_size=200), tmp_path / "fresh")
    assert changed == fresh != old
    keys = [line["key"] for line in cache_log()]
    assert keys[0] == keys[1] != keys[2] == keys[3]
    assert f"__{inception.cache_id}__" in keys[0] and "__prep=u8round-gray3-tf1resize299__" in keys[0]
