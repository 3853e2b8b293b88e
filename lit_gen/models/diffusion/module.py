"""Gaussian diffusion (Ho et al. 2020) with DDIM and few-step ODE sampling and classifier-free guidance.

Objective: data ``x`` in [0, 1] is mapped to ``x_0 = 2x - 1``; a timestep ``t ~ U{0..T-1}`` and noise
``eps ~ N(0, I)`` give ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps``, and the backbone regresses its
target (``eps``, ``v`` or ``x0``) at ``x_t``:

    loss = simple_weight * L_simple + vlb_weight * T * L_t / D

``L_simple`` is the mean squared error on the target; ``L_t`` is the variational bound's term t
(:mod:`.likelihood`), so the second part is an unbiased estimate of the bound per dimension (minus its
constant prior term). The likelihood reported by ``nll`` is that bound on the discrete data's NLL with every
term (``likelihood_kind = "bound"``).

The backbone (a :class:`~lit_gen.nn.unet.UNet` by default) is built by the module from
``backbone(data_shape, num_classes)``, so YAML swaps it by ``class_path`` while the data's shape and classes
still come from the datamodule link. Conditional models drop labels with probability ``label_dropout``
during training (the "no label" class), which enables classifier-free guidance at sampling time
(``guidance_scale``, Ho & Salimans 2022).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lit_gen.core import seeds
from lit_gen.core.levels import dequantize, from_signed, to_signed
from lit_gen.core.likelihood import NLL, discrete_nll_from_density
from lit_gen.core.runtime import describe_factory
from lit_gen.core.seeds import RandomSource
from lit_gen.errors import ConfigurationError, check_sizes
from lit_gen.integrate.likelihood import ODELikelihood
from lit_gen.models.base import GenerativeModule
from lit_gen.models.diffusion.likelihood import (
    VLBTerms,
    probability_flow_log_density,
    stratified_timesteps,
    variational_bound,
    vlb_term,
)
from lit_gen.models.diffusion.samplers import SAMPLERS, Denoiser, ve_denoiser
from lit_gen.models.diffusion.schedule import NoiseSchedule
from lit_gen.nn.cads import CADS, cads_from_options, check_cads_backbone
from lit_gen.nn.unet import UNet

#: Builds the denoising network from the data's shape and the number of classes (None: unconditional).
BackboneFactory = Callable[[tuple[int, ...], int | None], nn.Module]


class Diffusion(GenerativeModule):
    """Discrete-time Gaussian diffusion with a swappable backbone.

    Args:
        backbone: factory of the denoising network, called as ``backbone(data_shape, num_classes)``
            (``class_path`` + ``init_args`` in YAML; the U-Net by default).
        num_timesteps: T, the number of diffusion steps.
        schedule: noise schedule, ``"linear"`` (Ho et al., rescaled by 1000/T) or ``"cosine"``
            (Nichol & Dhariwal).
        cosine_offset: the cosine schedule's offset s, which sets the smallest noise level. Nichol & Dhariwal
            pick it so that sqrt(beta_0) is just under the data's bin width (0.008 for 8-bit data at large T);
            coarse data (17-level digits) or small T wants a larger s.
        prediction: what the backbone predicts: ``"eps"`` (noise), ``"v"`` (velocity) or ``"x0"`` (image).
        model_variance: the reverse steps' fixed variance, ``"small"`` (beta~_t, the posterior's) or
            ``"large"`` (beta_t), Ho et al.'s two choices; used by DDPM sampling and the bound (DDIM has eta).
        simple_weight: weight of L_simple (the target's mean squared error).
        vlb_weight: weight of the variational bound's per-t term (nats per dimension); 0 trains on
            L_simple only, as Ho et al.
        label_dropout: probability of training a conditional model without its label (classifier-free
            guidance needs it > 0).
        clip_x0: clip the predicted clean image to [-1, 1] when sampling and in the bound.
        vlb_batch_size: images per network call when evaluating the bound (timesteps are batched).
        val_vlb: the bound at validation: ``"full"`` (every term, logged as val/nll, as at test),
            ``"subset"`` (a stratified unbiased estimate from ``val_vlb_terms`` terms, logged as
            val/vlb_subset and val/vlb_subset_bpd, kind "estimate") or ``"skip"`` (loss only). Test always
            evaluates every term.
        val_vlb_terms: terms of the validation estimate (the decoder term plus one t per stratum).
        ode_likelihood: also report the probability-flow ODE likelihood (``ode_nll`` / ``ode_nll_bpd``)
            beside the bound wherever the bound is computed (test; validation with ``val_vlb: full``): the
            shared dequantization policy, ``dopri5`` or a fixed-step solver, the exact divergence (kind
            "bound") or Hutchinson's (kind "estimate"). Costs an ODE solve with divergences per batch.
        ode_solver / ode_steps / ode_rtol / ode_atol: its solver (``dopri5`` with tolerances, or ``euler``,
            ``midpoint``, ``heun``, ``rk4`` with steps).
        ode_divergence: ``"exact"``, ``"hutchinson"`` or ``"auto"`` (exact up to
            ``ode_exact_divergence_max_dims`` dimensions).
        ode_hutchinson_probes: Rademacher probes per example of Hutchinson's estimator.
    """

    likelihood_kind = "bound"
    sampling_knob = "guidance_scale"

    def __init__(
        self,
        backbone: BackboneFactory = UNet,
        num_timesteps: int = 1000,
        schedule: Literal["linear", "cosine"] = "linear",
        cosine_offset: float = 0.008,
        prediction: Literal["eps", "v", "x0"] = "eps",
        model_variance: Literal["small", "large"] = "small",
        simple_weight: float = 1.0,
        vlb_weight: float = 0.0,
        label_dropout: float = 0.1,
        clip_x0: bool = True,
        vlb_batch_size: int = 1024,
        val_vlb: Literal["full", "subset", "skip"] = "subset",
        val_vlb_terms: int = 50,
        ode_likelihood: bool = False,
        ode_solver: str = "dopri5",
        ode_steps: int = 100,
        ode_rtol: float = 1e-5,
        ode_atol: float = 1e-5,
        ode_divergence: Literal["exact", "hutchinson", "auto"] = "auto",
        ode_hutchinson_probes: int = 1,
        ode_exact_divergence_max_dims: int = 128,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if "backbone" in self.hparams:
            self.hparams["backbone"] = describe_factory(self.hparams["backbone"])
        if prediction not in ("eps", "v", "x0"):
            raise ConfigurationError(f"prediction must be 'eps', 'v' or 'x0', got {prediction!r}")
        if val_vlb not in ("full", "subset", "skip"):
            raise ConfigurationError(f"val_vlb must be 'full', 'subset' or 'skip', got {val_vlb!r}")
        if not 0.0 <= label_dropout < 1.0:
            raise ConfigurationError(f"label_dropout must be in [0, 1), got {label_dropout}")
        if vlb_weight > 0 and self.num_levels is None:
            raise ConfigurationError("vlb_weight > 0 needs discrete data (num_levels): the decoder is discrete")
        if model_variance not in ("small", "large"):
            raise ConfigurationError(f"model_variance must be 'small' or 'large', got {model_variance!r}")
        check_sizes(type(self).__name__, 2, num_timesteps=num_timesteps, val_vlb_terms=val_vlb_terms)
        check_sizes(type(self).__name__, vlb_batch_size=vlb_batch_size)
        self.schedule = NoiseSchedule.from_name(schedule, num_timesteps, cosine_offset)
        self.prediction = prediction
        self.model_variance = model_variance
        self.simple_weight, self.vlb_weight = simple_weight, vlb_weight
        self.label_dropout = label_dropout
        self.clip_x0 = clip_x0
        self.vlb_batch_size = vlb_batch_size
        self.val_vlb, self.val_vlb_terms = val_vlb, val_vlb_terms
        if ode_likelihood and self.num_levels is None:
            raise ConfigurationError("ode_likelihood reports nats of discrete data; this datamodule is continuous")
        self.ode_likelihood = ode_likelihood
        self.ode = ODELikelihood(ode_solver, ode_steps, ode_rtol, ode_atol, ode_divergence, ode_hutchinson_probes,
                                 ode_exact_divergence_max_dims).for_dims(self.num_dims)
        self.last_likelihood_nfe: int | None = None
        self.backbone = backbone(tuple(self.data_shape), self.num_classes if self.conditional else None)
        self.sampler_options(**self.sample_kwargs)  # the knobs' names were checked by the base class

    @property
    def num_timesteps(self) -> int:
        return self.schedule.num_timesteps

    # ------------------------------------------------------------------ network
    def _time(self, t: Tensor) -> Tensor:
        """Timesteps rescaled to [0, 1000), so the backbone's embedding does not depend on T."""
        return t.float() * (1000.0 / self.num_timesteps)

    def denoiser(self, labels: Tensor | None = None, guidance_scale: float = 1.0, clip: bool | None = None,
                 cads: CADS | None = None, generator: RandomSource = None) -> Denoiser:
        """The sampler-facing ``(x_t, t) -> (x0_hat, eps_hat)`` of this model, with guidance and clipping.

        Guided output: ``out_uncond + guidance_scale * (out_cond - out_uncond)`` (1: conditional, 0:
        unconditional); the combination is linear with weights summing to one, so it is the same in the eps,
        v and x0 parameterizations. An active ``cads`` anneals the conditional pass's class embedding at noise
        level ``t / (T - 1)``, its noise drawn from ``generator`` at every call.
        """
        guided = self.conditional and guidance_scale != 1.0
        clip = self.clip_x0 if clip is None else clip
        annealed = cads is not None and cads.active and self.conditional and guidance_scale != 0.0

        def network(xt: Tensor, t: Tensor, lab: Tensor | None, batch: int | None = None) -> Tensor:
            """The backbone; with CADS, its first ``batch`` rows (the conditional pass) annealed."""
            if not annealed or batch is None:
                return self.backbone(xt, self._time(t), lab)
            level = t[:batch].double() / (self.num_timesteps - 1)

            def transform(embedding: Tensor, _: Tensor) -> Tensor:
                return torch.cat([cads.anneal(embedding[:batch], level, generator), embedding[batch:]])

            return self.backbone(xt, self._time(t), lab, condition_transform=transform)

        def denoise(xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            lab = self.tiled_labels(labels, xt.shape[0])
            if guided and guidance_scale == 0.0:
                out = network(xt, t, torch.full_like(lab, self.num_classes))
            elif guided:
                both = torch.cat([lab, torch.full_like(lab, self.num_classes)])
                cond, uncond = network(torch.cat([xt, xt]), torch.cat([t, t]), both, xt.shape[0]).chunk(2)
                out = uncond + guidance_scale * (cond - uncond)
            else:
                out = network(xt, t, lab, xt.shape[0] if lab is not None else None)
            x0, eps = self.schedule.x0_and_eps(self.prediction, out.to(xt.dtype), xt, t)
            if clip:
                x0 = x0.clamp(-1.0, 1.0)
                eps = self.schedule.eps_from_x0(xt, t, x0)
            return x0, eps

        return denoise

    # ------------------------------------------------------------------ protocol
    def loss(self, x: Tensor, labels: Tensor | None = None,
             generator: RandomSource = None) -> dict[str, Tensor]:
        x0 = to_signed(x)
        batch = x0.shape[0]
        t = seeds.randint(0, self.num_timesteps, (batch,), device=x0.device, generator=generator)
        noise = seeds.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
        xt = self.schedule.q_sample(x0, t, noise)
        lab = self.tiled_labels(labels, batch)
        if lab is not None and self.training and self.label_dropout > 0:
            drop = seeds.rand((batch,), device=x0.device, generator=generator) < self.label_dropout
            lab = torch.where(drop, torch.full_like(lab, self.num_classes), lab)
        out = self.backbone(xt, self._time(t), lab)
        target = self.schedule.target(self.prediction, x0, noise, t)
        mse = (out.float() - target.float()).pow(2).flatten(1).mean(1).mean()
        terms = {"mse": mse}
        loss = self.simple_weight * mse
        if self.vlb_weight > 0:
            x0_hat, _ = self.schedule.x0_and_eps(self.prediction, out.float(), xt, t)
            term = vlb_term(self.schedule, x0, xt, t, x0_hat, self.num_levels, self.model_variance)
            per_dim = term * self.num_timesteps / self.num_dims
            terms["vlb_per_dim"] = per_dim.mean()
            loss = loss + self.vlb_weight * per_dim.mean().float()
        terms["loss"] = loss
        return terms

    def vlb(self, x: Tensor, labels: Tensor | None = None, num_terms: int | None = None,
            generator: RandomSource = None) -> VLBTerms:
        """The bound's parts for data ``x`` in [0, 1]: every term, or a stratified estimate from
        ``num_terms`` terms (each example its own timesteps with per-example generators)."""
        if self.num_levels is None:
            raise ConfigurationError("the diffusion bound is on discrete data; this datamodule is continuous")
        timesteps = weights = None
        if num_terms is not None and num_terms < self.num_timesteps:
            timesteps, weights = stratified_timesteps(self.num_timesteps, num_terms, generator, x.device)
        return variational_bound(self.denoiser(labels), self.schedule, to_signed(x), self.num_levels,
                                 timesteps=timesteps, weights=weights, batch_size=self.vlb_batch_size,
                                 variance=self.model_variance, generator=generator)

    @torch.no_grad()
    def nll(self, x: Tensor, labels: Tensor | None = None, generator: RandomSource = None) -> NLL:
        """The variational bound with all T terms (per-example nats of the discrete data); with
        ``ode_likelihood`` the probability-flow ODE's NLL beside it (term ``ode_nll``)."""
        out = NLL(self.vlb(x, labels, generator=generator).total, "bound")
        if self.ode_likelihood:
            out.terms["ode_nll"] = (self.ode_nll(x, labels, generator), self.ode.kind(self.num_levels))
        return out

    def ode_log_density(self, y: Tensor, labels: Tensor | None = None, generator: RandomSource = None) -> Tensor:
        """``log p(y)`` (float64, per example) of points in [-1, 1]^D under the probability-flow ODE of the
        conditional (or unconditional) model, without x0 clipping (it would make the field non-smooth)."""
        tensors = [*self.backbone.parameters(), *self.backbone.buffers()]
        network_dtype = tensors[0].dtype if tensors else torch.float32
        denoise_vp = self.denoiser(labels, clip=False)

        def in_network_dtype(xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
            x0, eps = denoise_vp(xt.to(network_dtype), t)
            return x0.to(xt.dtype), eps.to(xt.dtype)

        log_p, nfe = probability_flow_log_density(ve_denoiser(in_network_dtype, self.schedule), self.schedule, y,
                                                  self.ode, generator)
        self.last_likelihood_nfe = nfe
        return log_p

    @torch.no_grad()
    def ode_nll(self, x: Tensor, labels: Tensor | None = None, generator: RandomSource = None) -> Tensor:
        """Per-example nats of the discrete data ``x`` in [0, 1] from the ODE density of its dequantized
        point (+ D log 2 for the map to [-1, 1], + D log K for the bins)."""
        y = to_signed(dequantize(x, self.num_levels, generator).to(x.dtype))
        log_p = self.ode_log_density(y, labels, generator) + self.num_dims * math.log(2.0)
        return discrete_nll_from_density(log_p, self.num_dims, self.num_levels)

    def extra_likelihood_kinds(self) -> dict[str, str]:
        kinds = {"vlb_subset": "estimate", "vlb_subset_bpd": "estimate"}
        if self.ode_likelihood:
            kinds.update(ode_nll=self.ode.kind(self.num_levels), ode_nll_bpd=self.ode.kind(self.num_levels))
        return kinds

    def likelihood_details(self, name: str) -> dict[str, Any]:
        """The ODE likelihood's solver and divergence beside ``ode_nll`` in metrics.json."""
        if not name.startswith("ode_nll"):
            return {}
        levels = self.schedule.sigmas()
        return {"ode": "probability flow", **self.ode.details(), "sigma_min": levels[0].item(),
                "sigma_max": levels[-1].item()}

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        """The base's step with ``val_vlb: full``; otherwise the loss and the cheaper (or no) bound.

        The bound costs T network passes per image, too much every epoch for T = 1000 on large splits:
        ``subset`` logs an unbiased stratified estimate under its own name (val/vlb_subset, kind
        "estimate"), never as val/nll, so a reported nll is always the bound with every term.
        """
        if self.val_vlb == "full":
            return super().validation_step(batch, batch_idx)
        x, labels = self.split_batch(batch)
        source = self.evaluation_generators("val", batch_idx, x.shape[0])
        self.log_loss("val", self.loss(x, labels, generator=source), x.shape[0])
        if self.val_vlb == "subset" and self.num_levels is not None:
            estimate = self.vlb(x, labels, num_terms=self.val_vlb_terms, generator=source).total
            self.log_nll("val", "vlb_subset", estimate, "estimate")

    def sampler_options(self, sampler: str = "ddim", steps: int | None = None, eta: float = 0.0,
                        guidance_scale: float = 1.0, cads_noise_scale: float = 0.0, cads_tau1: float = 0.6,
                        cads_tau2: float = 0.9, cads_psi: float = 1.0) -> dict[str, Any]:
        """Check ``sample``'s knobs (also those of ``sample_kwargs`` at construction, so a bad value is a
        configuration error) and return the sampler function's keyword arguments."""
        if sampler not in SAMPLERS:
            raise ConfigurationError(f"sampler must be one of {sorted(SAMPLERS)}, got {sampler!r}")
        if cads_from_options(cads_noise_scale, cads_tau1, cads_tau2, cads_psi).active:
            check_cads_backbone(self.backbone, self.conditional)
        if guidance_scale != 1.0 and not self.conditional:
            raise ConfigurationError("guidance_scale needs a conditional model (conditional: true)")
        if sampler == "ddpm":
            if steps not in (None, self.num_timesteps) or eta != 0.0:
                raise ConfigurationError(f"the ddpm sampler runs all {self.num_timesteps} steps without eta; "
                                 "use sampler: ddim for fewer steps or eta")
            return {"variance": self.model_variance}
        ode_steps = {"dpmpp_2m": 20, "heun": 10}  # the ODE samplers' default steps
        if sampler in ode_steps:
            if (steps is not None and steps < 1) or eta != 0.0:
                raise ConfigurationError(f"the {sampler} sampler is a deterministic ODE solver: it needs "
                                         f"steps >= 1 and eta = 0, got steps={steps}, eta={eta}")
            # the ODE samplers step between timesteps, so steps is not capped at T
            return {"steps": ode_steps[sampler] if steps is None else steps}
        if (steps is not None and steps < 1) or eta < 0:
            raise ConfigurationError(f"DDIM needs steps >= 1 and eta >= 0, got steps={steps}, eta={eta}")
        return {"steps": min(50 if steps is None else steps, self.num_timesteps), "eta": eta}

    @torch.no_grad()
    def sample(
        self,
        num_samples: int,
        *,
        labels: Tensor | None = None,
        generator: RandomSource = None,
        sampler: str = "ddim",
        steps: int | None = None,
        eta: float = 0.0,
        guidance_scale: float = 1.0,
        cads_noise_scale: float = 0.0,
        cads_tau1: float = 0.6,
        cads_tau2: float = 0.9,
        cads_psi: float = 1.0,
    ) -> Tensor:
        """Images in [0, 1] (snapped to the data's levels).

        Args:
            sampler: ``"ddim"``, ``"ddpm"`` (ancestral, all T steps), or the ODE solvers ``"dpmpp_2m"``
                (DPM-Solver++ 2M, ``steps`` network calls) and ``"heun"`` (``2 * steps - 1`` calls), which
                step through Karras et al.'s noise levels between the schedule's timesteps.
            steps: DDIM steps (default 50; more than T means all T); DDPM runs all T and accepts only T;
                the ODE solvers' steps (default 20 for dpmpp_2m, 10 for heun; any number, even above T).
            eta: DDIM's noise (0: deterministic given the initial noise; 1 with all steps: DDPM); the ODE
                solvers are deterministic and take only 0.
            guidance_scale: classifier-free guidance (1: the conditional model, 0: the unconditional one,
                > 1: stronger conditioning); conditional models only, with every sampler.
            cads_noise_scale: condition-annealed sampling's noise on the class embedding of the conditional
                pass (0: off, the plain sampler bit for bit); ``cads_tau1`` / ``cads_tau2`` bound the
                annealing in noise level t / (T - 1), ``cads_psi`` mixes in the rescaled embedding
                (:mod:`lit_gen.nn.cads`). Conditional models with a backbone that takes a ``condition_transform``.
        """
        x0 = self.sample_signed(num_samples, labels=labels, generator=generator, sampler=sampler, steps=steps,
                                eta=eta, guidance_scale=guidance_scale, cads_noise_scale=cads_noise_scale,
                                cads_tau1=cads_tau1, cads_tau2=cads_tau2, cads_psi=cads_psi)
        x = from_signed(x0.float().clamp(-1.0, 1.0))
        return self.snap_to_levels(x)

    @torch.no_grad()
    def sample_signed(self, num_samples: int, *, labels: Tensor | None = None, generator: RandomSource = None,
                      sampler: str = "ddim", steps: int | None = None, eta: float = 0.0, guidance_scale: float = 1.0,
                      cads_noise_scale: float = 0.0, cads_tau1: float = 0.6, cads_tau2: float = 0.9,
                      cads_psi: float = 1.0) -> Tensor:
        """The sampler's x0 in the model's own coordinates (``2x - 1``), neither clamped to [-1, 1] nor snapped
        to levels: :meth:`sample` before its map to data space, for a model of continuous data that reaches
        beyond [-1, 1] (a latent space; build it with ``clip_x0=False``). The knobs are :meth:`sample`'s."""
        options = self.sampler_options(sampler, steps, eta, guidance_scale, cads_noise_scale, cads_tau1, cads_tau2,
                                       cads_psi)
        if labels is None:
            labels = self.default_labels(num_samples)
        noise = seeds.randn((num_samples, *self.data_shape), generator=generator, device=self.device)
        cads = cads_from_options(cads_noise_scale, cads_tau1, cads_tau2, cads_psi)
        return SAMPLERS[sampler](self.denoiser(labels, guidance_scale, cads=cads, generator=generator), self.schedule,
                                 noise, generator=generator, **options)


__all__ = ["BackboneFactory", "Diffusion"]
