"""Generative adversarial networks: non-saturating (DCGAN), WGAN-GP and hinge/SNGAN objectives, manual
optimization with a generator and a discriminator optimizer, truncation as the sampling knob."""

from lit_gen.models.gan.module import GAN

__all__ = ["GAN"]
