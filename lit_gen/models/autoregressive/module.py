"""Autoregressive models: exact likelihood by the chain rule, sampling one dimension at a time.

Objective: maximise log p(x) = sum_d log p(x_d | x_<d) over an ordering of the dimensions. Every
conditional is a discrete distribution over the data's own K levels (a K-way softmax, or a
discretized logistic mixture), so the sum is the exact log-probability of the discrete data: no
dequantization term, ``likelihood_kind = "exact"``. For continuous data (toy 2-D) the conditionals are
Gaussian mixtures and the sum is an exact log-density.

Sampling runs the network once per dimension and draws that dimension from its conditional at a
``temperature``: D passes for MADE, H*W*C passes for the PixelCNN (no activation caching; each
PixelCNN pass only covers the rows up to the one being drawn, since later rows cannot affect it).
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
from lit_gen.core.seeds import RandomSource
from lit_gen.errors import ConfigurationError, check_sizes
from lit_gen.models.autoregressive.heads import build_head
from lit_gen.models.autoregressive.made import MADENet
from lit_gen.models.base import GenerativeModule
from lit_gen.nn.pixelcnn import GatedPixelCNNNet, sample_raster


class AutoregressiveModule(GenerativeModule):
    """What the autoregressive families share: the per-dimension head, the loss, the exact NLL.

    Subclasses implement ``conditionals(x, labels) -> (B, P, *data_shape)``, the parameters of every
    dimension's conditional given the dimensions before it, and ``sample``.
    """

    likelihood_kind = "exact"
    sampling_knob = "temperature"

    def __init__(self, likelihood: str = "categorical", num_mixtures: int = 5, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_sizes(type(self).__name__, num_mixtures=num_mixtures)
        self.check_data()
        self.likelihood = build_head(likelihood, self.num_levels, num_mixtures)

    def check_data(self) -> None:
        """Refuse data the architecture cannot model (before the head's own checks)."""

    def network_input(self, x: Tensor) -> Tensor:
        """Data in [0, 1] as the networks see it: centred on zero, in [-1, 1], in the weights' dtype."""
        return to_signed(x).to(self.dtype)

    def check_labels(self, labels: Tensor | None) -> Tensor | None:
        return self.model_labels(labels)

    def sampling_labels(self, labels: Tensor | None, num_samples: int) -> Tensor | None:
        if not self.conditional:
            return None
        labels = self.default_labels(num_samples) if labels is None else labels
        return labels.to(self.device).long()

    def conditionals(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        raise NotImplementedError

    def log_prob_from_params(self, x: Tensor, params: Tensor) -> Tensor:
        """Per-example sum of the per-dimension log-probabilities, in float64."""
        return self.likelihood.log_prob(x, params).double().flatten(1).sum(1)

    def log_prob(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        """log p(x) per example (nats, float64): exact, by the chain rule."""
        return self.log_prob_from_params(x, self.conditionals(x, self.check_labels(labels)))

    def loss(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return -self.log_prob(x, labels).float().mean()

    @torch.no_grad()
    def nll(self, x: Tensor, labels: Tensor | None = None, **kwargs: Any) -> NLL:
        return NLL(-self.log_prob(x, labels), "exact")


class MADE(AutoregressiveModule):
    """MADE on flattened data (toy 2-D points or images), optionally an ensemble of masks / orderings.

    With ``num_masks`` > 1 the model is the uniform mixture of the M autoregressive models the masks
    define: its NLL ``-log (1/M) sum_m p_m(x)`` is still exact (M passes), sampling picks a mask per
    example, and training draws one mask per step (order-/connectivity-agnostic training).

    Args:
        hidden_sizes: widths of the masked hidden layers.
        num_masks: masks in the ensemble (1 = plain MADE).
        order_agnostic: each mask gets its own random ordering of the dimensions (else the natural order,
            and masks differ only in their hidden connectivity).
        likelihood: each conditional: ``"categorical"`` (K-way softmax, K = the data's levels),
            ``"logistic_mixture"`` (discretized), or ``"gaussian_mixture"`` (a density, for continuous data).
        num_mixtures: components of the mixture heads.
        mask_seed: seed of the orderings and hidden degrees.
    """

    def __init__(
        self,
        hidden_sizes: tuple[int, ...] = (512, 512),
        num_masks: int = 1,
        order_agnostic: bool = False,
        likelihood: Literal["categorical", "logistic_mixture", "gaussian_mixture"] = "categorical",
        num_mixtures: int = 5,
        mask_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(likelihood=likelihood, num_mixtures=num_mixtures, **kwargs)
        check_sizes(type(self).__name__, hidden_sizes=tuple(hidden_sizes), num_masks=num_masks)
        self.num_masks = num_masks
        self.net = MADENet(
            self.num_dims,
            self.likelihood.params_per_dim,
            hidden_sizes=tuple(hidden_sizes),
            num_masks=num_masks,
            order_agnostic=order_agnostic,
            context_dim=self.num_classes if self.conditional else 0,
            seed=mask_seed,
        )
        initial_bias = getattr(self.likelihood, "initial_bias", None)
        if initial_bias is not None:  # output rows are laid out (P, D)
            with torch.no_grad():
                self.net.output.bias.view(-1, self.num_dims).copy_(initial_bias()[:, None])

    def context(self, labels: Tensor | None) -> Tensor | None:
        return None if labels is None else F.one_hot(labels, self.num_classes).to(self.dtype)

    def ordering(self, mask_index: int = 0) -> Tensor:
        """The dimensions (flattened indices) in the order mask ``mask_index`` generates them."""
        return self.net.orders[mask_index]

    def conditionals(self, x: Tensor, labels: Tensor | None = None, mask_index: int = 0) -> Tensor:
        params = self.net(self.network_input(x.flatten(1)), self.context(labels), mask_index)
        return params.view(x.shape[0], params.shape[1], *self.data_shape)

    def log_prob(self, x: Tensor, labels: Tensor | None = None, mask_index: int | None = None) -> Tensor:
        """log p(x) of one mask's model, or (``mask_index`` None) of the ensemble, the mean of their p."""
        labels = self.check_labels(labels)
        masks = range(self.num_masks) if mask_index is None else [mask_index]
        per_mask = torch.stack([self.log_prob_from_params(x, self.conditionals(x, labels, m)) for m in masks])
        return torch.logsumexp(per_mask, dim=0) - math.log(len(masks))

    def loss(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        if self.training and self.num_masks > 1:
            # One mask per step: each ordering is trained on its own, the ensemble is what is evaluated.
            mask_index = int(torch.randint(self.num_masks, ()))
            return -self.log_prob(x, labels, mask_index).float().mean()
        return super().loss(x, labels)

    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        *,
        labels: Tensor | None = None,
        generator: RandomSource = None,
        temperature: float = 1.0,
    ) -> Tensor:
        """D network passes per example: each pass draws the next dimension of the example's ordering."""
        labels = self.sampling_labels(labels, num_samples)
        x = torch.zeros(num_samples, self.num_dims, device=self.device)
        if self.num_masks > 1:
            which = seeds.randint(0, self.num_masks, (num_samples,), generator=generator, device=self.device)
        else:
            which = torch.zeros(num_samples, dtype=torch.long, device=self.device)
        for mask_index in which.unique().tolist():
            rows = (which == mask_index).nonzero().squeeze(1)
            xm, context = x[rows], self.context(None if labels is None else labels[rows])
            source = seeds.rows(generator, rows)  # the rows of this mask, each with its own stream
            for d in self.ordering(mask_index).tolist():
                params = self.net(self.network_input(xm), context, mask_index)
                xm[:, d] = self.likelihood.sample(params[:, :, d : d + 1], temperature, source)[:, 0]
            x[rows] = xm
        return x.view(num_samples, *self.data_shape)


class GatedPixelCNN(AutoregressiveModule):
    """Gated PixelCNN on images: raster order over pixels, channel by channel (R < G < B) within a pixel.

    Args:
        channels: feature width of the vertical and horizontal stacks (a multiple of the image channels).
        num_layers: gated layers.
        kernel_size: kernel width of the first (type A) layer; ``kernel_size_rest`` of the others.
        head_channels: width of the 1x1 output network.
        likelihood: ``"categorical"`` (K-way softmax per sub-pixel, K = the data's levels) or
            ``"logistic_mixture"`` (discretized logistic mixture per sub-pixel, conditioned on the
            previous channels by the masks).
        num_mixtures: components of the logistic mixture.
        conditional: class-conditional biases in every gated layer (needs labeled data).
    """

    def __init__(
        self,
        channels: int = 64,
        num_layers: int = 8,
        kernel_size: int = 7,
        kernel_size_rest: int = 3,
        head_channels: int = 128,
        likelihood: Literal["categorical", "logistic_mixture"] = "categorical",
        num_mixtures: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(likelihood=likelihood, num_mixtures=num_mixtures, **kwargs)
        check_sizes(type(self).__name__, channels=channels, num_layers=num_layers, kernel_size=kernel_size,
                    kernel_size_rest=kernel_size_rest, head_channels=head_channels)
        self.net = GatedPixelCNNNet(
            self.data_shape[0],
            self.likelihood.params_per_dim,
            channels=channels,
            num_layers=num_layers,
            kernel_size=kernel_size,
            kernel_size_rest=kernel_size_rest,
            head_channels=head_channels,
            num_classes=self.num_classes if self.conditional else None,
        )

    def check_data(self) -> None:
        if len(self.data_shape) != 3 or self.num_levels is None:
            raise ConfigurationError(
                f"GatedPixelCNN needs discrete images (C, H, W) with num_levels; got shape "
                f"{self.data_shape}, num_levels={self.num_levels} (use MADE for flat/continuous data)"
            )

    def conditionals(self, x: Tensor, labels: Tensor | None = None) -> Tensor:
        return self.net(self.network_input(x), labels)

    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        *,
        labels: Tensor | None = None,
        generator: RandomSource = None,
        temperature: float = 1.0,
    ) -> Tensor:
        """H*W*C network passes; the pass for row i runs on rows 0..i only (rows below cannot matter)."""
        return sample_raster(self.net, self.likelihood, self.data_shape, num_samples,
                             labels=self.sampling_labels(labels, num_samples), temperature=temperature,
                             generator=generator, device=self.device, dtype=self.dtype)
