"""Gaussian diffusion: noise schedules, DDPM / DDIM and few-step ODE samplers (DPM-Solver++ 2M, Heun), the
variational bound and the probability-flow ODE likelihood (the U-Net backbone lives in lit_gen.nn.unet,
shared with other families; re-exported here)."""

from lit_gen.models.diffusion.module import Diffusion
from lit_gen.models.diffusion.schedule import NoiseSchedule
from lit_gen.nn.unet import UNet

__all__ = ["Diffusion", "NoiseSchedule", "UNet"]
