"""Variational autoencoders: ELBO training, IWAE evaluation, Gaussian or mixture priors."""

from lit_gen.models.vae.module import VAE

__all__ = ["VAE"]
