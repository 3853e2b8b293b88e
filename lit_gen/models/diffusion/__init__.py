"""Gaussian diffusion: noise schedules, DDPM / DDIM samplers, the variational bound, a U-Net backbone."""

from lit_gen.models.diffusion.module import Diffusion
from lit_gen.models.diffusion.schedule import NoiseSchedule
from lit_gen.models.diffusion.unet import UNet

__all__ = ["Diffusion", "NoiseSchedule", "UNet"]
