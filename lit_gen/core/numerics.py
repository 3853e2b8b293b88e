"""Full float32 arithmetic for the numbers lit-gen reports, whatever the GPU's speed settings.

From Ampere on, cuDNN runs float32 convolutions in TF32 by default (10-bit mantissa products), which moves
a flow's log-density and the Inception features by amounts a paper's table would show (docs/evaluation.md
has the measured sizes). Evaluation (likelihoods, Inception features) runs under
:func:`full_float32_convolutions`; training keeps the user's setting.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["full_float32_convolutions"]


@contextlib.contextmanager
def full_float32_convolutions(allow_tf32: bool = False):
    """cuDNN float32 convolutions in full float32 (``allow_tf32=False``) for the block; the previous setting
    is restored after."""
    conv = torch.backends.cudnn.conv
    old = conv.fp32_precision
    conv.fp32_precision = "tf32" if allow_tf32 else "ieee"
    try:
        yield
    finally:
        conv.fp32_precision = old
