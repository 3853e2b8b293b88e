"""Fixtures of every family's tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread: family tests run tiny nets (8x8 images, small batches) many times, where a
    second thread costs more in hand-offs than it saves, and on a busy 2-core machine much more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
