"""Energy-based model p(x) = exp(-E(x)) / Z trained by contrastive divergence with short-run Langevin.

Objective (maximum likelihood's gradient, with the intractable expectation under the model replaced by
samples of a short Langevin chain, Du & Mordatch 2019):

    L = E_data[E(x+)] - E_samples[E(x-)] + alpha (E(x+)^2 + E(x-)^2)

x- comes from ``langevin_steps`` steps of :func:`lit_gen.models.ebm.langevin.langevin_sample` started from
a :class:`~lit_gen.models.ebm.buffer.ReplayBuffer` (each start is fresh uniform noise with probability
``reinit_rate``); the refined states go back into the buffer. ``energy_reg`` (alpha) keeps the energies
near zero so they cannot drift without bound; parameter-gradient clipping comes from the trainer
(``trainer.gradient_clip_val``), sampler-gradient clipping from ``langevin_grad_clip``.

The network sees images mapped to [-1, 1]; the sampler keeps its state in that box. Z is intractable:
``likelihood_kind = None``; evaluation reports FID / KID / precision-recall of ``sample``, whose knob is the
number of Langevin ``steps``.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from lit_gen.core import seeds
from lit_gen.core.levels import to_signed
from lit_gen.core.runtime import gather_from_ranks
from lit_gen.core.seeds import RandomSource
from lit_gen.errors import ConfigurationError, check_sizes
from lit_gen.models.base import GenerativeModule
from lit_gen.models.ebm.buffer import ReplayBuffer
from lit_gen.models.ebm.langevin import langevin_sample
from lit_gen.models.ebm.nets import ConvEnergy, MLPEnergy

BUFFER_KEY = "lit_gen_replay_buffer"  # rank 0's chains: what sampling and evaluation continue
OTHER_RANKS_KEY = "lit_gen_replay_buffers_other_ranks"  # ranks 1.. under DDP: their own chains on resume
LOW, HIGH = -1.0, 1.0  # the model's box: data in [0, 1] maps to [-1, 1]


class EBM(GenerativeModule):
    """Unconditional energy-based model with a persistent replay buffer.

    Args:
        architecture: ``"conv"`` for images, ``"mlp"`` for flat / toy data.
        channels: base width of the conv net (hidden width of the MLP).
        depth: convs per resolution stage of the conv net (the MLP has depth + 1 hidden layers).
        langevin_steps: sampler steps per training step (short run).
        step_size: eta of the Langevin step x <- x - (eta/2) grad E + sigma eps.
        noise_std: sigma; ``None`` means sqrt(eta) (exact Langevin); image EBMs train with a small sigma.
        langevin_grad_clip: clamp each coordinate of grad_x E to +- this (``None``: no clamp).
        buffer_size: states in the replay buffer.
        reinit_rate: probability that a drawn state is replaced by fresh noise.
        energy_reg: alpha, weight of the squared-energy regulariser.
        data_noise: std of Gaussian noise added to training data (in [-1, 1] units; smooths discrete data).
        sample_steps: Langevin steps of ``sample`` (its knob ``steps``), default ``langevin_steps``.
        sample_init: where ``sample`` starts: ``"buffer"`` (continue persistent chains; what a PCD-trained
            model samples well) or ``"noise"`` (uniform; needs many more steps). A fresh buffer is noise.
        val_langevin_steps: sampler steps from buffer states for the validation objective (cheap).
    """

    likelihood_kind = None
    sampling_knob = "steps"

    def __init__(
        self,
        architecture: Literal["conv", "mlp"] = "conv",
        channels: int = 32,
        depth: int = 1,
        langevin_steps: int = 20,
        step_size: float = 20.0,
        noise_std: float | None = 0.01,
        langevin_grad_clip: float | None = None,
        buffer_size: int = 10000,
        reinit_rate: float = 0.05,
        energy_reg: float = 0.1,
        data_noise: float = 0.03,
        sample_steps: int | None = None,
        sample_init: Literal["noise", "buffer"] = "buffer",
        val_langevin_steps: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.check_unconditional()
        if sample_init not in ("noise", "buffer"):
            raise ConfigurationError(f"sample_init must be 'noise' or 'buffer', got {sample_init!r}")
        check_sizes(type(self).__name__, channels=channels, depth=depth, langevin_steps=langevin_steps,
                    buffer_size=buffer_size)
        check_sizes(type(self).__name__, 0, sample_steps=sample_steps, val_langevin_steps=val_langevin_steps)
        if step_size <= 0:
            raise ConfigurationError(f"step_size must be > 0, got {step_size}")
        if architecture == "conv":
            self.energy_net = ConvEnergy(self.data_shape, channels, depth)
        elif architecture == "mlp":
            self.energy_net = MLPEnergy(self.data_shape, channels, depth + 1)
        else:
            raise ConfigurationError(f"architecture must be 'conv' or 'mlp', got {architecture!r}")
        self.langevin_steps = langevin_steps
        self.step_size = step_size
        self.noise_std = noise_std
        self.langevin_grad_clip = langevin_grad_clip
        self.energy_reg = energy_reg
        self.data_noise = data_noise
        self.sample_steps = langevin_steps if sample_steps is None else sample_steps
        self.sample_init = sample_init
        self.val_langevin_steps = val_langevin_steps
        self.buffer = ReplayBuffer(buffer_size, self.noise, reinit_rate)

    # ------------------------------------------------------------------ pieces
    def noise(self, n: int, generator: RandomSource = None) -> Tensor:
        """Uniform noise on the model's box: the sampler's fresh starting points."""
        device = self.device if generator is None else generator.device
        u = seeds.rand((n, *self.data_shape), generator=generator, device=device)
        return LOW + (HIGH - LOW) * u

    def energy(self, x: Tensor) -> Tensor:
        """E(x) per example, x in the model's space [-1, 1]."""
        return self.energy_net(x)

    def run_sampler(self, x: Tensor, steps: int, generator: RandomSource = None) -> Tensor:
        return langevin_sample(self.energy, x, steps, self.step_size, self.noise_std,
                               grad_clip=self.langevin_grad_clip, bounds=(LOW, HIGH), generator=generator)

    def setup(self, stage: str) -> None:
        super().setup(stage)
        # ddp_spawn hands the model to its workers through shared memory; Lightning unshares parameters and
        # registered buffers, but not the chains (a plain tensor, kept out of DDP's buffer broadcast on
        # purpose), so every rank would write into one store. Each process keeps a private copy.
        self.buffer.samples = self.buffer.samples.clone()

    def negatives(self, n: int, steps: int, update_buffer: bool, generator: RandomSource = None) -> Tensor:
        """Sampler states from the buffer after ``steps`` steps; written back (and reinitialised) in training."""
        if self.buffer.device != self.device:
            self.buffer.to(self.device)
        draw = self.buffer.draw(n, generator, reinit=update_buffer)
        x = self.run_sampler(draw.samples, steps, generator)
        if update_buffer:
            self.buffer.update(draw.indices, x)
        return x

    # ---------------------------------------------------------------- protocol
    def loss(self, x: Tensor, labels: Tensor | None = None,
             generator: RandomSource = None) -> dict[str, Tensor]:
        """The contrastive-divergence objective; at validation with ``val_langevin_steps`` steps from
        buffer states, without writing back (so validation never changes training)."""
        positive = to_signed(x)
        if self.training and self.data_noise > 0:
            positive = positive + self.data_noise * torch.randn_like(positive)
        steps = self.langevin_steps if self.training else self.val_langevin_steps
        negative = self.negatives(x.shape[0], steps, update_buffer=self.training, generator=generator)
        energies = self.energy(torch.cat([positive, negative]))
        e_pos, e_neg = energies[: x.shape[0]], energies[x.shape[0]:]
        cd = e_pos.mean() - e_neg.mean()
        reg = (e_pos.pow(2) + e_neg.pow(2)).mean()
        return {"loss": cd + self.energy_reg * reg, "contrastive_divergence": cd, "energy_reg": reg,
                "data_energy": e_pos.mean(), "sample_energy": e_neg.mean()}

    @torch.no_grad()
    def sample(self, num_samples: int, *, labels: Tensor | None = None,
               generator: RandomSource = None, steps: int | None = None,
               init: Literal["noise", "buffer"] | None = None) -> Tensor:
        """``steps`` Langevin steps (default ``sample_steps``) from uniform noise or from buffer states."""
        steps = self.sample_steps if steps is None else steps
        init = init or self.sample_init
        if init == "noise":
            x = self.noise(num_samples, generator).to(self.device)
        elif init == "buffer":
            if self.buffer.device != self.device:
                self.buffer.to(self.device)
            x = self.buffer.draw(num_samples, generator, reinit=False).samples
        else:
            raise ConfigurationError(f"init must be 'noise' or 'buffer', got {init!r}")
        x = (self.run_sampler(x, steps, generator) - LOW) / (HIGH - LOW)
        x = x.clamp(0.0, 1.0)
        return self.snap_to_levels(x)

    # ------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        # Under DDP every rank runs its own persistent chains (this hook runs on all ranks).
        buffers = gather_from_ranks(self.buffer.state_dict())
        checkpoint[BUFFER_KEY] = buffers[0]
        if len(buffers) > 1:
            checkpoint[OTHER_RANKS_KEY] = buffers[1:]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_load_checkpoint(checkpoint)
        if BUFFER_KEY not in checkpoint:
            return
        buffers = [checkpoint[BUFFER_KEY], *checkpoint.get(OTHER_RANKS_KEY, [])]
        trainer = self._trainer
        fitting = trainer is not None and trainer.state.fn == "fit"
        rank, world = (trainer.global_rank, trainer.world_size) if fitting else (0, 1)
        # A fit resumed on as many processes: each rank its own chains. Otherwise (another process count,
        # or test / validate / predict) rank 0's chains: on every rank, so evaluation and predicted samples
        # do not depend on the number of processes; a fit's fresh-noise reinitialisation diversifies them.
        self.buffer.load_state_dict(buffers[rank] if len(buffers) == world else buffers[0])
