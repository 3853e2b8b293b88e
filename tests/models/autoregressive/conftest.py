"""Fixtures of the autoregressive tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    """These tests run tiny nets thousands of times (one pass per sampled dimension): intra-op threads
    only add synchronisation there, and on a busy machine a second thread's spin-waits cost 10x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
