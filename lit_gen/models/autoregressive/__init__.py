"""Autoregressive family: MADE (masked MLP) and Gated PixelCNN, exact likelihood by the chain rule."""

from lit_gen.models.autoregressive.heads import GaussianMixtureLikelihood, build_head
from lit_gen.models.autoregressive.made import MADENet, MaskedLinear
from lit_gen.models.autoregressive.module import MADE, AutoregressiveModule, GatedPixelCNN
from lit_gen.nn.pixelcnn import GatedPixelCNNNet

__all__ = [
    "MADE",
    "AutoregressiveModule",
    "GatedPixelCNN",
    "GatedPixelCNNNet",
    "GaussianMixtureLikelihood",
    "MADENet",
    "MaskedLinear",
    "build_head",
]
