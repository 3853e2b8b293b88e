"""The second stage: a Gated PixelCNN prior over a frozen VQ-VAE's code map; to evaluation, one model.

The first stage (:class:`~lit_gen.models.latent.vqvae.VQVAE`) is trained first and named by ``first_stage``
(:mod:`lit_gen.models.latent.first_stage`); here it is frozen and every batch is encoded to its code map
``z_q(x)``, an ``h x w`` map of indices in ``0..K-1``. The prior is the autoregressive family's network
(:class:`~lit_gen.nn.pixelcnn.GatedPixelCNNNet`) with a K-way categorical head, over that map as a
one-channel image whose K levels are the codes; it trains on ``-log p(z_q(x))``, exact by the chain rule.

As one generative model: ``sample`` draws a code map from the prior and decodes it to an image on the
data's levels; ``nll`` is

    -log p(x | z_q(x)) - log p(z_q(x))   >=   -log p(x)        (likelihood kind "bound")

since ``p(x) = sum_z p(z) p(x | z) >= p(z_q(x)) p(x | z_q(x))`` for the one code map the deterministic
encoder picks. The first stage's weights and what rebuilds it are kept in this model's checkpoint, so
``lit-gen test`` and ``predict`` of that checkpoint need no other file.

Nothing is cached: the codes of a batch are recomputed at every step. The frozen encoder's pass is small
next to the prior's forward and backward, and a cache of the training set would have to be invalidated by
the first stage's weights, the dataset and its split.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from lit_gen.core.levels import from_levels, to_levels, to_signed
from lit_gen.core.likelihood import NLL
from lit_gen.core.records import NATS
from lit_gen.core.seeds import RandomSource
from lit_gen.errors import check_sizes
from lit_gen.models.base import GenerativeModule
from lit_gen.models.latent import first_stage as stage_one
from lit_gen.models.latent.first_stage import FIRST_STAGE_KEY, FirstStageRecord, FrozenFirstStage
from lit_gen.models.latent.vqvae import VQVAE
from lit_gen.nn.distributions import CategoricalLikelihood
from lit_gen.nn.pixelcnn import GatedPixelCNNNet, sample_raster


class VQVAEPixelCNN(FrozenFirstStage, GenerativeModule):
    """A frozen VQ-VAE and a Gated PixelCNN prior over its codes, class-conditional optionally.

    Args:
        first_stage: the VQ-VAE's checkpoint file, or its run folder (the newest version's ``last.ckpt``;
            a relative run is also looked up under this run's logger ``save_dir``).
        channels, num_layers, kernel_size, kernel_size_rest, head_channels: the prior's Gated PixelCNN
            (as :class:`~lit_gen.models.autoregressive.GatedPixelCNN`'s).
        conditional: class-conditional prior (the decoder stays unconditional).
    """

    likelihood_kind = "bound"
    sampling_knob = "temperature"
    term_units = {"loss": NATS, "prior_nats": NATS, "recon_nats": NATS}

    def __init__(
        self,
        first_stage: str | None = None,
        channels: int = 64,
        num_layers: int = 8,
        kernel_size: int = 5,
        kernel_size_rest: int = 3,
        head_channels: int = 128,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        check_sizes(type(self).__name__, channels=channels, num_layers=num_layers, kernel_size=kernel_size,
                    kernel_size_rest=kernel_size_rest, head_channels=head_channels)
        self.prior_args = {"channels": channels, "num_layers": num_layers, "kernel_size": kernel_size,
                           "kernel_size_rest": kernel_size_rest, "head_channels": head_channels}
        self.prior: GatedPixelCNNNet | None = None
        self.find_first_stage(first_stage)

    # ------------------------------------------------------------ the two stages
    def attach(self, record: FirstStageRecord, weights: dict[str, Tensor] | None) -> None:
        """Build the frozen first stage of ``record`` (with ``weights`` when given) and a prior over its codes."""
        vqvae = stage_one.build(record, weights).to(self.device)
        same_codes = self.first_stage is not None and (self.first_stage.num_codes, self.first_stage.code_shape) \
            == (vqvae.num_codes, vqvae.code_shape)
        self.first_stage, self.first_stage_record = vqvae, record
        if not same_codes:
            self.prior = GatedPixelCNNNet(1, vqvae.num_codes, num_classes=self.num_classes if self.conditional
                                          else None, **self.prior_args).to(self.device)
        self.prior_head = CategoricalLikelihood(vqvae.num_codes)

    def require_stages(self) -> VQVAE:
        return self.require_first_stage()

    def codes_as_image(self, codes: Tensor) -> Tensor:
        """A code map ``(B, h, w)`` as the prior's one-channel image of K levels, ``(B, 1, h, w)`` in [0, 1]."""
        return from_levels(codes[:, None], self.prior_head.num_levels)

    def prior_log_prob(self, codes: Tensor, labels: Tensor | None = None) -> Tensor:
        """log p(codes) per example (nats, float64): exact, by the chain rule over the code map."""
        image = self.codes_as_image(codes)
        params = self.prior(to_signed(image).to(self.dtype), self.model_labels(labels))
        return self.prior_head.log_prob(image, params).double().flatten(1).sum(1)

    # ---------------------------------------------------------------- protocol
    def loss(self, x: Tensor, labels: Tensor | None = None) -> dict[str, Tensor]:
        vqvae = self.require_stages()
        codes = vqvae.encode_codes(x)
        prior_nats = -self.prior_log_prob(codes, labels)
        terms = {"loss": prior_nats.float().mean(), "prior_nats": prior_nats.mean().detach()}
        if not self.training:
            terms["recon_nats"] = vqvae.reconstruction_nll(x, codes).mean()
        return terms

    @torch.no_grad()
    def nll(self, x: Tensor, labels: Tensor | None = None, **kwargs: Any) -> NLL:
        """-log p(x | z_q(x)) - log p(z_q(x)) per example: an upper bound on -log p(x) in nats."""
        vqvae = self.require_stages()
        codes = vqvae.encode_codes(x)
        return NLL(vqvae.reconstruction_nll(x, codes) - self.prior_log_prob(codes, labels), "bound")

    @torch.no_grad()
    def sample(self, num_samples: int, *, labels: Tensor | None = None, generator: RandomSource = None,
               temperature: float = 1.0, decode: str = "mean") -> Tensor:
        """A code map from the prior at ``temperature`` (h*w passes), decoded: the decoder's ``"mean"`` on
        the data's levels, or a ``"sample"`` of p(x | z)."""
        vqvae = self.require_stages()
        if self.conditional:
            labels = (self.default_labels(num_samples) if labels is None else labels).to(self.device).long()
        else:
            labels = None
        image = sample_raster(self.prior, self.prior_head, (1, *vqvae.code_shape), num_samples, labels=labels,
                              temperature=temperature, generator=generator, device=self.device, dtype=self.dtype)
        codes = to_levels(image, self.prior_head.num_levels)[:, 0]
        return vqvae.decode_codes(codes, generator=generator, decode=decode)


__all__ = ["FIRST_STAGE_KEY", "VQVAEPixelCNN"]
