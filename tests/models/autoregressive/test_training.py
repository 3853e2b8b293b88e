"""Short digits trainings: both architectures beat the factorized per-pixel baseline in exact test bpd."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch

from lit_gen.datamodules import DigitsDataModule
from lit_gen.models.autoregressive import MADE, GatedPixelCNN
from lit_gen.models.factorized import FactorizedCategorical


@pytest.fixture(scope="module")
def digits():
    data = DigitsDataModule(batch_size=64)
    test = data.split_dataset("test")
    x_test = torch.stack([test[i][0] for i in range(len(test))])
    baseline = FactorizedCategorical(data_shape=data.data_shape, num_levels=17).fit_counts(
        data.train_dataloader()
    )
    return data, x_test, baseline


def bpd_on(model, x):
    return (model.nll(x).nats.mean() / (x[0].numel() * math.log(2))).item()


def train(model, data, epochs):
    L.seed_everything(0)
    trainer = L.Trainer(
        max_epochs=epochs,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        accelerator="cpu",
    )
    trainer.fit(model, datamodule=data)
    return model.eval()


@pytest.mark.parametrize(
    "build,epochs",
    [
        (
            lambda: MADE(
                data_shape=(1, 8, 8),
                num_levels=17,
                hidden_sizes=(256, 256),
                optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
            ),
            20,
        ),
        (
            lambda: GatedPixelCNN(
                data_shape=(1, 8, 8),
                num_levels=17,
                channels=16,
                num_layers=4,
                kernel_size=5,
                head_channels=32,
                optimizer=lambda p: torch.optim.Adam(p, lr=3e-3),
            ),
            8,
        ),
    ],
    ids=["made", "gated_pixelcnn"],
)
def test_trained_model_beats_the_factorized_baseline(digits, build, epochs):
    data, x_test, baseline = digits
    model = train(build(), data, epochs)
    assert model.likelihood.params_per_dim == 17
    ours, base = bpd_on(model, x_test), bpd_on(baseline, x_test)
    assert ours < base - 0.2, (ours, base)
