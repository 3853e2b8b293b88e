"""InceptionV3 (TF 2015-12-05) features for FID/KID/precision-recall, resolvable offline.

The network is torch-fidelity's ``FeatureExtractorInceptionV3`` ('inception-v3-compat'), so features are
bit-for-bit what ``torch_fidelity.calculate_metrics`` sees. Where its weights come from, online or
offline, is :mod:`lit_gen.evaluation.inception_weights`.
"""

from __future__ import annotations

import os
import threading

import torch

from lit_gen.core.numerics import full_float32_convolutions
from lit_gen.evaluation.inception_weights import (
    EXTRACTOR_ID,
    FEATURE_DIM,
    TORCH_FIDELITY_WEIGHTS_NAME,
    convert_torchscript_inception,
    extractor_cache_id,
    find_fid_helper_weights,
    resolve_inception_weights,
)

__all__ = [
    "EXTRACTOR_ID",
    "PREPROCESSING",
    "TORCH_FIDELITY_WEIGHTS_NAME",
    "InceptionFeatures",
    "convert_torchscript_inception",
    "extractor_cache_id",
    "find_fid_helper_weights",
    "get_inception",
    "quantize_images",
    "resolve_inception_weights",
]

#: What ``InceptionFeatures.forward`` does to its input before the network (part of feature-cache keys):
#: round to uint8 as PNG holds it, repeat grayscale to RGB, torch-fidelity's TF1 bilinear resize to 299.
#: Change it whenever that preprocessing changes, so cached real features are recomputed.
PREPROCESSING = "u8round-gray3-tf1resize299"

# --------------------------------------------------------------------------------------------------
# Feature extraction
# --------------------------------------------------------------------------------------------------


def quantize_images(images: torch.Tensor) -> torch.Tensor:
    """Float [0,1] images -> uint8 exactly as ``torchvision.utils.save_image`` writes them to PNG.

    Using the same rounding means features of in-memory samples equal features of the saved files.
    uint8 input is returned as is.
    """
    if images.dtype == torch.uint8:
        return images
    if not images.is_floating_point():
        raise TypeError(f"expected float images in [0, 1] or uint8, got dtype {images.dtype}")
    return images.mul(255).add_(0.5).clamp_(0, 255).to(torch.uint8)


class InceptionFeatures(torch.nn.Module):
    """2048-d pool features of the TF-FID InceptionV3, exactly as torch-fidelity computes them.

    Input: float images in [0, 1] (or uint8), shape (N, C, H, W) with C in {1, 3}, any H, W; torch-fidelity
    resizes to 299 itself (TF1-compatible bilinear), so we must not resize here.
    """

    extractor_id: str = EXTRACTOR_ID
    preprocessing: str = PREPROCESSING

    def __init__(self, weights_path: str | os.PathLike | None = None, allow_tf32: bool = False):
        super().__init__()
        # cuDNN's default on Ampere and later GPUs is TF32 for float32 convolutions: GPU features would differ
        # from the CPU's and the reference's. Kept as a switch only to measure that difference.
        self.allow_tf32 = allow_tf32
        # Imported lazily: torch_fidelity pulls in its registries and datasets at import time.
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

        self.weights_path = resolve_inception_weights(weights_path)
        self.extractor = FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=str(self.weights_path)
        )
        self.extractor.eval().requires_grad_(False)
        self.extractor_id = EXTRACTOR_ID
        self.cache_id = extractor_cache_id(self.weights_path)  # hashed once per process and file version

    @property
    def device(self) -> torch.device:
        return next(self.extractor.parameters()).device

    def train(self, mode: bool = True):
        # Batch-norm statistics are the TF graph's; the network must never leave eval mode.
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        if images.dim() != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"expected images of shape (N, 1|3, H, W), got {tuple(images.shape)}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        device = self.device
        out = []
        # Autocast would run the convs in half precision and TF32 in 10-bit-mantissa float32; the reference
        # network is float32 throughout, so force both off.
        with torch.autocast(device_type=device.type, enabled=False), full_float32_convolutions(self.allow_tf32):
            for chunk in images.split(batch_size):
                x = quantize_images(chunk.detach()).to(device, non_blocking=True)
                if x.shape[1] == 1:
                    x = x.expand(-1, 3, -1, -1)
                (feats,) = self.extractor(x.contiguous())
                out.append(feats.to(torch.float32))
        if not out:
            return torch.empty(0, FEATURE_DIM, dtype=torch.float32, device=device)
        return torch.cat(out)


_INCEPTION_CACHE: dict[tuple[str, str], InceptionFeatures] = {}
_INCEPTION_LOCK = threading.Lock()


def get_inception(
    weights_path: str | os.PathLike | None = None, device: str | torch.device | None = None
) -> InceptionFeatures:
    """Process-wide shared InceptionFeatures (building it costs seconds and ~100 MB), one per file+device."""
    resolved = resolve_inception_weights(weights_path)
    dev = torch.device(device) if device is not None else torch.device("cpu")
    key = (str(resolved.resolve()), str(dev))
    with _INCEPTION_LOCK:
        net = _INCEPTION_CACHE.get(key)
        if net is None:
            net = InceptionFeatures(resolved).to(dev)
            _INCEPTION_CACHE[key] = net
        return net
