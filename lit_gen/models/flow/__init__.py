"""Normalizing flows: Glow and RealNVP built from invertible transforms, exact NLL, temperature sampling."""

from lit_gen.models.flow.module import Glow, NormalizingFlow, RealNVP

__all__ = ["Glow", "NormalizingFlow", "RealNVP"]
