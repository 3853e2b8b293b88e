"""Gaussian diffusion: noise schedules, DDPM / DDIM samplers, the variational bound (the U-Net backbone
lives in lit_gen.nn.unet, shared with other families; re-exported here)."""

from lit_gen.models.diffusion.module import Diffusion
from lit_gen.models.diffusion.schedule import NoiseSchedule
from lit_gen.nn.unet import UNet

__all__ = ["Diffusion", "NoiseSchedule", "UNet"]
