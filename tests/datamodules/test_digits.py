"""DigitsDataModule and the shared GenerativeDataModule behaviour (loaders, lazy splits, argument checks)."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import SequentialSampler

from lit_gen.datamodules import DigitsDataModule, GenerativeDataModule
from lit_gen.datamodules.base import EpochShuffle
from lit_gen.errors import LitGenError


@pytest.fixture(scope="module")
def digits():
    return DigitsDataModule(batch_size=32)


def test_attributes_before_setup():
    dm = DigitsDataModule()
    assert isinstance(dm, GenerativeDataModule)
    assert (dm.name, dm.data_shape, dm.num_levels, dm.num_classes) == ("digits", (1, 8, 8), 17, 10)
    assert dm._splits is None  # nothing loaded yet: __init__ must stay cheap for LightningCLI
    assert "digits" in str(dm) and dm._splits is None  # printing must not load either


def test_split_sizes_and_disjoint(digits):
    sizes = {s: len(digits.split_dataset(s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 1297, "val": 200, "test": 300}
    idx = [set(digits.split_dataset(s).indices) for s in ("train", "val", "test")]
    assert not (idx[0] & idx[1]) and not (idx[0] & idx[2]) and not (idx[1] & idx[2])
    assert len(idx[0] | idx[1] | idx[2]) == 1797


def test_configurable_sizes():
    dm = DigitsDataModule(val_size=0.25, test_size=97)
    assert len(dm.split_dataset("test")) == 97
    assert len(dm.split_dataset("val")) == round(0.25 * 1700)
    assert len(dm.split_dataset("train")) == 1700 - 425


def test_items_are_exact_levels(digits):
    x, y = digits.split_dataset("train")[0]
    assert x.dtype == torch.float32 and x.shape == (1, 8, 8)
    assert y.dtype == torch.int64 and 0 <= int(y) < 10
    allx = torch.stack([digits.split_dataset("val")[i][0] for i in range(200)])
    k = allx * 16
    assert torch.equal(k, k.round()) and k.min() == 0 and k.max() == 16
    assert torch.equal(allx, k.round() / 16)  # exactly k / 16 in float32


def test_deterministic_and_independent_of_seed():
    L.seed_everything(1)
    a = DigitsDataModule()
    a_val = a.split_dataset("val").indices
    torch.manual_seed(12345)
    L.seed_everything(2)
    b = DigitsDataModule()
    assert b.split_dataset("val").indices == a_val
    assert b.split_dataset("test").indices == a.split_dataset("test").indices
    xa, ya = a.split_dataset("test")[5]
    xb, yb = b.split_dataset("test")[5]
    assert torch.equal(xa, xb) and ya == yb


def test_split_dataset_lazy_and_cached():
    dm = DigitsDataModule()
    test = dm.split_dataset("test")  # without setup()
    dm.setup("fit")
    assert dm.split_dataset("test") is test


def test_unknown_split(digits):
    with pytest.raises(LitGenError, match="unknown split 'predict'"):
        digits.split_dataset("predict")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"val_size": 1.5},
        {"val_size": -1},
        {"val_size": "10"},
        {"batch_size": 0},
        {"eval_batch_size": -2},
        {"num_workers": -1},
        {"test_size": 1.0},
    ],
)
def test_bad_arguments(kwargs):
    with pytest.raises(LitGenError):
        DigitsDataModule(**kwargs)


def test_val_size_too_large():
    with pytest.raises(LitGenError, match="no training data"):
        DigitsDataModule(val_size=1497).split_dataset("train")


def test_dataloaders(digits):
    train = digits.train_dataloader()
    x, y = next(iter(train))
    assert x.shape == (32, 1, 8, 8) and x.dtype == torch.float32
    assert y.shape == (32,) and y.dtype == torch.int64
    assert isinstance(train.sampler, EpochShuffle) and not train.drop_last
    assert sorted(train.sampler) == list(range(len(train.dataset)))  # a permutation: shuffled, complete
    val = digits.val_dataloader()
    assert isinstance(val.sampler, SequentialSampler) and not val.drop_last
    assert sum(len(b[0]) for b in digits.test_dataloader()) == 300


def test_loader_options():
    dm = DigitsDataModule(batch_size=16, eval_batch_size=100, num_workers=1, pin_memory=True)
    train, val = dm.train_dataloader(), dm.val_dataloader()
    assert train.batch_size == 16 and val.batch_size == 100
    assert train.persistent_workers and train.num_workers == 1 and train.pin_memory
    assert not DigitsDataModule().train_dataloader().persistent_workers


class _TinyModel(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(64, 1)

    def training_step(self, batch, batch_idx):
        return self.lin(batch[0].flatten(1)).pow(2).mean()

    def validation_step(self, batch, batch_idx):
        self.log("val_loss", self.lin(batch[0].flatten(1)).pow(2).mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def test_trainer_integration(tmp_path):
    trainer = L.Trainer(
        fast_dev_run=2,
        accelerator="cpu",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(_TinyModel(), datamodule=DigitsDataModule(batch_size=8))
    assert trainer.state.finished
