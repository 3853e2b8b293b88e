"""The variational autoencoder (Kingma & Welling 2014) with an importance-weighted NLL (Burda et al. 2016).

Objective: maximise the ELBO
    E_q(z|x)[log p(x|z)] - KL(q(z|x) || p(z)),
with a discrete decoder p(x|z) in the data's own K levels, so the ELBO bounds the *discrete* NLL and
needs no dequantization. Evaluation reports the IWAE estimate with k samples,
    -log (1/k) sum_i p(x|z_i) p(z_i) / q(z_i|x),   z_i ~ q(z|x),
which tightens towards -log p(x) as k grows (an estimate: still an upper bound in expectation).
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_gen.core import seeds
from lit_gen.core.levels import to_signed
from lit_gen.core.likelihood import NLL
from lit_gen.core.records import NATS
from lit_gen.core.seeds import RandomSource
from lit_gen.errors import ConfigurationError, check_sizes
from lit_gen.models.base import GenerativeModule
from lit_gen.models.vae.nets import ConvDecoder, ConvEncoder, MLPDecoder, MLPEncoder
from lit_gen.nn.distributions import build_likelihood
from lit_gen.nn.priors import GaussianMixture, StandardNormal, diagonal_normal_log_prob


class VAE(GenerativeModule):
    """Gaussian-encoder VAE with a discrete decoder and a Gaussian or learnable mixture prior.

    Args:
        latent_dim: size of z.
        architecture: ``"conv"`` for images, ``"mlp"`` for flat / toy data.
        channels: base width of the conv nets (hidden width for the MLPs).
        likelihood: decoder p(x|z): ``"categorical"`` (K-way softmax), ``"logistic_mixture"``,
            ``"bernoulli"`` (binary data) or ``"gaussian"`` (continuous data).
        num_mixtures: components of the discretized logistic mixture.
        prior: ``"gaussian"`` (N(0, I)) or ``"mixture"`` (learnable mixture of Gaussians).
        prior_components: components of the mixture prior.
        beta: weight of the KL term in the training loss (beta-VAE); evaluation always uses beta = 1.
        kl_warmup_steps: linearly raise beta from 0 over this many steps (0 = off).
        iwae_samples: importance samples k of the NLL estimate at test.
        val_iwae_samples: k at validation (smaller, it runs every epoch).
        iwae_chunk: importance samples decoded at once (bounds memory for large k).
    """

    likelihood_kind = "estimate"
    sampling_knob = "temperature"
    term_units = {"recon_nats": NATS, "kl_nats": NATS, "neg_elbo_nats": NATS}

    def __init__(
        self,
        latent_dim: int = 16,
        architecture: Literal["conv", "mlp"] = "conv",
        channels: int = 32,
        likelihood: Literal["categorical", "logistic_mixture", "bernoulli", "gaussian"] = "categorical",
        num_mixtures: int = 5,
        prior: Literal["gaussian", "mixture"] = "gaussian",
        prior_components: int = 10,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        iwae_samples: int = 100,
        val_iwae_samples: int = 10,
        iwae_chunk: int = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_sizes(type(self).__name__, latent_dim=latent_dim, channels=channels, num_mixtures=num_mixtures,
                    prior_components=prior_components, iwae_samples=iwae_samples,
                    val_iwae_samples=val_iwae_samples, iwae_chunk=iwae_chunk)
        check_sizes(type(self).__name__, 0, kl_warmup_steps=kl_warmup_steps)
        self.latent_dim = latent_dim
        self.beta = beta
        self.kl_warmup_steps = kl_warmup_steps
        self.iwae_samples = iwae_samples
        self.val_iwae_samples = val_iwae_samples
        self.iwae_chunk = iwae_chunk
        self.likelihood = build_likelihood(likelihood, self.num_levels, num_mixtures)
        if prior not in ("gaussian", "mixture"):
            raise ConfigurationError(f"prior must be 'gaussian' or 'mixture', got {prior!r}")
        self.prior = StandardNormal(latent_dim) if prior == "gaussian" else GaussianMixture(latent_dim,
                                                                                            prior_components)
        cond_dim = self.num_classes if self.conditional else 0
        params = self.likelihood.params_per_dim
        if architecture == "conv":
            if len(self.data_shape) != 3:
                raise ConfigurationError(f"architecture='conv' needs image data (C, H, W), got shape {self.data_shape}")
            self.encoder = ConvEncoder(self.data_shape, latent_dim, channels, cond_dim)
            self.decoder = ConvDecoder(self.data_shape, latent_dim, params, channels, cond_dim)
        elif architecture == "mlp":
            self.encoder = MLPEncoder(self.data_shape, latent_dim, channels, cond_dim)
            self.decoder = MLPDecoder(self.data_shape, latent_dim, params, channels, cond_dim)
        else:
            raise ConfigurationError(f"architecture must be 'conv' or 'mlp', got {architecture!r}")

    # ------------------------------------------------------------------ pieces
    def _condition(self, labels: Tensor | None) -> Tensor | None:
        labels = self.model_labels(labels)
        return None if labels is None else F.one_hot(labels, self.num_classes).float()

    def encode(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Parameters (mean, log-variance) of q(z|x); the encoder sees x scaled to [-1, 1]."""
        return self.encoder(to_signed(x), self._condition(labels))

    def log_likelihood(self, x: Tensor, z: Tensor, labels: Tensor | None = None) -> Tensor:
        """log p(x|z) per example, summed over dimensions (nats, float32)."""
        params = self.decoder(z, self._condition(labels))
        return self.likelihood.log_prob(x, params).flatten(1).sum(1)

    def elbo_terms(self, x: Tensor, labels: Tensor | None = None,
                   generator: RandomSource = None) -> tuple[Tensor, Tensor]:
        """(log p(x|z) with one reparameterized z ~ q, KL(q || p)) per example.

        The KL is analytic for the Gaussian prior and a one-sample estimate log q(z|x) - log p(z)
        (with the same z) for the mixture prior.
        """
        mean, log_var = self.encode(x, labels)
        eps = seeds.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + torch.exp(0.5 * log_var) * eps
        recon = self.log_likelihood(x, z, labels)
        if self.prior.has_analytic_kl:
            kl = self.prior.kl(mean, log_var)
        else:
            kl = diagonal_normal_log_prob(z, mean, 0.5 * log_var) - self.prior.log_prob(z)
        return recon, kl

    def iwae_nll(self, x: Tensor, labels: Tensor | None = None, num_samples: int = 100,
                 generator: RandomSource = None) -> Tensor:
        """-log (1/k) sum_i w_i per example, w_i = p(x|z_i) p(z_i) / q(z_i|x), z_i ~ q(z|x).

        The k samples' noise is drawn in one piece (k latent vectors per example) and decoded ``iwae_chunk``
        at a time, so per-example generators give each example the same z_i in any batch and for any
        ``iwae_chunk`` (a memory bound, not a change of the estimate).
        """
        mean, log_var = self.encode(x, labels)
        noise = seeds.randn((num_samples, *mean.shape), generator=generator, device=mean.device,
                            dtype=mean.dtype, example_dim=1)
        log_weights = []
        for start in range(0, num_samples, self.iwae_chunk):
            k = min(self.iwae_chunk, num_samples - start)
            eps = noise[start:start + k]
            z = mean + torch.exp(0.5 * log_var) * eps  # (k, B, latent)
            flat_z = z.flatten(0, 1)
            rep = lambda t: None if t is None else t.repeat(k, *([1] * (t.dim() - 1)))  # noqa: E731
            log_px = self.log_likelihood(rep(x), flat_z, rep(labels)).view(k, -1)
            log_pz = self.prior.log_prob(flat_z).view(k, -1)
            log_qz = diagonal_normal_log_prob(z, mean, 0.5 * log_var)
            log_weights.append(log_px + log_pz - log_qz)
        log_w = torch.cat(log_weights, dim=0).double()
        return -(torch.logsumexp(log_w, dim=0) - math.log(num_samples))

    # ---------------------------------------------------------------- protocol
    def current_beta(self) -> float:
        if self.kl_warmup_steps <= 0:
            return self.beta
        return self.beta * min(1.0, self.global_step / self.kl_warmup_steps)

    def loss(self, x: Tensor, labels: Tensor | None = None,
             generator: RandomSource = None) -> dict[str, Tensor]:
        recon, kl = self.elbo_terms(x, labels, generator)
        beta = self.current_beta() if self.training else 1.0  # evaluation (val/loss) is the -ELBO
        loss = (-recon + beta * kl).mean()
        return {"loss": loss, "recon_nats": -recon.mean(), "kl_nats": kl.mean(),
                "neg_elbo_nats": (kl - recon).mean()}

    def eval_nll_kwargs(self, stage: str) -> dict[str, Any]:
        return {"num_samples": self.iwae_samples if stage == "test" else self.val_iwae_samples}

    def extra_likelihood_kinds(self) -> dict[str, str]:
        return {"elbo": "bound", "elbo_bpd": "bound"}

    @torch.no_grad()
    def nll(self, x: Tensor, labels: Tensor | None = None, num_samples: int | None = None,
            generator: RandomSource = None) -> NLL:
        """IWAE estimate with k = ``num_samples`` (default ``iwae_samples``), plus the ELBO as a term."""
        k = self.iwae_samples if num_samples is None else num_samples
        recon, kl = self.elbo_terms(x, labels, generator)
        return NLL(self.iwae_nll(x, labels, k, generator), "estimate",
                   terms={"elbo": ((kl - recon).double(), "bound")})

    @torch.no_grad()
    def sample(self, num_samples: int, *, labels: Tensor | None = None,
               generator: RandomSource = None, temperature: float = 1.0,
               decode: str = "mean") -> Tensor:
        """z ~ p(z) with its spread scaled by ``temperature``, then ``decode``: ``"mean"`` (the decoder's
        expected value, snapped to the data's levels) or ``"sample"`` (a draw from p(x|z))."""
        z = self.draw_latents(num_samples, generator=generator, temperature=temperature)
        return self.decode_latents(z, labels=labels, generator=generator, decode=decode)

    def draw_latents(self, num_samples: int, *, generator: RandomSource = None, temperature: float = 1.0,
                     **knobs: Any) -> Tensor:
        return self.prior.sample(num_samples, temperature, generator, device=self.device)

    def decode_latents(self, z: Tensor, *, labels: Tensor | None = None, generator: RandomSource = None,
                       decode: str = "mean", **knobs: Any) -> Tensor:
        if labels is None:
            labels = self.default_labels(z.shape[0])
        params = self.decoder(z, self._condition(labels))
        if decode == "mean":
            x = self.likelihood.mean(params)
        elif decode == "sample":
            x = self.likelihood.sample(params, 1.0, generator)
        else:
            raise ConfigurationError(f"decode must be 'mean' or 'sample', got {decode!r}")
        return self.snap_to_levels(x)
