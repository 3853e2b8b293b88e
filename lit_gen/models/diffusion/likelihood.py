"""The variational bound on the discrete data's NLL (Ho et al. 2020, eq. 5), in float64.

For data ``x_0`` in [-1, 1] on K levels,

    -log P(x_0) <= KL(q(x_{T-1} | x_0) || N(0, I))                                   prior
                   + sum_{t >= 1} KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))         diffusion
                   - log p(x_0 | x_{t=0})                                            decoder

with 0-based t (see :mod:`.schedule`). The decoder is a Gaussian discretized into the K bins of width
``2/(K-1)`` centred on the levels, the two edge bins extended to -inf / +inf, so it is a probability of the
discrete data and the bound needs no dequantization term. Each KL term is evaluated at one draw
``x_t ~ q(x_t | x_0)``: the bound is exact in t (every term) and a one-sample Monte Carlo in x_t.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.special import log_ndtr

from lit_gen.core.seeds import ExampleGenerators, RandomSource
from lit_gen.errors import ConfigurationError
from lit_gen.integrate.likelihood import ODELikelihood, standard_normal_log_prob
from lit_gen.models.diffusion.samplers import Denoiser, VEDenoiser
from lit_gen.models.diffusion.schedule import ModelVariance, NoiseSchedule


def normal_kl(mean1: Tensor, log_var1: Tensor, mean2: Tensor, log_var2: Tensor) -> Tensor:
    """KL(N(mean1, exp(log_var1)) || N(mean2, exp(log_var2))), elementwise."""
    return 0.5 * (log_var2 - log_var1 + torch.exp(log_var1 - log_var2)
                  + (mean1 - mean2) ** 2 * torch.exp(-log_var2) - 1.0)


def _log_cdf_difference(upper: Tensor, lower: Tensor) -> Tensor:
    """``log(Phi(upper) - Phi(lower))`` for ``upper > lower``, accurate in both tails.

    ``log Phi(b) + log1p(-Phi(a) / Phi(b))``, mirrored (``Phi(-a) - Phi(-b)``) when the bin lies above the
    mean, so neither CDF is ever close to 1 when subtracted.
    """
    mirror = (upper + lower) > 0
    hi = torch.where(mirror, -lower, upper)
    lo = torch.where(mirror, -upper, lower)
    log_hi, log_lo = log_ndtr(hi), log_ndtr(lo)
    return log_hi + torch.log1p(-torch.exp(log_lo - log_hi).clamp(max=1 - 1e-16))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_scale: Tensor,
                                        num_levels: int) -> Tensor:
    """Per-dimension ``log P(x)`` of K-level data ``x`` in [-1, 1] under N(mean, exp(log_scale)^2) binned.

    Level ``k`` sits at ``-1 + 2k/(K-1)``; its bin is that value ``+- 1/(K-1)``, except that the lowest bin
    reaches down to -inf and the highest up to +inf, so the K probabilities sum to one.
    """
    x, mean, log_scale = x.double(), mean.double(), log_scale.double()
    half_bin = 1.0 / (num_levels - 1)
    inv_scale = torch.exp(-log_scale)
    upper = (x - mean + half_bin) * inv_scale
    lower = (x - mean - half_bin) * inv_scale
    edge = half_bin / 2  # levels are exact multiples of the bin width: test against half a bin of slack
    lowest, highest = x < -1 + edge, x > 1 - edge
    return torch.where(lowest, log_ndtr(upper),
                       torch.where(highest, log_ndtr(-lower), _log_cdf_difference(upper, lower)))


def prior_kl(schedule: NoiseSchedule, x0: Tensor) -> Tensor:
    """Per-example KL(q(x_{T-1} | x_0) || N(0, I)) in nats: ~0 for a schedule that destroys the signal."""
    x0 = x0.double()
    t = torch.full((x0.shape[0],), schedule.num_timesteps - 1, device=x0.device, dtype=torch.long)
    mean, var = schedule.q_mean_variance(x0, t)
    return normal_kl(mean, var.log(), torch.zeros_like(mean), torch.zeros_like(mean)).flatten(1).sum(1)


def vlb_term(schedule: NoiseSchedule, x0: Tensor, xt: Tensor, t: Tensor, x0_hat: Tensor, num_levels: int,
             variance: ModelVariance = "small") -> Tensor:
    """Per-example nats of term ``t`` at the draw ``xt``: the KL for t >= 1, the decoder NLL for t = 0.

    The model's reverse step is the true posterior's form with ``x0_hat`` in place of ``x_0``, and variance
    beta~_t (``"small"``) or beta_t (``"large"``), Ho et al.'s two choices; at t = 0 the decoder's width is
    sqrt(beta~_1) in both.
    """
    x0, xt, x0_hat = x0.double(), xt.double(), x0_hat.double()
    true_mean, _, true_log_var = schedule.q_posterior(x0, xt, t)
    model_mean, _, _ = schedule.q_posterior(x0_hat, xt, t)
    model_log_var = schedule.model_log_variance(t, xt, variance)
    kl = normal_kl(true_mean, true_log_var, model_mean, model_log_var).flatten(1).sum(1)
    log_p = discretized_gaussian_log_likelihood(x0, model_mean, 0.5 * model_log_var, num_levels)
    decoder = -log_p.flatten(1).sum(1)
    return torch.where(t == 0, decoder, kl)


def stratified_timesteps(num_timesteps: int, num_terms: int, generator: RandomSource = None,
                         device: torch.device | None = None) -> tuple[Tensor, Tensor]:
    """An unbiased estimate's timesteps and weights: t = 0 (the decoder) exactly, plus one random t from
    each of ``num_terms - 1`` equal strata of [1, T), weighted by its stratum's size.

    Timesteps are ``(num_terms,)``, shared by the batch; with :class:`~lit_gen.core.seeds.ExampleGenerators`
    they are ``(num_terms, B)``, column i example i's own draw.
    """
    if num_terms >= num_timesteps:
        every = torch.arange(num_timesteps, device=device)
        return every, torch.ones(num_timesteps, dtype=torch.float64, device=device)
    if num_terms < 2:
        raise ConfigurationError(f"a stratified VLB estimate needs >= 2 terms (decoder + diffusion), got {num_terms}")
    edges = torch.linspace(1, num_timesteps, num_terms, dtype=torch.float64).round().long()
    sizes = edges[1:] - edges[:-1]
    if isinstance(generator, ExampleGenerators):
        u = generator.rand((len(sizes),), dtype=torch.float64).cpu().T  # (strata, B)
        offsets = (u * sizes[:, None]).long()
        t = torch.cat([torch.zeros(1, len(generator), dtype=torch.long), edges[:-1, None] + offsets])
        return t.to(device), torch.cat([torch.ones(1, dtype=torch.float64), sizes.double()]).to(device)
    offsets = (torch.rand(len(sizes), generator=generator, dtype=torch.float64) * sizes).long()
    t = torch.cat([torch.zeros(1, dtype=torch.long), edges[:-1] + offsets])
    weights = torch.cat([torch.ones(1, dtype=torch.float64), sizes.double()])
    return t.to(device), weights.to(device)


@dataclass
class VLBTerms:
    """Per-example nats of the bound's three parts; ``total`` is the bound (exact in t only when
    ``num_terms`` equals T, otherwise a stratified estimate of it)."""

    prior: Tensor
    decoder: Tensor
    diffusion: Tensor
    num_terms: int

    @property
    def total(self) -> Tensor:
        return self.prior + self.decoder + self.diffusion


@torch.no_grad()
def variational_bound(denoiser: Denoiser, schedule: NoiseSchedule, x0: Tensor, num_levels: int, *,
                      timesteps: Tensor | None = None, weights: Tensor | None = None,
                      batch_size: int = 1024, variance: ModelVariance = "small",
                      generator: RandomSource = None) -> VLBTerms:
    """The bound's terms for ``x0`` (data in [-1, 1]), every t by default.

    Several timesteps are evaluated in one network call: the denoiser sees ``x0.repeat(k, ...)``-shaped
    batches of at most ``batch_size`` images (k timesteps of the whole batch), so a conditional denoiser
    must repeat its labels the same way (:meth:`Diffusion.denoiser` does). ``timesteps`` is ``(n,)``, the
    same for every example, or ``(n, B)``, each example its own (with ``weights`` ``(n,)`` either way).
    """
    num_timesteps = schedule.num_timesteps
    if timesteps is None:
        timesteps = torch.arange(num_timesteps, device=x0.device)
    timesteps = timesteps.to(x0.device)
    weights = torch.ones(len(timesteps), dtype=torch.float64, device=x0.device) if weights is None \
        else weights.to(x0.device, torch.float64)
    batch = x0.shape[0]
    if timesteps.dim() == 2 and timesteps.shape[1] != batch:
        raise ValueError(f"per-example timesteps {tuple(timesteps.shape)} do not fit a batch of {batch}")
    per_call = max(1, batch_size // batch)
    decoder = torch.zeros(batch, dtype=torch.float64, device=x0.device)
    diffusion = torch.zeros_like(decoder)
    for start in range(0, len(timesteps), per_call):
        ts, ws = timesteps[start:start + per_call], weights[start:start + per_call]
        k = len(ts)
        grid = ts if ts.dim() == 2 else ts[:, None].expand(k, batch)  # (k, B): each term's t per example
        x0_rep = x0.repeat(k, *([1] * (x0.dim() - 1)))
        t = grid.reshape(-1)
        if isinstance(generator, ExampleGenerators):
            # One draw per term and example: how many terms share a network call depends on the batch.
            noise = torch.cat([generator.randn(x0.shape[1:], torch.float64).to(x0.device) for _ in range(k)])
        else:
            noise = torch.randn(x0_rep.shape, generator=generator, device=x0.device, dtype=torch.float64)
        xt = schedule.q_sample(x0_rep.double(), t, noise)
        x0_hat, _ = denoiser(xt.to(x0.dtype), t)
        terms = vlb_term(schedule, x0_rep, xt, t, x0_hat, num_levels, variance).view(k, batch)
        weighted = terms * ws[:, None]
        is_decoder = grid == 0
        decoder += torch.where(is_decoder, weighted, 0.0).sum(0)
        diffusion += torch.where(is_decoder, 0.0, weighted).sum(0)
    return VLBTerms(prior_kl(schedule, x0), decoder, diffusion, len(timesteps))


def probability_flow_log_density(denoise: VEDenoiser, schedule: NoiseSchedule, y: Tensor, ode: ODELikelihood,
                                 generator: RandomSource = None) -> tuple[Tensor, int]:
    """``log p(y)`` per example (float64) of points ``y`` in [-1, 1]^D under the probability-flow ODE, and
    the network evaluations it took (Song et al. 2021, in the variance-exploding view of the schedule).

    In ``x = x_t / sqrt(abar_t) = x_0 + sigma eps`` the ODE is ``dx / dsigma = (x - D(x, sigma)) / sigma``;
    integrated in ``s = log sigma`` it is ``dx / ds = x - D(x, e^s)``, smooth across the schedule's four
    decades of sigma. ``y`` is taken as the point at the smallest noise level ``sigma_0`` (the density is that
    of the model's marginal there) and carried to ``sigma_{T-1}``, where the prior ``x_t ~ N(0, I)`` is
    ``N(0, (1 + sigma^2) I)`` in these coordinates; the instantaneous change of variables adds the
    divergence along the way.
    """
    levels = schedule.sigmas()
    sigma_min, sigma_max = levels[0].item(), levels[-1].item()

    def velocity(x: Tensor, s: Tensor) -> Tensor:
        return x - denoise(x, math.exp(float(s)))

    change = ode.change(velocity, y.double(), math.log(sigma_min), math.log(sigma_max), generator)
    variance = 1.0 + sigma_max**2
    dims = y[0].numel()
    log_prior = standard_normal_log_prob(change.z / math.sqrt(variance)) - 0.5 * dims * math.log(variance)
    return log_prior + change.delta, change.nfe
