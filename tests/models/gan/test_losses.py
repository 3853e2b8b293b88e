"""The adversarial objectives and penalties equal their formulas on values worked out by hand."""

from __future__ import annotations

import math

import pytest
import torch

from lit_gen.models.gan.losses import (
    ADVERSARIAL_LOSSES,
    gradient_penalty,
    hinge_discriminator_loss,
    hinge_generator_loss,
    non_saturating_discriminator_loss,
    non_saturating_generator_loss,
    r1_penalty,
    wasserstein_discriminator_loss,
    wasserstein_generator_loss,
)

REAL = torch.tensor([2.0, -0.5])
FAKE = torch.tensor([0.3, -2.0])


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


def test_non_saturating_losses_are_the_log_sigmoid_formulas():
    # L_D = -log sigmoid(D(x)) - log(1 - sigmoid(D(G(z)))), averaged; L_G = -log sigmoid(D(G(z))).
    expected_d = (softplus(-2.0) + softplus(0.5)) / 2 + (softplus(0.3) + softplus(-2.0)) / 2
    expected_g = (softplus(-0.3) + softplus(2.0)) / 2
    assert non_saturating_discriminator_loss(REAL, FAKE).item() == pytest.approx(expected_d, rel=1e-6)
    assert non_saturating_generator_loss(FAKE).item() == pytest.approx(expected_g, rel=1e-6)
    sig = torch.sigmoid
    assert non_saturating_generator_loss(FAKE).item() == pytest.approx(-torch.log(sig(FAKE)).mean().item(), rel=1e-6)


def test_hinge_losses():
    # relu(1 - 2) = 0, relu(1 + 0.5) = 1.5 -> 0.75; relu(1 + 0.3) = 1.3, relu(1 - 2) = 0 -> 0.65.
    assert hinge_discriminator_loss(REAL, FAKE).item() == pytest.approx(0.75 + 0.65)
    assert hinge_generator_loss(FAKE).item() == pytest.approx(0.85)


def test_wasserstein_losses():
    assert wasserstein_discriminator_loss(REAL, FAKE).item() == pytest.approx(-0.85 - 0.75)
    assert wasserstein_generator_loss(FAKE).item() == pytest.approx(0.85)


def test_registry_pairs_each_discriminator_loss_with_its_generator_loss():
    assert ADVERSARIAL_LOSSES["hinge"].discriminator is hinge_discriminator_loss
    assert ADVERSARIAL_LOSSES["hinge"].generator is hinge_generator_loss
    assert ADVERSARIAL_LOSSES["non_saturating"].generator is non_saturating_generator_loss
    assert ADVERSARIAL_LOSSES["wasserstein"].discriminator is wasserstein_discriminator_loss


def quadratic_critic(scale: torch.Tensor):
    """D(x) = scale * ||x||^2, so grad_x D = 2 scale x."""
    return lambda x: scale * x.flatten(1).pow(2).sum(1)


def test_gradient_penalty_by_hand():
    # x_hat = 0.5 * real + 0.5 * fake: (0.5, 0.5) and (1.5, 2.0); ||2 x_hat|| = sqrt(2) and 5.
    real = torch.tensor([[1.0, 0.0], [3.0, 4.0]])
    fake = torch.tensor([[0.0, 1.0], [0.0, 0.0]])
    alpha = torch.tensor([0.5, 0.5])
    expected = ((math.sqrt(2.0) - 1.0) ** 2 + (5.0 - 1.0) ** 2) / 2
    scale = torch.tensor(1.0, requires_grad=True)
    gp = gradient_penalty(quadratic_critic(scale), real, fake, alpha=alpha)
    assert gp.item() == pytest.approx(expected, rel=1e-6)
    # It is differentiable w.r.t. the critic: with m = ||2 x_hat||, d/ds mean((s m - 1)^2) = mean(2 m (s m - 1)).
    (grad,) = torch.autograd.grad(gp, scale)
    norms = [math.sqrt(2.0), 5.0]
    assert grad.item() == pytest.approx(sum(2 * m * (m - 1) for m in norms) / 2, rel=1e-6)


def test_gradient_penalty_mixes_with_per_example_alpha_and_works_without_grad():
    real = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    fake = torch.zeros(2, 2)
    alpha = torch.tensor([1.0, 0.25])  # x_hat = (2, 0) and (0, 0.5): ||2 x_hat|| = 4 and 1
    critic = quadratic_critic(torch.tensor(1.0, requires_grad=True))  # a parameter, as in a real critic
    with torch.no_grad():
        gp = gradient_penalty(critic, real, fake, alpha=alpha)
    assert gp.item() == pytest.approx((9.0 + 0.0) / 2)
    with torch.inference_mode():  # Lightning's validation loop
        gp = gradient_penalty(critic, real.clone(), fake.clone(), alpha=alpha.clone())
    assert gp.item() == pytest.approx(4.5)


def test_gradient_penalty_of_a_1_lipschitz_linear_critic_is_zero():
    w = torch.tensor([0.6, 0.8])
    real, fake = torch.randn(5, 2), torch.randn(5, 2)
    gp = gradient_penalty(lambda x: x @ w, real, fake, generator=torch.Generator().manual_seed(0))
    assert gp.item() == pytest.approx(0.0, abs=1e-10)


def test_r1_penalty_by_hand():
    real = torch.tensor([[1.0, 2.0], [0.0, 3.0]])  # ||2x||^2 = 20 and 36
    assert r1_penalty(quadratic_critic(torch.tensor(1.0)), real).item() == pytest.approx(28.0)
