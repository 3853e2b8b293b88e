"""Evaluation's full-float32 switch sets cuDNN's convolution precision for its block only."""

from __future__ import annotations

import pytest
import torch

from lit_gen.core.numerics import full_float32_convolutions

conv = torch.backends.cudnn.conv


@pytest.mark.parametrize("before", ["tf32", "ieee"])
def test_the_block_runs_in_full_float32_and_the_setting_comes_back(before):
    original = conv.fp32_precision
    try:
        conv.fp32_precision = before
        with full_float32_convolutions():
            assert conv.fp32_precision == "ieee"
        assert conv.fp32_precision == before
        with pytest.raises(RuntimeError), full_float32_convolutions():
            raise RuntimeError("an evaluation that fails")
        assert conv.fp32_precision == before
        with full_float32_convolutions(allow_tf32=True):
            assert conv.fp32_precision == "tf32"
        assert conv.fp32_precision == before
    finally:
        conv.fp32_precision = original
