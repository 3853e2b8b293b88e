"""The Gaussian forward process of a discrete-time diffusion (Ho et al. 2020), and its closed forms.

Timesteps are 0-based: ``t`` in ``[0, T)`` indexes ``beta_t`` and ``abar_t = prod_{s<=t} (1 - beta_s)``, so

    q(x_t | x_0)          = N(sqrt(abar_t) x_0, (1 - abar_t) I)
    q(x_{t-1} | x_t, x_0) = N(c0_t x_0 + ct_t x_t, beta~_t I),   with abar_{-1} = 1

(improved-diffusion's convention; the paper's ``x_1`` is our ``t = 0``). Everything is kept in float64
buffers and cast to the input's dtype on use, so likelihood terms can be computed in float64.

A network's output is one of three equivalent parameterizations of the denoised image, converted here:
``eps`` (the noise), ``x0`` (the clean image) and ``v = sqrt(abar) eps - sqrt(1 - abar) x0``
(Salimans & Ho 2022).

Every coefficient that depends only on ``abar_t`` also takes a floating-point ``t``: the continuous-time view
of the schedule, whose log-SNR ``lambda_t = log(abar_t / (1 - abar_t))`` is linear between integer timesteps
(``abar_t = sigmoid(lambda_t)``), which is what the ODE samplers step through. Integer-valued timesteps give
the table's values exactly, long or float.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor, nn

from lit_gen.errors import ConfigurationError

ScheduleName = Literal["linear", "cosine"]
Prediction = Literal["eps", "v", "x0"]
ModelVariance = Literal["small", "large"]


def linear_betas(num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Ho et al.'s linear betas, rescaled by 1000 / T (Nichol & Dhariwal): any T spans one noise range."""
    scale = 1000.0 / num_timesteps
    end = min(scale * beta_end, 0.999)
    return torch.linspace(scale * beta_start, end, num_timesteps, dtype=torch.float64)


def cosine_betas(num_timesteps: int, offset: float = 0.008, max_beta: float = 0.999) -> Tensor:
    """Nichol & Dhariwal's cosine schedule: ``abar(t) = cos^2((t/T + s) / (1 + s) * pi/2)``, betas clipped."""
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    abar = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
    return (1 - abar[1:] / abar[:-1]).clamp(max=max_beta)


class NoiseSchedule(nn.Module):
    """Betas and every derived coefficient, as non-persistent float64 buffers (they move with the model
    but never enter checkpoints: the schedule is rebuilt from the config)."""

    def __init__(self, betas: Tensor) -> None:
        super().__init__()
        betas = torch.as_tensor(betas, dtype=torch.float64)
        if betas.dim() != 1 or len(betas) < 2 or not ((betas > 0) & (betas < 1)).all():
            raise ConfigurationError("betas must be a 1-D tensor of at least 2 values in (0, 1)")
        abar = torch.cumprod(1 - betas, dim=0)
        abar_prev = torch.cat([abar.new_ones(1), abar[:-1]])
        posterior_variance = betas * (1 - abar_prev) / (1 - abar)
        buffers = {
            "betas": betas,
            "alphas_cumprod": abar,
            "alphas_cumprod_prev": abar_prev,
            "sqrt_alphas_cumprod": abar.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - abar).sqrt(),
            "posterior_variance": posterior_variance,
            # beta~_0 = 0: the model's variance at t = 0 borrows beta~_1 so its log stays finite.
            "posterior_log_variance": torch.log(torch.cat([posterior_variance[1:2], posterior_variance[1:]])),
            # Ho et al.'s other reverse variance, sigma_t^2 = beta_t (right for x_0 ~ N(0, I); beta~ is right
            # for a point mass); t = 0 keeps beta~_1 as improved-diffusion does.
            "beta_log_variance": torch.log(torch.cat([posterior_variance[1:2], betas[1:]])),
            "posterior_coef_x0": betas * abar_prev.sqrt() / (1 - abar),
            "posterior_coef_xt": (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar),
            "log_snr": abar.log() - torch.log1p(-abar),
        }
        for name, value in buffers.items():
            self.register_buffer(name, value, persistent=False)

    @classmethod
    def from_name(cls, name: ScheduleName, num_timesteps: int = 1000,
                  cosine_offset: float = 0.008) -> NoiseSchedule:
        if num_timesteps < 2:
            raise ConfigurationError(f"num_timesteps must be >= 2, got {num_timesteps}")
        if name == "linear":
            return cls(linear_betas(num_timesteps))
        if name == "cosine":
            return cls(cosine_betas(num_timesteps, cosine_offset))
        raise ConfigurationError(f"schedule must be 'linear' or 'cosine', got {name!r}")

    @property
    def num_timesteps(self) -> int:
        return len(self.betas)

    @staticmethod
    def _at(buffer: Tensor, t: Tensor, like: Tensor) -> Tensor:
        """``buffer[t]`` shaped to broadcast against ``like`` (B, ...), in ``like``'s dtype."""
        return buffer[t].to(like.dtype).view(-1, *([1] * (like.dim() - 1)))

    def _continuous(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(abar_t, 1 - abar_t)`` at float ``t`` (clamped to [0, T-1]) from the piecewise-linear log-SNR,
        shaped and cast as :meth:`_at`; integer-valued ``t`` read the table, so the view agrees with it."""
        t = t.to(torch.float64).clamp(0, self.num_timesteps - 1)
        lo = t.floor().long()
        hi = (lo + 1).clamp(max=self.num_timesteps - 1)
        frac = t - lo
        log_snr = self.log_snr[lo] + frac * (self.log_snr[hi] - self.log_snr[lo])
        on_grid = frac == 0
        abar = self.alphas_cumprod[lo]
        # sigmoid(-lambda) rather than 1 - sigmoid(lambda): the noise level stays accurate where abar ~ 1
        signal2 = torch.where(on_grid, abar, torch.sigmoid(log_snr))
        noise2 = torch.where(on_grid, 1 - abar, torch.sigmoid(-log_snr))
        shape = (-1, *([1] * (like.dim() - 1)))
        return signal2.to(like.dtype).view(shape), noise2.to(like.dtype).view(shape)

    def alpha_bar(self, t: Tensor, like: Tensor) -> Tensor:
        """``abar_t`` per example, with ``abar_{-1} = 1`` for long ``t`` (DDIM's final step lands on x_0);
        float ``t`` is the continuous-time view (see the module docstring), clamped to [0, T-1]."""
        if t.is_floating_point():
            return self._continuous(t, like)[0]
        padded = torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod])
        return self._at(padded, t + 1, like)

    def signal_and_noise_scales(self, t: Tensor, like: Tensor) -> tuple[Tensor, Tensor]:
        """``(sqrt(abar_t), sqrt(1 - abar_t))``: x_t = signal * x_0 + noise * eps."""
        if t.is_floating_point():
            signal2, noise2 = self._continuous(t, like)
            return signal2.sqrt(), noise2.sqrt()
        signal = self._at(self.sqrt_alphas_cumprod, t, like)
        return signal, self._at(self.sqrt_one_minus_alphas_cumprod, t, like)

    # ------------------------------------------------------------------ variance-exploding view
    def sigmas(self) -> Tensor:
        """The VE noise levels ``sigma_t = sqrt((1 - abar_t) / abar_t)`` for t = 0..T-1, increasing, float64
        (``x_ve = x_t / sqrt(abar_t) = x_0 + sigma_t eps``)."""
        return (-0.5 * self.log_snr).exp()

    def timestep_from_sigma(self, sigma: Tensor) -> Tensor:
        """The float timesteps of VE noise levels ``sigma``: the piecewise-linear log-SNR inverted at
        ``lambda = -2 log sigma``, clamped to [0, T-1] (sigma = 0 gives t = 0)."""
        increasing = self.log_snr.flip(0)  # lambda falls with t; searchsorted wants it rising
        top = len(increasing) - 1
        log_snr = -2 * torch.as_tensor(sigma, dtype=torch.float64, device=increasing.device).log()
        log_snr = log_snr.clamp(increasing[0], increasing[top])
        hi = torch.searchsorted(increasing, log_snr).clamp(1, top)
        frac = (log_snr - increasing[hi - 1]) / (increasing[hi] - increasing[hi - 1])
        return top - (hi - 1 + frac)

    # ------------------------------------------------------------------ forward process
    def q_mean_variance(self, x0: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_t | x_0)."""
        signal, noise = self.signal_and_noise_scales(t, x0)
        return signal * x0, (noise**2).expand_as(x0)

    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """A draw of q(x_t | x_0) for the given standard-normal noise."""
        signal, sigma = self.signal_and_noise_scales(t, x0)
        return signal * x0 + sigma * noise

    def q_posterior(self, x0: Tensor, xt: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and (clipped) log-variance of q(x_{t-1} | x_t, x_0)."""
        mean = self._at(self.posterior_coef_x0, t, xt) * x0 + self._at(self.posterior_coef_xt, t, xt) * xt
        return (mean, self._at(self.posterior_variance, t, xt).expand_as(xt),
                self._at(self.posterior_log_variance, t, xt).expand_as(xt))

    def model_log_variance(self, t: Tensor, like: Tensor, variance: ModelVariance = "small") -> Tensor:
        """log sigma_t^2 of the reverse step: beta~_t (``"small"``) or beta_t (``"large"``)."""
        if variance == "small":
            return self._at(self.posterior_log_variance, t, like).expand_as(like)
        if variance == "large":
            return self._at(self.beta_log_variance, t, like).expand_as(like)
        raise ConfigurationError(f"model variance must be 'small' or 'large', got {variance!r}")

    # ------------------------------------------------------------------ parameterizations
    def x0_from_eps(self, xt: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        signal, noise = self.signal_and_noise_scales(t, xt)
        return (xt - noise * eps) / signal

    def eps_from_x0(self, xt: Tensor, t: Tensor, x0: Tensor) -> Tensor:
        signal, noise = self.signal_and_noise_scales(t, xt)
        return (xt - signal * x0) / noise

    def v_from_x0_eps(self, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        signal, noise = self.signal_and_noise_scales(t, x0)
        return signal * eps - noise * x0

    def x0_from_v(self, xt: Tensor, t: Tensor, v: Tensor) -> Tensor:
        signal, noise = self.signal_and_noise_scales(t, xt)
        return signal * xt - noise * v

    def eps_from_v(self, xt: Tensor, t: Tensor, v: Tensor) -> Tensor:
        signal, noise = self.signal_and_noise_scales(t, xt)
        return noise * xt + signal * v

    def target(self, prediction: Prediction, x0: Tensor, eps: Tensor, t: Tensor) -> Tensor:
        """What a network predicting ``prediction`` is regressed onto."""
        if prediction == "eps":
            return eps
        if prediction == "x0":
            return x0
        if prediction == "v":
            return self.v_from_x0_eps(x0, eps, t)
        raise ConfigurationError(f"prediction must be 'eps', 'v' or 'x0', got {prediction!r}")

    def x0_and_eps(self, prediction: Prediction, output: Tensor, xt: Tensor,
                   t: Tensor) -> tuple[Tensor, Tensor]:
        """The (x_0, eps) pair a network output in the ``prediction`` parameterization stands for."""
        if prediction == "eps":
            return self.x0_from_eps(xt, t, output), output
        if prediction == "x0":
            return output, self.eps_from_x0(xt, t, output)
        if prediction == "v":
            return self.x0_from_v(xt, t, output), self.eps_from_v(xt, t, output)
        raise ConfigurationError(f"prediction must be 'eps', 'v' or 'x0', got {prediction!r}")
