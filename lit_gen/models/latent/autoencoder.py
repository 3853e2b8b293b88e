"""A continuous first stage: a convolutional VAE with a small KL weight (Rombach et al. 2022's KL-regularized
autoencoder), images <-> a ``latent_channels x h x w`` map of Gaussian latents.

Training minimises, per example,

    -log p(x | z)  +  kl_weight * KL(q(z | x) || N(0, I)),      z ~ q(z | x) = N(mean(x), diag(var(x)))

with a discrete decoder p(x | z) in the data's own K levels (categorical, discretized logistic mixture or
Bernoulli), so the reconstruction term is nats of the discrete data. A small ``kl_weight`` keeps the latents
close to deterministic codes of the images (sharp reconstructions) while the KL term keeps their scale and
spread in check; the second stage (:mod:`lit_gen.models.latent.latent_diffusion`) models their distribution.

**Latent scale.** The buffer ``latent_scale`` is the standard deviation of the encoder's latent means over the
training data, all channels and positions pooled (one number, as Rombach et al.'s scale factor), updated at
every training step from the step's batch: a running mean of the first and second moments of the means,
exact (a plain average over the steps so far) for the first ``1 / (1 - scale_momentum)`` steps and an
exponential average after, so it follows the encoder as it trains and every checkpoint holds the value for
its own weights. Under DDP the moments are summed over the ranks (the global batch's), so every rank holds
the same value. A second stage divides latents by it: unit variance, whatever scale the encoder settled on.

**Likelihood kind "bound".** ``nll`` is the negative ELBO with the KL at weight 1, ``-log p(x | z) +
KL(q || N(0, I))`` at one draw of z: an upper bound on ``-log p(x)`` (in expectation over the draw), which the
small ``kl_weight`` of training leaves loose. ``sample`` decodes z ~ N(0, I): a look at the decoder, not
samples of a model of the data (the latents of real images are not N(0, I) with a small KL weight; the second
stage learns their distribution).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from lit_gen.core import seeds
from lit_gen.core.levels import to_signed
from lit_gen.core.likelihood import NLL
from lit_gen.core.records import NATS
from lit_gen.core.seeds import RandomSource
from lit_gen.errors import ConfigurationError, check_sizes
from lit_gen.models.base import GenerativeModule
from lit_gen.models.latent.nets import CodeDecoder, CodeEncoder, halved_sizes
from lit_gen.models.latent.quantizer import all_ranks_sum
from lit_gen.models.latent.vqvae import DECODES, DISCRETE_LIKELIHOODS
from lit_gen.nn.distributions import build_likelihood

#: log-variances of q(z | x) are clamped to this range (a saturated encoder cannot overflow exp).
LOG_VAR_RANGE = (-30.0, 20.0)


class Autoencoder(GenerativeModule):
    """Conv encoder -> Gaussian latent map -> conv decoder with a discrete likelihood.

    Args:
        latent_channels: channels of the latent map (the second stage models ``latent_channels x h x w``).
        channels: width of the encoder and decoder.
        num_downsamples: stride-2 stages; the latent map is the image halved this many times (rounded up).
        num_res_blocks: residual blocks per resolution.
        likelihood: decoder p(x|z): ``"categorical"``, ``"logistic_mixture"`` or ``"bernoulli"`` (K = 2).
        num_mixtures: components of the discretized logistic mixture.
        kl_weight: weight of the KL term in training (1 would be a plain VAE).
        scale_momentum: momentum of the running moments behind ``latent_scale`` (see the module docstring).
    """

    likelihood_kind = "bound"
    term_units = {"recon_nats": NATS, "kl_nats": NATS, "neg_elbo_nats": NATS}

    def __init__(
        self,
        latent_channels: int = 4,
        channels: int = 64,
        num_downsamples: int = 2,
        num_res_blocks: int = 1,
        likelihood: Literal["categorical", "logistic_mixture", "bernoulli"] = "categorical",
        num_mixtures: int = 5,
        kl_weight: float = 1e-3,
        scale_momentum: float = 0.99,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.check_unconditional()
        check_sizes(type(self).__name__, latent_channels=latent_channels, channels=channels,
                    num_mixtures=num_mixtures)
        check_sizes(type(self).__name__, 0, num_downsamples=num_downsamples, num_res_blocks=num_res_blocks)
        if len(self.data_shape) != 3 or self.num_levels is None:
            raise ConfigurationError(f"Autoencoder needs discrete images (C, H, W) with num_levels; got shape "
                                     f"{self.data_shape}, num_levels={self.num_levels}")
        if likelihood not in DISCRETE_LIKELIHOODS:
            raise ConfigurationError(f"Autoencoder: likelihood must be one of {', '.join(DISCRETE_LIKELIHOODS)}, "
                                     f"got {likelihood!r}")
        if kl_weight < 0:
            raise ConfigurationError(f"Autoencoder: kl_weight must be >= 0, got {kl_weight}")
        if not 0.0 <= scale_momentum < 1.0:
            raise ConfigurationError(f"Autoencoder: scale_momentum must be in [0, 1), got {scale_momentum}")
        self.kl_weight, self.scale_momentum = kl_weight, scale_momentum
        self.frozen = False
        self.likelihood = build_likelihood(likelihood, self.num_levels, num_mixtures)
        self.latent_shape = (latent_channels, *halved_sizes(self.data_shape[1:], num_downsamples)[-1])
        self.encoder = CodeEncoder(self.data_shape[0], 2 * latent_channels, channels, num_downsamples,
                                   num_res_blocks)
        self.decoder = CodeDecoder(self.data_shape, latent_channels, self.likelihood.params_per_dim, channels,
                                   num_downsamples, num_res_blocks)
        # Float buffers only: weight averaging (EMA) lerps every buffer, which would truncate an integer one.
        self.register_buffer("latent_scale", torch.ones(()))
        self.register_buffer("latent_moments", torch.zeros(2))  # running E[m], E[m^2] of the latent means m
        self.register_buffer("latent_updates", torch.zeros(()))  # steps averaged so far (capped)

    def freeze_first_stage(self) -> Autoencoder:
        """No gradients and no latent-scale updates, in either mode. Its nets behave alike in train and eval
        mode (group norm, no dropout), so a second stage can leave it in its own mode."""
        self.requires_grad_(False)
        self.frozen = True
        return self

    # ------------------------------------------------------------------ pieces
    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of q(z | x), each ``(B, *latent_shape)``; the encoder sees x in [-1, 1]."""
        mean, log_var = self.encoder(to_signed(x).to(self.dtype)).chunk(2, dim=1)
        return mean, log_var.clamp(*LOG_VAR_RANGE)

    def encode_mean(self, x: Tensor) -> Tensor:
        """The latent mean of x, ``(B, *latent_shape)`` (float32): deterministic."""
        return self.encode(x)[0].float()

    def scale_latents(self, z: Tensor) -> Tensor:
        """Latents divided by ``latent_scale``: unit standard deviation over the training data."""
        return z / self.latent_scale

    def unscale_latents(self, u: Tensor) -> Tensor:
        """The inverse of :meth:`scale_latents`."""
        return u * self.latent_scale

    @torch.no_grad()
    def update_latent_scale(self, mean: Tensor) -> None:
        """One training step's update of the running moments of the latent means, summed over the ranks."""
        sums = torch.stack([mean.sum(), mean.pow(2).sum(), torch.tensor(float(mean.numel()), device=mean.device)])
        sums = all_ranks_sum(sums.double())
        batch_moments = (sums[:2] / sums[2]).to(self.latent_moments.dtype)
        # 1 / (n + 1) while n < 1 / (1 - momentum): the plain average of the steps so far, then the EMA.
        rate = max(1.0 - self.scale_momentum, 1.0 / (float(self.latent_updates) + 1.0))
        self.latent_moments.lerp_(batch_moments, rate)
        self.latent_updates.copy_(torch.clamp(self.latent_updates + 1, max=1.0 / (1.0 - self.scale_momentum)))
        first, second = self.latent_moments.double()
        self.latent_scale.copy_((second - first**2).clamp_min(1e-12).sqrt())

    def log_likelihood(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x | z) per example, summed over dimensions (nats, float32)."""
        return self.likelihood.log_prob(x, self.decoder(z.to(self.dtype))).flatten(1).sum(1)

    def elbo_terms(self, x: Tensor, generator: RandomSource = None) -> tuple[Tensor, Tensor, Tensor]:
        """(latent means, -log p(x | z) with one reparameterized z ~ q, KL(q || N(0, I))) per example."""
        mean, log_var = self.encode(x)
        eps = seeds.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + torch.exp(0.5 * log_var) * eps
        recon = -self.log_likelihood(x, z)
        kl = 0.5 * (mean.float()**2 + log_var.float().exp() - 1.0 - log_var.float()).flatten(1).sum(1)
        return mean, recon, kl

    def decode_latent(self, z: Tensor, *, generator: RandomSource = None, decode: str = "mean") -> Tensor:
        """Images of a latent map ``(B, *latent_shape)``: the decoder's ``"mean"`` snapped to the data's
        levels, or a ``"sample"`` of p(x | z)."""
        if decode not in DECODES:
            raise ConfigurationError(f"decode must be 'mean' or 'sample', got {decode!r}")
        params = self.decoder(z.to(self.dtype))
        x = self.likelihood.mean(params) if decode == "mean" else self.likelihood.sample(params, 1.0, generator)
        return self.snap_to_levels(x)

    # ---------------------------------------------------------------- protocol
    def loss(self, x: Tensor, labels: Tensor | None = None,
             generator: RandomSource = None) -> dict[str, Tensor]:
        mean, recon, kl = self.elbo_terms(x, generator)
        terms = {"loss": (recon + self.kl_weight * kl).mean(), "recon_nats": recon.mean().detach(),
                 "kl_nats": kl.mean().detach(), "neg_elbo_nats": (recon + kl).mean().detach()}
        if self.training and not self.frozen:
            self.update_latent_scale(mean.detach().float())
            terms["latent_scale"] = self.latent_scale.detach().clone()
        return terms

    @torch.no_grad()
    def nll(self, x: Tensor, labels: Tensor | None = None, generator: RandomSource = None) -> NLL:
        """The negative ELBO (KL at weight 1) per example in nats: an upper bound on -log p(x)."""
        _, recon, kl = self.elbo_terms(x, generator)
        return NLL((recon + kl).double(), "bound")

    @torch.no_grad()
    def sample(self, num_samples: int, *, labels: Tensor | None = None, generator: RandomSource = None,
               decode: str = "mean") -> Tensor:
        """z ~ N(0, I) decoded: a look at the decoder (train the second stage for samples of the model)."""
        z = seeds.randn((num_samples, *self.latent_shape), generator=generator, device=self.device)
        return self.decode_latent(z, generator=generator, decode=decode)
