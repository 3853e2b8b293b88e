"""Fixtures of every family's tests."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(scope="package", autouse=True)
def _one_thread():
    """One intra-op thread: family tests run tiny nets (8x8 images, small batches) many times, where a
    second thread costs more in hand-offs than it saves, and on a busy 2-core machine much more.

    Package-scoped so that it is set up before the module-scoped fixtures that train a model for several
    tests (pytest sets up wider scopes first); a function-scoped one came after them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
