"""Two-stage latent models: a VQ-VAE first stage and a Gated PixelCNN prior over its codes; a continuous
autoencoder first stage and a diffusion (or flow matching) model of its scaled latents."""

from lit_gen.models.latent.autoencoder import Autoencoder
from lit_gen.models.latent.latent_diffusion import LatentDiffusion
from lit_gen.models.latent.prior import VQVAEPixelCNN
from lit_gen.models.latent.quantizer import VectorQuantizer
from lit_gen.models.latent.vqvae import VQVAE

__all__ = ["VQVAE", "Autoencoder", "LatentDiffusion", "VQVAEPixelCNN", "VectorQuantizer"]
