"""Latent diffusion (Rombach et al. 2022): a generative model of a frozen autoencoder's scaled latents; to
evaluation, one model of images.

The first stage (:class:`~lit_gen.models.latent.autoencoder.Autoencoder`) is trained first and named by
``first_stage`` (:mod:`lit_gen.models.latent.first_stage`); here it is frozen, and every batch is encoded to
its latent means, divided by the first stage's ``latent_scale`` (unit variance over the training data). The
latent model is any generative model of continuous data, built from ``latent_model`` (``class_path`` +
``init_args`` in YAML) with the latent map's shape as its data: diffusion
(:class:`~lit_gen.models.diffusion.Diffusion`) or flow matching
(:class:`~lit_gen.models.flow_matching.FlowMatching`), each with its own backbone (the U-Net, sized by the
latent shape) and knobs. It trains on its own loss, of the scaled latents ``u`` handed over as continuous data
``(u + 1) / 2``, which such a model maps back to ``u`` by its ``2x - 1``.

``sample`` draws scaled latents from the latent model (its sampler knobs pass through), multiplies them by
``latent_scale`` and decodes them to images on the data's levels. The draw is in the latent model's own
coordinates: its ``sample_signed`` where it has one (Diffusion: its ``sample`` clamps to [-1, 1], which unit
variance latents exceed), else its ``sample`` mapped back by ``2x - 1`` (FlowMatching leaves continuous samples
unclamped).

**No likelihood** (``likelihood_kind = None``; evaluation reports the loss and the sample metrics, FID and the
rest). The latent model's likelihood is a density of the scaled latents, not a probability of the discrete
images: a bound on ``-log p(x)`` would also need the decoder's ``-log p(x | z)`` and a term for the encoder's
posterior (``E_q log q(z | x)``, as in a VAE's ELBO), integrated over z.

The first stage's weights and what rebuilds it are kept in this model's checkpoint, so ``lit-gen test`` and
``predict`` of that checkpoint need no other file. Nothing is cached: every batch is encoded again (one
frozen encoder pass).
"""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor

from lit_gen.core.levels import from_signed, to_signed
from lit_gen.core.runtime import describe_factory
from lit_gen.core.seeds import RandomSource
from lit_gen.errors import ConfigurationError, sample_knobs
from lit_gen.models.base import GenerativeModule
from lit_gen.models.latent import first_stage as stage_one
from lit_gen.models.latent.autoencoder import Autoencoder
from lit_gen.models.latent.first_stage import FirstStageRecord, FrozenFirstStage


class LatentModelFactory(Protocol):
    """Builds the latent model. In YAML a ``class_path`` and its ``init_args``; the arguments here are the
    second stage's to give (the latent map as continuous data, the data's classes, the sampler knobs) and
    are not options of the latent model's config."""

    def __call__(self, *, data_shape: tuple[int, ...], num_levels: int | None, num_classes: int | None,
                 conditional: bool, sample_kwargs: dict[str, Any] | None, optimizer: Any = None,
                 lr_scheduler: Any = None, lr_scheduler_interval: str = "epoch",
                 compile: bool = False) -> GenerativeModule: ...


def describe(factory: Any) -> Any:
    """:func:`~lit_gen.core.runtime.describe_factory`, also of the factories among its arguments (a
    backbone's), so the hyperparameters stay plain data."""
    described = describe_factory(factory)
    if isinstance(described, dict) and isinstance(described.get("init_args"), dict):
        described["init_args"] = {k: describe(v) if callable(v) else v for k, v in described["init_args"].items()}
    return described


def build_latent_model(factory: LatentModelFactory, latent_shape: tuple[int, ...], num_classes: int | None,
                       conditional: bool, sample_kwargs: dict[str, Any]) -> GenerativeModule:
    """The latent model for continuous data of ``latent_shape``, checked to be a generative model that can
    hold latents beyond [-1, 1].

    A plain function rather than code inside the second stage's ``__init__``: Lightning's
    ``save_hyperparameters`` collects the arguments of every ``__init__`` up the call stack.
    """
    model = factory(data_shape=tuple(latent_shape), num_levels=None, num_classes=num_classes,
                    conditional=conditional, sample_kwargs=sample_kwargs)
    if not isinstance(model, GenerativeModule):
        raise ConfigurationError(f"latent_model must build a GenerativeModule, got {type(model).__name__}")
    if getattr(model, "clip_x0", False):
        raise ConfigurationError(f"latent_model: {type(model).__name__} with clip_x0=true clips its predictions "
                                 "to [-1, 1], but scaled latents have unit variance; set clip_x0: false")
    return model


class LatentDiffusion(FrozenFirstStage, GenerativeModule):
    """A frozen :class:`Autoencoder` and a generative model of its scaled latents, class-conditional
    optionally.

    Args:
        first_stage: the Autoencoder's checkpoint file, or its run folder (the newest version's
            ``last.ckpt``; a relative run is also looked up under this run's logger ``save_dir``).
        latent_model: factory of the latent model (``class_path`` + ``init_args``), called with the latent
            shape, ``num_levels=None``, the data's classes and ``conditional``; e.g.
            ``lit_gen.models.diffusion.Diffusion`` (with ``clip_x0: false``) or
            ``lit_gen.models.flow_matching.FlowMatching``. Its own optimizer and likelihood options are not
            used: this model's optimizer trains it, and the pair reports no likelihood.
    """

    likelihood_kind = None
    sampling_knob = "guidance_scale"
    first_stage_class = Autoencoder
    factory_attributes = (*GenerativeModule.factory_attributes, "latent_model_factory")

    def __init__(self, first_stage: str | None = None, latent_model: LatentModelFactory | None = None,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if "latent_model" in self.hparams:
            self.hparams["latent_model"] = describe(self.hparams["latent_model"])
        if latent_model is None:
            raise ConfigurationError(f"{type(self).__name__}: latent_model must name the model of the latents "
                                     "(class_path: lit_gen.models.diffusion.Diffusion or "
                                     "lit_gen.models.flow_matching.FlowMatching, with its init_args)")
        self.latent_model_factory = latent_model
        # decode is the first stage's knob; the others are the latent model's (checked when it is built)
        self.latent_knobs = {k: v for k, v in self.sample_kwargs.items() if k != "decode"}
        self.latent_model: GenerativeModule | None = None
        self.find_first_stage(first_stage)

    # ------------------------------------------------------------ the two stages
    def attach(self, record: FirstStageRecord, weights: dict[str, Tensor] | None) -> None:
        """Build the frozen first stage of ``record`` (with ``weights`` when given) and a latent model of its
        latent shape (kept when the shape is the one it has)."""
        autoencoder = stage_one.build(record, weights, Autoencoder).to(self.device)
        keep = self.latent_model is not None and self.first_stage.latent_shape == autoencoder.latent_shape
        self.first_stage, self.first_stage_record = autoencoder, record
        if not keep:
            self.latent_model = build_latent_model(self.latent_model_factory, autoencoder.latent_shape,
                                                   self.num_classes, self.conditional,
                                                   self.latent_knobs).to(self.device)

    def require_stages(self) -> tuple[Autoencoder, GenerativeModule]:
        return self.require_first_stage(), self.latent_model

    @torch.no_grad()
    def scaled_latents(self, x: Tensor) -> Tensor:
        """The frozen encoder's latent means of x divided by ``latent_scale``, ``(B, *latent_shape)``."""
        autoencoder = self.require_first_stage()
        return autoencoder.scale_latents(autoencoder.encode_mean(x))

    def signed_latent_samples(self, num_samples: int, **knobs: Any) -> Tensor:
        """Scaled latents from the latent model, in its own coordinates (see the module docstring)."""
        model = self.latent_model
        if callable(getattr(model, "sample_signed", None)):
            return model.sample_signed(num_samples, **knobs).float()
        return to_signed(model.sample(num_samples, **knobs).float())

    # ---------------------------------------------------------------- protocol
    def loss(self, x: Tensor, labels: Tensor | None = None,
             generator: RandomSource = None) -> dict[str, Tensor]:
        _, model = self.require_stages()
        return model.loss(from_signed(self.scaled_latents(x)), labels, generator=generator)

    @torch.no_grad()
    def sample(self, num_samples: int, *, labels: Tensor | None = None, generator: RandomSource = None,
               guidance_scale: float = 1.0, sampler: str | None = None, solver: str | None = None,
               steps: int | None = None, eta: float | None = None, rtol: float | None = None,
               atol: float | None = None, decode: str = "mean") -> Tensor:
        """Scaled latents from the latent model, unscaled and decoded to images on the data's levels.

        Args:
            guidance_scale: the latent model's classifier-free guidance (1: the conditional model, 0: the
                unconditional one, > 1: stronger conditioning); conditional models only.
            sampler, solver, steps, eta, rtol, atol: the latent model's sampler knobs, passed on when given
                (Diffusion: ``sampler``, ``steps``, ``eta``; FlowMatching: ``solver``, ``steps``, ``rtol``,
                ``atol``); unset, the latent model's defaults.
            decode: the first stage's decoder ``"mean"`` on the data's levels, or a ``"sample"`` of p(x | z).
        """
        autoencoder, model = self.require_stages()
        given = {"sampler": sampler, "solver": solver, "steps": steps, "eta": eta, "rtol": rtol, "atol": atol}
        knobs = {"guidance_scale": guidance_scale, **{k: v for k, v in given.items() if v is not None}}
        accepted = sample_knobs(type(model))
        unknown = sorted(set(knobs) - set(accepted)) if accepted is not None else []
        if unknown:
            raise ConfigurationError(f"{type(self).__name__}: {', '.join(unknown)} is not a knob of its latent model "
                                     f"{type(model).__name__} (its knobs: {', '.join(accepted)})")
        if self.conditional:
            labels = (self.default_labels(num_samples) if labels is None else labels).to(self.device).long()
        else:
            labels = None
        scaled = self.signed_latent_samples(num_samples, labels=labels, generator=generator, **knobs)
        return autoencoder.decode_latent(autoencoder.unscale_latents(scaled), generator=generator, decode=decode)


__all__ = ["LatentDiffusion", "LatentModelFactory", "build_latent_model"]
