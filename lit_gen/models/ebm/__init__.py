"""Energy-based models: contrastive divergence with short-run Langevin sampling and a replay buffer;
the number of Langevin steps is the sampling knob."""

from lit_gen.models.ebm.module import EBM

__all__ = ["EBM"]
