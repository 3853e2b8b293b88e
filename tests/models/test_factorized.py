"""The factorized per-pixel categorical baseline: its closed-form fit is the training split's histogram."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from lit_gen.datamodules import DigitsDataModule
from lit_gen.models.factorized import FactorizedCategorical


@pytest.mark.parametrize("smoothing,batch_size,labelled", [(1.0, 64, True), (0.25, 100, False)])
def test_fit_counts_is_the_smoothed_histogram_of_the_training_pixels(smoothing, batch_size, labelled):
    """Counted here with numpy from scikit-learn's own integer images (the split's indices into them):
    p_d(k) = (#{x_d = k} + s) / (N + K s) for every pixel d and level k, whatever the batching and
    whether batches carry labels."""
    from sklearn.datasets import load_digits

    data = DigitsDataModule()
    train = data.split_dataset("train")
    images = load_digits().images.round().astype(np.int64)[np.asarray(train.indices)]  # (N, 8, 8) in 0..16
    counts = np.stack([(images == k).sum(0) for k in range(17)])  # (K, 8, 8)
    expected = (counts + smoothing) / (len(images) + 17 * smoothing)

    loader = DataLoader(train, batch_size=batch_size)  # the last batch is smaller (1297 examples)
    batches = loader if labelled else (x for x, _ in loader)
    model = FactorizedCategorical(data_shape=(1, 8, 8), num_levels=17).fit_counts(batches, smoothing=smoothing)
    probs = torch.softmax(model.logits.detach().double(), 0)[:, 0].numpy()
    np.testing.assert_allclose(probs, expected, rtol=1e-6)
    assert (counts.sum(0) == len(images)).all() and (counts == 0).any(), "unseen levels get the smoothing only"

    # The reported NLL of an image is -sum_d log p_d(x_d) under that table.
    test = data.split_dataset("test")
    x = torch.stack([test[i][0] for i in range(5)])
    levels = torch.round(x * 16).long()[:, 0].numpy()
    table = np.log(expected)
    rows, cols = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    manual = -np.array([table[level, rows, cols].sum() for level in levels])
    np.testing.assert_allclose(model.nll(x).nats.detach().numpy(), manual, rtol=1e-6)
