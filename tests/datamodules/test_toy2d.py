"""Toy2DDataModule: samples in the unit square, fixed seeds, exact log-densities."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from lit_gen.datamodules import DENSITIES, Toy2DDataModule
from lit_gen.errors import LitGenError

SMALL = {"num_train": 4000, "num_val": 500, "num_test": 1000}


@pytest.mark.parametrize("density", DENSITIES)
def test_samples_in_unit_square(density):
    dm = Toy2DDataModule(density=density, **SMALL)
    assert dm.name == f"toy2d-{density}" and dm.data_shape == (2,) and dm.num_levels is None
    sizes = [len(dm.split_dataset(s)) for s in ("train", "val", "test")]
    assert sizes == [4000, 500, 1000]
    x, y = dm.split_dataset("train").tensors
    assert x.dtype == torch.float32 and x.shape == (4000, 2) and y.dtype == torch.int64
    assert bool(((x >= 0) & (x <= 1)).all())
    assert x.min() < 0.25 and x.max() > 0.75  # fills the square, not a corner of it
    if dm.num_classes is None:
        assert bool((y == 0).all())
    else:
        assert set(y.tolist()) == set(range(dm.num_classes))
    item_x, item_y = dm.split_dataset("val")[0]
    assert item_x.shape == (2,) and item_y.dim() == 0


@pytest.mark.parametrize("density", DENSITIES)
def test_deterministic_and_split_specific(density):
    L.seed_everything(3)
    a = Toy2DDataModule(density=density, **SMALL)
    L.seed_everything(4)
    b = Toy2DDataModule(density=density, **SMALL)
    for s in ("train", "val", "test"):
        assert torch.equal(a.split_dataset(s).tensors[0], b.split_dataset(s).tensors[0])
    assert not torch.equal(a.split_dataset("val").tensors[0], a.split_dataset("test").tensors[0][:500])


def test_bad_density_lists_choices():
    with pytest.raises(LitGenError) as info:
        Toy2DDataModule(density="swissroll")
    assert all(d in str(info.value) for d in DENSITIES)


def test_bad_counts():
    with pytest.raises(LitGenError):
        Toy2DDataModule(num_train=0)
    with pytest.raises(LitGenError):
        Toy2DDataModule(num_val=-1)


def _grid(n=600):
    c = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return torch.stack(torch.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2), 1.0 / n**2


@pytest.mark.parametrize("density", ["8gaussians", "checkerboard"])
def test_log_density_integrates_to_one(density):
    dm = Toy2DDataModule(density=density, **SMALL)
    assert dm.has_log_density
    points, cell = _grid()
    mass = float(dm.log_density(points).exp().sum() * cell)
    assert mass == pytest.approx(1.0, abs=1e-4)


def test_8gaussians_log_density_matches_samples():
    dm = Toy2DDataModule(density="8gaussians", **SMALL)
    x = dm.split_dataset("test").tensors[0]
    logp = dm.log_density(x)
    assert logp.shape == (1000,) and logp.dtype == torch.float32
    # Well-separated components: E[log p] = -entropy = -(log 8 + log(2 pi e sigma^2)), sigma = 0.03.
    expected = -(math.log(8) + math.log(2 * math.pi * math.e * 0.03**2))
    assert float(logp.mean()) == pytest.approx(expected, abs=0.1)
    # Peak value at a component mean.
    peak = float(dm.log_density(torch.tensor([0.8, 0.5])))
    assert peak == pytest.approx(-math.log(8) - math.log(2 * math.pi * 0.03**2), abs=1e-3)


def test_checkerboard_samples_on_black_cells():
    dm = Toy2DDataModule(density="checkerboard", **SMALL)
    x = dm.split_dataset("train").tensors[0]
    assert bool((dm.log_density(x) == math.log(2)).all())
    assert float(dm.log_density(torch.tensor([0.3, 0.1]))) == -math.inf  # cell (1, 0) is white


@pytest.mark.parametrize("density", ["two_moons", "spirals"])
def test_no_closed_form(density):
    dm = Toy2DDataModule(density=density, **SMALL)
    assert not dm.has_log_density
    with pytest.raises(LitGenError, match="no closed-form"):
        dm.log_density(torch.zeros(3, 2))


def test_loader_batches():
    dm = Toy2DDataModule(density="two_moons", batch_size=128, **SMALL)
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (128, 2) and y.shape == (128,)
