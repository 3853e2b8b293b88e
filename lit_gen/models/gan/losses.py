"""Adversarial objectives and discriminator penalties, as plain functions of discriminator outputs.

Every objective is a pair (discriminator loss, generator loss) of the discriminator's raw scores
(logits / critic values) on real and generated images; both are minimised.

- non-saturating (Goodfellow et al. 2014, DCGAN):  L_D = softplus(-D(x)) + softplus(D(G(z))),
  L_G = softplus(-D(G(z)))  (= -log sigmoid D(G(z)), the non-saturating generator loss).
- Wasserstein (Arjovsky et al. 2017; with a gradient penalty, Gulrajani et al. 2017):
  L_D = D(G(z)) - D(x),  L_G = -D(G(z)).
- hinge (Lim & Ye 2017; SNGAN, Miyato et al. 2018):  L_D = relu(1 - D(x)) + relu(1 + D(G(z))),
  L_G = -D(G(z)).

Penalties need gradients with respect to the discriminator's input; they call ``autograd.grad`` with
``create_graph=True`` so they can be minimised, and work under ``torch.no_grad`` / inference mode.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


def non_saturating_discriminator_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    return F.softplus(-real_scores).mean() + F.softplus(fake_scores).mean()


def non_saturating_generator_loss(fake_scores: Tensor) -> Tensor:
    return F.softplus(-fake_scores).mean()


def wasserstein_discriminator_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    return fake_scores.mean() - real_scores.mean()


def wasserstein_generator_loss(fake_scores: Tensor) -> Tensor:
    return -fake_scores.mean()


def hinge_discriminator_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    return F.relu(1.0 - real_scores).mean() + F.relu(1.0 + fake_scores).mean()


def hinge_generator_loss(fake_scores: Tensor) -> Tensor:
    return -fake_scores.mean()


@dataclass(frozen=True)
class AdversarialLoss:
    """A named pair of objectives; ``discriminator(real, fake)`` and ``generator(fake)``."""

    name: str
    discriminator: Callable[[Tensor, Tensor], Tensor]
    generator: Callable[[Tensor], Tensor]


ADVERSARIAL_LOSSES: dict[str, AdversarialLoss] = {
    "non_saturating": AdversarialLoss("non_saturating", non_saturating_discriminator_loss,
                                      non_saturating_generator_loss),
    "wasserstein": AdversarialLoss("wasserstein", wasserstein_discriminator_loss, wasserstein_generator_loss),
    "hinge": AdversarialLoss("hinge", hinge_discriminator_loss, hinge_generator_loss),
}


def input_gradients(scores_fn: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Tensor]:
    """(scores, d sum(scores) / dx) with the graph kept, so a penalty on the gradient can be minimised.

    Runs with gradients enabled even inside ``torch.no_grad`` or inference mode (validation), on a copy
    of ``x`` that is a leaf requiring grad.
    """
    with torch.inference_mode(False), torch.enable_grad():
        x = x.detach().clone().requires_grad_(True)
        scores = scores_fn(x)
        (grad,) = torch.autograd.grad(scores.sum(), x, create_graph=True)
    return scores, grad


def gradient_penalty(
    scores_fn: Callable[[Tensor], Tensor],
    real: Tensor,
    fake: Tensor,
    *,
    alpha: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """WGAN-GP's penalty E[(||grad_x D(x_hat)||_2 - 1)^2], x_hat = alpha real + (1 - alpha) fake.

    ``alpha`` (shape (B,), one mixing weight per pair) is drawn from U[0, 1) unless given.
    """
    if alpha is None:
        alpha = torch.rand(real.shape[0], generator=generator, device=real.device, dtype=real.dtype)
    alpha = alpha.view(-1, *([1] * (real.dim() - 1)))
    mixed = alpha * real.detach() + (1.0 - alpha) * fake.detach()
    _, grad = input_gradients(scores_fn, mixed)
    norms = grad.flatten(1).norm(2, dim=1)
    return ((norms - 1.0) ** 2).mean()


def r1_penalty(scores_fn: Callable[[Tensor], Tensor], real: Tensor) -> Tensor:
    """R1 (Mescheder et al. 2018): E[||grad_x D(x)||_2^2] on real data (the module scales it by gamma / 2)."""
    _, grad = input_gradients(scores_fn, real)
    return grad.flatten(1).pow(2).sum(1).mean()
