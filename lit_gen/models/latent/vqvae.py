"""VQ-VAE (van den Oord et al. 2017), the first stage of a two-stage model: images <-> a map of discrete codes.

Training minimises, per example,

    -log p(x | z_q(x))  +  beta ||z_e(x) - sg(z_q)||^2  [ + ||sg(z_e(x)) - z_q||^2 with codebook_update: loss ]

with a discrete decoder p(x | z) in the data's own K levels (categorical, discretized logistic mixture or
Bernoulli), so the reconstruction term is the nats of the discrete data given its codes.

Alone, this model has no likelihood: with no prior over the codes, ``log p(x | z_q(x))`` is not a bound on
``log p(x)`` (``likelihood_kind = None``; evaluation reports the reconstruction nats, codebook perplexity and
usage as loss terms). The second stage (:mod:`lit_gen.models.latent.prior`) adds a learned prior and turns
the pair into one model with a bound. ``sample`` here decodes codes drawn *uniformly*: a look at what the
decoder makes of arbitrary codes, not samples of a trained model.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

from lit_gen.core import seeds
from lit_gen.core.levels import to_signed
from lit_gen.core.records import NATS
from lit_gen.core.seeds import RandomSource
from lit_gen.errors import ConfigurationError, check_sizes
from lit_gen.models.base import GenerativeModule
from lit_gen.models.latent.nets import CodeDecoder, CodeEncoder, halved_sizes
from lit_gen.models.latent.quantizer import VectorQuantizer, perplexity
from lit_gen.nn.distributions import build_likelihood

DISCRETE_LIKELIHOODS = ("categorical", "logistic_mixture", "bernoulli")
DECODES = ("mean", "sample")


class VQVAE(GenerativeModule):
    """Conv encoder -> vector quantizer -> conv decoder with a discrete likelihood.

    Args:
        num_codes: codebook size K (the second stage's prior is a K-way categorical per position).
        code_dim: dimension of each code vector.
        channels: width of the encoder and decoder.
        num_downsamples: stride-2 stages; the code map is the image halved this many times (rounded up).
        num_res_blocks: residual blocks per resolution.
        likelihood: decoder p(x|z): ``"categorical"``, ``"logistic_mixture"`` or ``"bernoulli"`` (K = 2).
        num_mixtures: components of the discretized logistic mixture.
        codebook_update: ``"ema"`` (running means of the assigned encoder outputs) or ``"loss"``
            (straight-through with the codebook term in the loss).
        ema_decay: decay of the EMA update.
        beta: weight of the commitment term.
        restart_every: training steps per dead-code window (0: no restarts).
    """

    likelihood_kind = None
    term_units = {"recon_nats": NATS}

    def __init__(
        self,
        num_codes: int = 512,
        code_dim: int = 64,
        channels: int = 64,
        num_downsamples: int = 2,
        num_res_blocks: int = 1,
        likelihood: Literal["categorical", "logistic_mixture", "bernoulli"] = "categorical",
        num_mixtures: int = 5,
        codebook_update: Literal["ema", "loss"] = "ema",
        ema_decay: float = 0.99,
        beta: float = 0.25,
        restart_every: int = 100,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.check_unconditional()
        check_sizes(type(self).__name__, channels=channels, num_mixtures=num_mixtures)
        check_sizes(type(self).__name__, 2, num_codes=num_codes)
        check_sizes(type(self).__name__, 0, num_downsamples=num_downsamples, num_res_blocks=num_res_blocks)
        if len(self.data_shape) != 3 or self.num_levels is None:
            raise ConfigurationError(f"VQVAE needs discrete images (C, H, W) with num_levels; got shape "
                                     f"{self.data_shape}, num_levels={self.num_levels}")
        if likelihood not in DISCRETE_LIKELIHOODS:
            raise ConfigurationError(f"VQVAE: likelihood must be one of {', '.join(DISCRETE_LIKELIHOODS)}, "
                                     f"got {likelihood!r}")
        if beta < 0:
            raise ConfigurationError(f"VQVAE: beta must be >= 0, got {beta}")
        self.beta = beta
        self.likelihood = build_likelihood(likelihood, self.num_levels, num_mixtures)
        self.code_shape = halved_sizes(self.data_shape[1:], num_downsamples)[-1]
        self.encoder = CodeEncoder(self.data_shape[0], code_dim, channels, num_downsamples, num_res_blocks)
        self.quantizer = VectorQuantizer(num_codes, code_dim, codebook_update, ema_decay,
                                         restart_every=restart_every)
        self.decoder = CodeDecoder(self.data_shape, code_dim, self.likelihood.params_per_dim, channels,
                                   num_downsamples, num_res_blocks)

    @property
    def num_codes(self) -> int:
        return self.quantizer.num_codes

    def freeze_first_stage(self) -> VQVAE:
        """No gradients and no codebook updates, in either mode. Its nets behave alike in train and eval
        mode (group norm, no dropout), so a second stage can leave it in its own mode: Lightning then has
        no module in eval mode to warn about at the start of training."""
        self.requires_grad_(False)
        self.quantizer.frozen = True
        return self

    # ------------------------------------------------------------------ pieces
    def encode(self, x: Tensor) -> Tensor:
        """Encoder outputs ``z_e(x)`` ``(B, code_dim, h, w)``; the encoder sees x scaled to [-1, 1]."""
        return self.encoder(to_signed(x).to(self.dtype))

    def encode_codes(self, x: Tensor) -> Tensor:
        """The code map ``(B, h, w)`` of x: deterministic (nearest codes of the encoder outputs)."""
        return self.quantizer.codes(self.encode(x))

    def log_likelihood(self, x: Tensor, z_q: Tensor) -> Tensor:
        """log p(x | z_q) per example, summed over dimensions (nats, float32)."""
        return self.likelihood.log_prob(x, self.decoder(z_q)).flatten(1).sum(1)

    @torch.no_grad()
    def reconstruction_nll(self, x: Tensor, codes: Tensor | None = None) -> Tensor:
        """-log p(x | z_q(x)) per example in nats (float64); ``codes`` default to x's own code map."""
        codes = self.encode_codes(x) if codes is None else codes
        return -self.log_likelihood(x, self.quantizer.embed(codes)).double()

    def decode_codes(self, codes: Tensor, *, generator: RandomSource = None, decode: str = "mean") -> Tensor:
        """Images of a code map ``(B, h, w)``: the decoder's ``"mean"`` snapped to the data's levels, or a
        ``"sample"`` of p(x | z)."""
        if decode not in DECODES:
            raise ConfigurationError(f"decode must be 'mean' or 'sample', got {decode!r}")
        params = self.decoder(self.quantizer.embed(codes).to(self.dtype))
        x = self.likelihood.mean(params) if decode == "mean" else self.likelihood.sample(params, 1.0, generator)
        return self.snap_to_levels(x)

    # ---------------------------------------------------------------- protocol
    def loss(self, x: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        q = self.quantizer(self.encode(x))
        recon = -self.log_likelihood(x, q.z_q)
        loss = recon + self.beta * q.commitment
        terms = {"recon_nats": recon.mean().detach(), "commitment": q.commitment.mean().detach()}
        if q.codebook_loss is not None:
            loss = loss + q.codebook_loss
            terms["codebook_loss"] = q.codebook_loss.mean().detach()
        terms["perplexity"] = perplexity(q.counts)
        terms["codebook_usage"] = (q.counts > 0).float().mean()
        return {"loss": loss.mean(), **terms}

    @torch.no_grad()
    def sample(self, num_samples: int, *, labels: Tensor | None = None, generator: RandomSource = None,
               decode: str = "mean") -> Tensor:
        """Uniformly drawn code maps, decoded: this stage has no prior of its own (train the second stage
        for samples of the model)."""
        codes = seeds.randint(0, self.num_codes, (num_samples, *self.code_shape), generator=generator,
                              device=self.device)
        return self.decode_codes(codes, generator=generator, decode=decode)
