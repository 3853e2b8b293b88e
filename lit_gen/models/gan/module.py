"""Generative adversarial networks with Lightning 2.x manual optimization.

A generator G maps z ~ N(0, I) (and a class, when conditional) to an image in [-1, 1]; a discriminator /
critic D scores images. Each training batch takes one discriminator step on (real batch, G(z)) and, every
``n_critic`` batches, one generator step, each with its own optimizer (and optional scheduler) from YAML:

- ``loss: non_saturating`` (DCGAN), ``wasserstein`` (with ``gradient_penalty: 10``: WGAN-GP) or ``hinge``
  (with ``spectral_norm: true``: SNGAN); objectives in :mod:`lit_gen.models.gan.losses`.
- ``r1_penalty: gamma`` adds gamma/2 E||grad_x D(x)||^2 on real data to the discriminator loss.

No likelihood: ``likelihood_kind = None``; evaluation reports FID / KID / precision-recall of ``sample``.
``sample`` draws z from a normal truncated to [-truncation, truncation] (the sampling knob: smaller is
less diverse and cleaner; ``None`` is the untruncated prior).

Note: ``trainer.global_step`` counts optimizer steps, so it grows by 2 per batch on which the generator
steps (discriminator + generator). ``max_steps`` counts both.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.strategies import DDPStrategy
from torch import Tensor

from lit_gen.core import seeds
from lit_gen.core.levels import from_signed, to_signed
from lit_gen.core.seeds import RandomSource
from lit_gen.errors import ConfigurationError, LitGenError, check_sizes
from lit_gen.models.base import GenerativeModule
from lit_gen.models.gan.losses import ADVERSARIAL_LOSSES, gradient_penalty, r1_penalty
from lit_gen.models.gan.nets import build_networks

# Init arguments that are factories, not hyperparameters: kept out of checkpoints (weights_only loading).
_FACTORY_ARGS = ("generator_optimizer", "discriminator_optimizer", "generator_lr_scheduler",
                 "discriminator_lr_scheduler")


def default_gan_optimizer(params: Any) -> torch.optim.Optimizer:
    """Adam with the DCGAN settings (lr 2e-4, beta1 0.5)."""
    return torch.optim.Adam(params, lr=2e-4, betas=(0.5, 0.999))


def truncated_normal(shape: tuple[int, ...], truncation: float | None, generator: RandomSource,
                     device: torch.device) -> Tensor:
    """N(0, I) draws, restricted to [-truncation, truncation] per coordinate by inverse-CDF sampling.

    One pass (no rejection loop), so the draw depends on the generator only, never on how many tries it took.
    """
    if truncation is None:
        return seeds.randn(shape, generator=generator, device=device)
    if truncation <= 0:
        raise ConfigurationError(f"truncation must be > 0 (or None for no truncation), got {truncation}")
    u = seeds.rand(shape, generator=generator, device=device, dtype=torch.float64)
    lower = 0.5 * math.erfc(truncation / math.sqrt(2.0))  # Phi(-truncation)
    p = lower + u * (1.0 - 2.0 * lower)
    return (math.sqrt(2.0) * torch.erfinv(2.0 * p - 1.0)).float()


class GAN(GenerativeModule):
    """A GAN family member chosen by its loss, penalties and networks.

    Args:
        latent_dim: size of z.
        architecture: ``"dcgan"`` or ``"resnet"`` generator and discriminator (:mod:`.nets`).
        generator_channels / discriminator_channels: width at full resolution (doubles per stage, capped 8x).
        loss: ``"non_saturating"``, ``"wasserstein"`` or ``"hinge"``.
        spectral_norm: spectral normalisation on every discriminator layer.
        gradient_penalty: lambda of WGAN-GP's penalty (0 = off; 10 in the paper).
        r1_penalty: gamma of the R1 penalty on real data (0 = off).
        n_critic: discriminator steps per generator step (5 for WGAN-GP).
        gradient_clip_norm: clip each network's gradient norm before its step (None = off). GANs use
            Lightning's manual optimization, where ``trainer.gradient_clip_val`` and
            ``trainer.accumulate_grad_batches`` do not apply; this is the GAN's clipping.
        generator_optimizer / discriminator_optimizer: optimizer factories (default Adam, lr 2e-4, betas
            (0.5, 0.999)). The base ``optimizer`` argument is not used by this family.
        generator_lr_scheduler / discriminator_lr_scheduler: optional scheduler factories, stepped every
            ``lr_scheduler_interval`` (``"epoch"`` or ``"step"``: a step is a batch).
    """

    likelihood_kind = None
    sampling_knob = "truncation"
    hparams_ignore = GenerativeModule.hparams_ignore + _FACTORY_ARGS
    factory_attributes = GenerativeModule.factory_attributes + _FACTORY_ARGS

    def __init__(
        self,
        latent_dim: int = 64,
        architecture: Literal["dcgan", "resnet"] = "dcgan",
        generator_channels: int = 64,
        discriminator_channels: int = 64,
        loss: Literal["non_saturating", "wasserstein", "hinge"] = "non_saturating",
        spectral_norm: bool = False,
        gradient_penalty: float = 0.0,
        r1_penalty: float = 0.0,
        n_critic: int = 1,
        gradient_clip_norm: float | None = None,
        generator_optimizer: OptimizerCallable | None = None,
        discriminator_optimizer: OptimizerCallable | None = None,
        generator_lr_scheduler: LRSchedulerCallable | None = None,
        discriminator_lr_scheduler: LRSchedulerCallable | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if loss not in ADVERSARIAL_LOSSES:
            raise ConfigurationError(f"loss must be one of {', '.join(ADVERSARIAL_LOSSES)}, got {loss!r}")
        if gradient_clip_norm is not None and gradient_clip_norm <= 0:
            raise LitGenError(f"gradient_clip_norm must be > 0 or null, got {gradient_clip_norm}")
        self.gradient_clip_norm = gradient_clip_norm
        check_sizes(type(self).__name__, latent_dim=latent_dim, generator_channels=generator_channels,
                    discriminator_channels=discriminator_channels, n_critic=n_critic)
        for name, weight in (("gradient_penalty", gradient_penalty), ("r1_penalty", r1_penalty)):
            if weight < 0:
                raise ConfigurationError(f"{name} must be >= 0, got {weight}")
        self.automatic_optimization = False
        self.latent_dim = latent_dim
        self.adversarial = ADVERSARIAL_LOSSES[loss]
        self.gradient_penalty_weight = gradient_penalty
        self.r1_weight = r1_penalty
        self.n_critic = n_critic
        self.generator_optimizer = generator_optimizer or default_gan_optimizer
        self.discriminator_optimizer = discriminator_optimizer or default_gan_optimizer
        self.generator_lr_scheduler = generator_lr_scheduler
        self.discriminator_lr_scheduler = discriminator_lr_scheduler
        num_classes = self.num_classes if self.conditional else None
        self.generator, self.discriminator = build_networks(
            architecture, self.data_shape, latent_dim, generator_channels, discriminator_channels, num_classes,
            spectral_norm)

    # ------------------------------------------------------------------ pieces
    def _labels(self, labels: Tensor | None) -> Tensor | None:
        return self.model_labels(labels)

    def latent(self, num: int, truncation: float | None = None, generator: RandomSource = None) -> Tensor:
        return truncated_normal((num, self.latent_dim), truncation, generator, self.device)

    def generate(self, num: int, labels: Tensor | None = None, truncation: float | None = None,
                 generator: RandomSource = None) -> Tensor:
        """G(z) in the networks' space [-1, 1]."""
        return self.generator(self.latent(num, truncation, generator), self._labels(labels))

    def score(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """D's raw scores of images in [-1, 1], shape (B,)."""
        return self.discriminator(x, self._labels(labels))

    def discriminator_terms(self, x: Tensor, labels: Tensor | None = None, penalties: bool = True,
                            generator: RandomSource = None) -> dict[str, Tensor]:
        """Discriminator objective on a data batch x in [0, 1] and as many generated images."""
        real = to_signed(x)
        fake = self.generate(x.shape[0], labels, generator=generator).detach()
        real_scores, fake_scores = self.score(real, labels), self.score(fake, labels)
        adversarial = self.adversarial.discriminator(real_scores, fake_scores)
        terms = {"loss": adversarial, "adversarial": adversarial, "real_score": real_scores.mean(),
                 "fake_score": fake_scores.mean()}
        scores_fn = lambda images: self.score(images, labels)
        if penalties and self.gradient_penalty_weight > 0:
            terms["gradient_penalty"] = gradient_penalty(scores_fn, real, fake)
            terms["loss"] = terms["loss"] + self.gradient_penalty_weight * terms["gradient_penalty"]
        if penalties and self.r1_weight > 0:
            terms["r1_penalty"] = r1_penalty(scores_fn, real)
            terms["loss"] = terms["loss"] + 0.5 * self.r1_weight * terms["r1_penalty"]
        return terms

    def generator_loss(self, num: int, labels: Tensor | None = None,
                       generator: RandomSource = None) -> Tensor:
        return self.adversarial.generator(self.score(self.generate(num, labels, generator=generator), labels))

    # ---------------------------------------------------------------- protocol
    def loss(self, x: Tensor, labels: Tensor | None = None,
             generator: RandomSource = None) -> dict[str, Tensor]:
        """Validation: the discriminator's adversarial loss on held-out data (no penalties: cheap), with the
        generator's loss and the mean scores; tracks the D/G balance, not sample quality (use val/fid)."""
        terms = self.discriminator_terms(x, labels, penalties=False, generator=generator)
        terms["generator_loss"] = self.generator_loss(x.shape[0], labels, generator)
        del terms["adversarial"]
        return terms

    @torch.no_grad()
    def sample(self, num_samples: int, *, labels: Tensor | None = None,
               generator: RandomSource = None, truncation: float | None = None) -> Tensor:
        """Images in [0, 1] (on the data's levels when discrete) from z truncated to +-``truncation``."""
        z = self.draw_latents(num_samples, generator=generator, truncation=truncation)
        return self.decode_latents(z, labels=labels)

    def draw_latents(self, num_samples: int, *, generator: RandomSource = None,
                     truncation: float | None = None, **knobs: Any) -> Tensor:
        return self.latent(num_samples, truncation, generator)

    def decode_latents(self, z: Tensor, *, labels: Tensor | None = None, generator: RandomSource = None,
                       **knobs: Any) -> Tensor:
        if labels is None:
            labels = self.default_labels(z.shape[0])
        x = from_signed(self.generator(z, self._labels(labels))).clamp(0.0, 1.0)
        return self.snap_to_levels(x)

    # ------------------------------------------------------------ Lightning
    def setup(self, stage: str) -> None:
        super().setup(stage)
        # Each backward of a GAN step reaches one network only, which plain DDP reads as a missing
        # gradient and stops on. Tell the DDP wrapper (built after this hook) to expect that, so the
        # same YAML works with `strategy: ddp` as on one device.
        strategy = self.trainer.strategy if self._trainer is not None else None
        if isinstance(strategy, DDPStrategy):
            strategy._ddp_kwargs["find_unused_parameters"] = True

    def training_step(self, batch: Any, batch_idx: int) -> None:
        g_opt, d_opt = self.optimizers()
        x, labels = self.split_batch(batch)
        with self.toggled_optimizer(d_opt):
            d_terms = self.discriminator_terms(x, labels)
            self.check_finite(d_terms["loss"])
            d_opt.zero_grad()
            self.manual_backward(d_terms["loss"])
            d_opt.step()  # clipped in on_before_optimizer_step
        logged = {"discriminator_loss" if k == "loss" else k: v.detach() for k, v in d_terms.items()}
        if batch_idx % self.n_critic == 0:
            with self.toggled_optimizer(g_opt):
                g_loss = self.generator_loss(x.shape[0], labels)
                self.check_finite(g_loss)
                g_opt.zero_grad()
                self.manual_backward(g_loss)
                g_opt.step()
            logged["generator_loss"] = g_loss.detach()
        self.log_train_terms(logged, x.shape[0])
        if self.lr_scheduler_interval == "step":
            self._step_schedulers()

    def on_before_optimizer_step(self, optimizer: Any) -> None:
        # Lightning calls this inside ``optimizer.step()`` after a 16-mixed GradScaler has unscaled the
        # gradients: clipping between manual_backward and step would clip the scaled ones.
        if self.gradient_clip_norm is not None:
            self.clip_gradients(optimizer, gradient_clip_val=self.gradient_clip_norm, gradient_clip_algorithm="norm")

    def on_train_epoch_end(self) -> None:
        super().on_train_epoch_end()
        if self.lr_scheduler_interval == "epoch":
            self._step_schedulers()

    def _step_schedulers(self) -> None:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            scheduler.step()

    def configure_optimizers(self) -> Any:
        """[generator, discriminator] optimizers (this order), each with its scheduler when configured."""
        configs = []
        for factory, sched_factory, net in (
            (self.generator_optimizer, self.generator_lr_scheduler, self.generator),
            (self.discriminator_optimizer, self.discriminator_lr_scheduler, self.discriminator),
        ):
            optimizer = factory(net.parameters())
            config: dict[str, Any] = {"optimizer": optimizer}
            if sched_factory is not None:
                scheduler = sched_factory(optimizer)
                if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                    raise LitGenError("GAN: ReduceLROnPlateau needs a metric; use a schedule of the step or epoch")
                config["lr_scheduler"] = {"scheduler": scheduler, "interval": self.lr_scheduler_interval}
            configs.append(config)
        return configs
