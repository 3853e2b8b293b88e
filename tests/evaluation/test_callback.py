"""The evaluation callback: real-feature caching and what it logs, with a cheap stand-in extractor."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from lit_gen.datamodules import DigitsDataModule
from lit_gen.evaluation.callback import GenerativeEvaluation
from lit_gen.models.factorized import FactorizedCategorical


class CountingExtractor(torch.nn.Module):
    """Stand-in for Inception: a fixed random projection to 2048 features that counts the images it sees."""

    extractor_id = "test-projection"
    cache_id = "test-projection-w0"
    preprocessing = "none"

    def __init__(self, in_dim: int = 64):
        super().__init__()
        self.projection = torch.randn(in_dim, 2048, generator=torch.Generator().manual_seed(0))
        self.images_seen = 0

    def forward(self, images):
        self.images_seen += images.shape[0]
        return images.flatten(1) @ self.projection


def stub_trainer(datamodule, tmp_path):
    strategy = SimpleNamespace(all_gather=lambda t: t, reduce=lambda t, reduce_op=None: t)
    return SimpleNamespace(datamodule=datamodule, global_rank=0, world_size=1, is_global_zero=True,
                           strategy=strategy, log_dir=str(tmp_path), default_root_dir=str(tmp_path),
                           current_epoch=0, global_step=0, loggers=[], sanity_checking=False,
                           state=SimpleNamespace(fn="fit"), ckpt_path=None)


def test_real_features_are_cached_on_disk_and_reused(tmp_path, monkeypatch):
    extractor = CountingExtractor()
    monkeypatch.setattr(GenerativeEvaluation, "_extractor", lambda self, pl_module: extractor)
    data = DigitsDataModule()
    model = FactorizedCategorical(data_shape=(1, 8, 8), num_levels=17)
    trainer = stub_trainer(data, tmp_path)

    first = GenerativeEvaluation(cache_dir=str(tmp_path / "cache"), sample_batch_size=16)
    feats = first.real_features(trainer, model, 40)
    assert feats.shape == (40, 2048) and extractor.images_seen == 40

    # A new callback (a new process, in effect) finds the statistics on disk: no real image is embedded.
    second = GenerativeEvaluation(cache_dir=str(tmp_path / "cache"), sample_batch_size=16)
    again = second.real_features(trainer, model, 40)
    assert extractor.images_seen == 40
    assert torch.equal(again, feats)

    # Another N is another key.
    second.real_features(trainer, model, 20)
    assert extractor.images_seen == 60


def test_evaluate_logs_fid_and_saves_a_grid(tmp_path, monkeypatch):
    extractor = CountingExtractor()
    monkeypatch.setattr(GenerativeEvaluation, "_extractor", lambda self, pl_module: extractor)
    data = DigitsDataModule()
    model = FactorizedCategorical(data_shape=(1, 8, 8), num_levels=17)
    logged = {}
    monkeypatch.setattr(model, "log", lambda name, value, **kw: logged.__setitem__(name, value))
    callback = GenerativeEvaluation(cache_dir=str(tmp_path / "cache"), test_num_samples=24, grid_size=16,
                                    sample_batch_size=8, kid=True, precision_recall=True, kid_subset_size=10)
    values = callback.evaluate(stub_trainer(data, tmp_path), model, "test")
    assert set(values) == {"fid", "kid_mean", "kid_std", "precision", "recall", "sample_sec_per_image"}
    assert logged["test/fid"] == values["fid"] > 0
    assert callback.sample_metrics["test/fid"]["n_generated"] == 24
    assert callback.sample_metrics["test/fid"]["real_split"] == "train"
    assert list((tmp_path / "samples").glob("test_epoch0000_*.png"))
    # The same seed gives the same samples, hence the same FID.
    assert callback.evaluate(stub_trainer(data, tmp_path), model, "test")["fid"] == values["fid"]


def test_grid_only_evaluation_embeds_nothing(tmp_path, monkeypatch):
    """val_num_samples = 0 means grids only: no Inception load, no features of the grid's images."""
    extractor = CountingExtractor()
    monkeypatch.setattr(GenerativeEvaluation, "_extractor", lambda self, pl_module: extractor)
    model = FactorizedCategorical(data_shape=(1, 8, 8), num_levels=17)
    monkeypatch.setattr(model, "log", lambda *a, **k: None)
    callback = GenerativeEvaluation(cache_dir=str(tmp_path / "cache"), val_num_samples=0, grid_size=16)
    values = callback.evaluate(stub_trainer(DigitsDataModule(), tmp_path), model, "val")
    assert "fid" not in values and extractor.images_seen == 0
    assert list((tmp_path / "samples").glob("val_epoch0000_*.png"))
