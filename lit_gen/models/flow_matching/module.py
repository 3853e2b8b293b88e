"""Conditional flow matching (Lipman et al. 2023; rectified flow, Liu et al. 2023) with ODE sampling and an
ODE likelihood.

Time convention: t = 0 is noise, t = 1 is data. Data ``x`` in [0, 1] is dequantized (the shared uniform
policy) and mapped to ``x1`` in [-1, 1]; with ``x0 ~ N(0, I)`` and ``t ~ U[0, 1]`` the path gives ``x_t``
(:mod:`.paths`: ``straight``, x_t = (1 - t) x0 + t x1 with target velocity x1 - x0, or ``vp``) and the
backbone ``v(x_t, t)`` regresses the path's velocity:

    loss = E_{t, x0, x1} mean_d (v(x_t, t) - (alpha'(t) x1 + sigma'(t) x0))^2

Sampling integrates dx/dt = v from t = 0 (noise) to t = 1 with a solver of :mod:`lit_gen.integrate.ode`.

Likelihood: the instantaneous change of variables along the same ODE from the data (t = 1) to the noise
(t = 0), ``d log p_t / dt = -div v``, integrated jointly with x (:mod:`lit_gen.integrate.likelihood`). The
density of the dequantized point in [-1, 1]^D becomes the density on [0, 1]^D (+ D log 2, the map's
log-determinant) and then nats of the discrete data (+ D log K). With the exact divergence the number is a
bound on the discrete NLL (kind ``bound``: uniform dequantization; up to the solver's error; kind ``exact``
on continuous data); with
Hutchinson's divergence it is an unbiased estimate of that density's log (kind ``estimate``).

Conditional models drop labels with probability ``label_dropout`` in training (the "no label" class
``num_classes``), which enables classifier-free guidance of the velocity at sampling time:
``v = v_uncond + guidance_scale * (v_cond - v_uncond)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lit_gen.core import seeds
from lit_gen.core.levels import dequantize, from_levels, from_signed, to_signed
from lit_gen.core.likelihood import NLL, discrete_nll_from_density
from lit_gen.core.runtime import describe_factory
from lit_gen.core.seeds import RandomSource
from lit_gen.errors import ConfigurationError
from lit_gen.integrate.likelihood import ODELikelihood, standard_normal_log_prob
from lit_gen.integrate.ode import check_solver_options, solve
from lit_gen.models.base import GenerativeModule
from lit_gen.models.flow_matching.paths import path_from_name
from lit_gen.nn.cads import CADS, cads_from_options, check_cads_backbone
from lit_gen.nn.unet import ConditionTransform, UNet

#: Builds the velocity network from the data's shape and the number of classes (None: unconditional); it is
#: called as ``network(x_t, TIME_SCALE * t, labels)``.
BackboneFactory = Callable[[tuple[int, ...], int | None], nn.Module]
#: The backbone sees time in [0, 1000], the range of the diffusion U-Net's sinusoidal embedding.
TIME_SCALE = 1000.0


class FlowMatching(GenerativeModule):
    """Flow matching with a swappable velocity network.

    Args:
        backbone: factory of the velocity network, ``backbone(data_shape, num_classes)`` (the U-Net by
            default; ``class_path`` + ``init_args`` in YAML).
        path: ``"straight"`` (rectified / OT) or ``"vp"`` (trigonometric variance preserving).
        label_dropout: probability of training a conditional model without its label (guidance needs > 0).
        likelihood_solver: ODE solver of ``nll`` (``dopri5``, or a fixed-step one with ``likelihood_steps``).
        likelihood_steps: steps of a fixed-step likelihood solver.
        likelihood_rtol / likelihood_atol: dopri5's tolerances for the likelihood.
        likelihood_divergence: ``"exact"`` (D gradients per evaluation; kind "bound"), ``"hutchinson"``
            (``hutchinson_probes`` Rademacher probes per example, fixed along the path; kind "estimate") or
            ``"auto"`` (exact when D <= ``exact_divergence_max_dims``).
        exact_divergence_max_dims: the largest D for which ``auto`` picks the exact divergence.
        hutchinson_probes: probes of Hutchinson's estimator.
        val_likelihood: ``"full"`` (the test's likelihood every validation epoch, val/nll) or ``"skip"``
            (the loss only). Test always reports the likelihood.
    """

    likelihood_kind = "bound"
    sampling_knob = "guidance_scale"

    def __init__(
        self,
        backbone: BackboneFactory = UNet,
        path: Literal["straight", "vp"] = "straight",
        label_dropout: float = 0.1,
        likelihood_solver: str = "dopri5",
        likelihood_steps: int = 100,
        likelihood_rtol: float = 1e-5,
        likelihood_atol: float = 1e-5,
        likelihood_divergence: Literal["exact", "hutchinson", "auto"] = "auto",
        exact_divergence_max_dims: int = 128,
        hutchinson_probes: int = 1,
        val_likelihood: Literal["full", "skip"] = "skip",
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if "backbone" in self.hparams:
            self.hparams["backbone"] = describe_factory(self.hparams["backbone"])
        if not 0.0 <= label_dropout < 1.0:
            raise ConfigurationError(f"label_dropout must be in [0, 1), got {label_dropout}")
        if val_likelihood not in ("full", "skip"):
            raise ConfigurationError(f"val_likelihood must be 'full' or 'skip', got {val_likelihood!r}")
        self.path = path_from_name(path)
        self.label_dropout = label_dropout
        self.ode = ODELikelihood(likelihood_solver, likelihood_steps, likelihood_rtol, likelihood_atol,
                                 likelihood_divergence, hutchinson_probes,
                                 exact_divergence_max_dims).for_dims(self.num_dims)
        self.divergence = self.ode.divergence
        self.likelihood_kind = self.ode.kind(self.num_levels)  # the instance's kind
        self.val_likelihood = val_likelihood
        self.backbone = backbone(tuple(self.data_shape), self.num_classes if self.conditional else None)
        self.sampler_options(**self.sample_kwargs)  # the knobs' names were checked by the base class
        self.last_sample_nfe: int | None = None
        self.last_likelihood_nfe: int | None = None

    # ------------------------------------------------------------------ network
    def _network_dtype(self) -> torch.dtype:
        tensor = next(iter([*self.backbone.parameters(), *self.backbone.buffers()]), None)
        return torch.float32 if tensor is None else tensor.dtype

    def network(self, x: Tensor, t: Tensor, labels: Tensor | None,
                condition_transform: ConditionTransform | None = None) -> Tensor:
        """The backbone's velocity at ``x`` (any float dtype) and time ``t`` (0-dim or (B,)), in x's dtype."""
        time = t.to(x.device, torch.float32).expand(x.shape[0]) * TIME_SCALE
        extra = {} if condition_transform is None else {"condition_transform": condition_transform}
        return self.backbone(x.to(self._network_dtype()), time, labels, **extra).to(x.dtype)

    def velocity(self, labels: Tensor | None = None, guidance_scale: float = 1.0, cads: CADS | None = None,
                 generator: RandomSource = None):
        """``(x, t) -> v(x, t)`` of this model for the solvers, with classifier-free guidance and, when
        ``cads`` is active, condition-annealed sampling of the conditional pass (noise level 1 - t, fresh
        condition noise from ``generator`` at every evaluation)."""
        guided = self.conditional and guidance_scale != 1.0
        annealed = cads is not None and cads.active and self.conditional and guidance_scale != 0.0

        def field(x: Tensor, t: Tensor) -> Tensor:
            lab = self.tiled_labels(labels, x.shape[0])
            transform = None
            if annealed:
                batch = x.shape[0]

                def transform(embedding: Tensor, _: Tensor) -> Tensor:
                    # The first ``batch`` rows are the conditional pass; the "no label" rows stay as they are.
                    noisy = cads.anneal(embedding[:batch], 1.0 - float(t), generator)
                    return torch.cat([noisy, embedding[batch:]])

            if not guided:
                return self.network(x, t, lab, transform)
            no_label = torch.full_like(lab, self.num_classes)
            if guidance_scale == 0.0:
                return self.network(x, t, no_label)
            cond, uncond = self.network(torch.cat([x, x]), t, torch.cat([lab, no_label]), transform).chunk(2)
            return uncond + guidance_scale * (cond - uncond)

        return field

    # ------------------------------------------------------------------ data
    def to_signed_data(self, x: Tensor, generator: RandomSource = None) -> Tensor:
        """Data in [0, 1] -> the dequantized point in [-1, 1] the flow models (continuous data as it is)."""
        y = x if self.num_levels is None else dequantize(x, self.num_levels, generator).to(x.dtype)
        return to_signed(y)

    def to_data_levels(self, x1: Tensor) -> Tensor:
        """A point in [-1, 1] back to data space: the level whose dequantization bin holds it."""
        y = from_signed(x1.float())
        if self.num_levels is None:
            return y
        levels = torch.floor(y * self.num_levels).clamp(0, self.num_levels - 1)
        return from_levels(levels, self.num_levels)

    # ------------------------------------------------------------------ protocol
    def loss(self, x: Tensor, labels: Tensor | None = None,
             generator: RandomSource = None) -> dict[str, Tensor]:
        x1 = self.to_signed_data(x, generator)
        batch = x1.shape[0]
        t = seeds.rand((batch,), generator=generator, device=x1.device, dtype=x1.dtype)
        x0 = seeds.randn(x1.shape, generator=generator, device=x1.device, dtype=x1.dtype)
        lab = self.tiled_labels(labels, batch)
        if lab is not None and self.training and self.label_dropout > 0:
            drop = seeds.rand((batch,), generator=generator, device=x1.device) < self.label_dropout
            lab = torch.where(drop, torch.full_like(lab, self.num_classes), lab)
        predicted = self.network(self.path.interpolate(x0, x1, t), t, lab)
        target = self.path.velocity(x0, x1, t)
        mse = (predicted.float() - target.float()).pow(2).flatten(1).mean(1).mean()
        return {"loss": mse}

    def log_density(self, x1: Tensor, labels: Tensor | None = None,
                    generator: RandomSource = None) -> Tensor:
        """log p(x1) per example (float64) of points x1 in [-1, 1]^D, by the ODE from t = 1 to t = 0."""
        state = x1.double()  # the solver's state and tolerances in float64; the network runs in its own dtype
        change = self.ode.change(self.velocity(labels), state, 1.0, 0.0, generator)
        self.last_likelihood_nfe = change.nfe
        return standard_normal_log_prob(change.z) + change.delta

    @torch.no_grad()
    def nll(self, x: Tensor, labels: Tensor | None = None, generator: RandomSource = None) -> NLL:
        """Per-example nats of the discrete data (of the data itself when continuous)."""
        x1 = self.to_signed_data(x, generator)
        # y in [0, 1]^D -> 2y - 1 in [-1, 1]^D: the density on [0, 1]^D is 2^D times the one on [-1, 1]^D.
        log_p = self.log_density(x1, labels, generator) + self.num_dims * math.log(2.0)
        if self.num_levels is None:
            return NLL(-log_p, self.likelihood_kind)
        return NLL(discrete_nll_from_density(log_p, self.num_dims, self.num_levels), self.likelihood_kind)

    def likelihood_details(self, name: str) -> dict[str, Any]:
        """How the likelihood was computed, recorded beside every likelihood metric in metrics.json."""
        return {"path": self.path.name, **self.ode.details()}

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """The base's step with ``val_likelihood: full``; the loss alone with ``skip`` (an ODE solve with
        divergences per batch costs many network passes)."""
        if self.val_likelihood == "full":
            return super().validation_step(batch, batch_idx)
        x, labels = self.split_batch(batch)
        source = self.evaluation_generators("val", batch_idx, x.shape[0])
        self.log_loss("val", self.loss(x, labels, generator=source), x.shape[0])

    # ------------------------------------------------------------------ sampling
    def sampler_options(self, solver: str = "heun", steps: int = 50, rtol: float = 1e-5, atol: float = 1e-5,
                        guidance_scale: float = 1.0, cads_noise_scale: float = 0.0, cads_tau1: float = 0.6,
                        cads_tau2: float = 0.9, cads_psi: float = 1.0) -> dict[str, Any]:
        """Check ``sample``'s knobs (also those of ``sample_kwargs`` at construction, so a bad value is a
        configuration error) and return the solver's keyword arguments."""
        check_solver_options(solver, steps, rtol, atol)
        if not isinstance(guidance_scale, (int, float)) or isinstance(guidance_scale, bool) \
                or not math.isfinite(guidance_scale):
            raise ConfigurationError(f"guidance_scale must be a finite number, got {guidance_scale!r}")
        if guidance_scale != 1.0 and not self.conditional:
            raise ConfigurationError("guidance_scale needs a conditional model (conditional: true)")
        cads = cads_from_options(cads_noise_scale, cads_tau1, cads_tau2, cads_psi)
        if cads.active:
            check_cads_backbone(self.backbone, self.conditional)
        return {"solver": solver, "steps": steps, "rtol": rtol, "atol": atol}

    def draw_latents(self, num_samples: int, *, generator: RandomSource = None, **knobs: Any) -> Tensor:
        """The noise at t = 0, ``(N, *data_shape)``."""
        return seeds.randn((num_samples, *self.data_shape), generator=generator, device=self.device)

    @torch.no_grad()
    def decode_latents(self, z: Tensor, *, labels: Tensor | None = None, generator: RandomSource = None,
                       solver: str = "heun", steps: int = 50, rtol: float = 1e-5, atol: float = 1e-5,
                       guidance_scale: float = 1.0, cads_noise_scale: float = 0.0, cads_tau1: float = 0.6,
                       cads_tau2: float = 0.9, cads_psi: float = 1.0, **knobs: Any) -> Tensor:
        """The ODE from noise ``z`` (t = 0) to data (t = 1), in data space; deterministic given ``z`` (and,
        with CADS, the generator's condition noise)."""
        options = self.sampler_options(solver, steps, rtol, atol, guidance_scale, cads_noise_scale, cads_tau1,
                                       cads_tau2, cads_psi)
        if labels is None:
            labels = self.default_labels(z.shape[0])
        cads = cads_from_options(cads_noise_scale, cads_tau1, cads_tau2, cads_psi)
        solution = solve(self.velocity(labels, guidance_scale, cads, generator), z, 0.0, 1.0, **options)
        self.last_sample_nfe = solution.nfe
        return self.to_data_levels(solution.state)

    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        *,
        labels: Tensor | None = None,
        generator: RandomSource = None,
        solver: str = "heun",
        steps: int = 50,
        rtol: float = 1e-5,
        atol: float = 1e-5,
        guidance_scale: float = 1.0,
        cads_noise_scale: float = 0.0,
        cads_tau1: float = 0.6,
        cads_tau2: float = 0.9,
        cads_psi: float = 1.0,
    ) -> Tensor:
        """Images in [0, 1] on the data's levels; the solver's NFE is kept in ``last_sample_nfe``.

        Args:
            solver: ``euler``, ``midpoint``, ``heun``, ``rk4`` (``steps`` even steps; 1, 2, 2, 4 network
                evaluations per step) or ``dopri5`` (adaptive, ``rtol`` / ``atol``).
            steps: steps of a fixed-step solver.
            rtol / atol: dopri5's tolerances.
            guidance_scale: classifier-free guidance of the velocity (1: the conditional model, 0: the
                unconditional one, > 1: stronger conditioning, two network passes per evaluation);
                conditional models only.
            cads_noise_scale: condition-annealed sampling's noise on the class embedding (0: off, bit for bit
                the plain sampler); ``cads_tau1`` / ``cads_tau2`` bound the annealing in noise level 1 - t,
                ``cads_psi`` mixes in the rescaled embedding (:mod:`lit_gen.nn.cads`). Conditional models
                whose backbone takes a ``condition_transform`` (the U-Net).
        """
        cads = {"cads_noise_scale": cads_noise_scale, "cads_tau1": cads_tau1, "cads_tau2": cads_tau2,
                "cads_psi": cads_psi}
        self.sampler_options(solver, steps, rtol, atol, guidance_scale, **cads)
        z = self.draw_latents(num_samples, generator=generator)
        return self.decode_latents(z, labels=labels, generator=generator, solver=solver, steps=steps, rtol=rtol,
                                   atol=atol, guidance_scale=guidance_scale, **cads)


__all__ = ["BackboneFactory", "FlowMatching", "TIME_SCALE"]
