"""Two-stage latent models: a VQ-VAE first stage and a Gated PixelCNN prior over its codes."""

from lit_gen.models.latent.prior import VQVAEPixelCNN
from lit_gen.models.latent.quantizer import VectorQuantizer
from lit_gen.models.latent.vqvae import VQVAE

__all__ = ["VQVAE", "VQVAEPixelCNN", "VectorQuantizer"]
