"""Every transform against the same contract (nflows style): it inverts, and its log|det| is the Jacobian's.

:class:`TransformChecks` holds the checks; ``TestEveryTransform`` applies them to every transform of the
family, each built with random (non-identity) parameters: zero-initialised couplings and uninitialised
actnorms would make every check trivially true.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lit_gen.models.flow.glow import GlowCouplingNet, build_glow, glow_step
from lit_gen.models.flow.realnvp import ResNetCouplingNet, build_realnvp
from lit_gen.models.flow.transforms import (
    ActNorm,
    AffineCoupling,
    Gaussianize,
    InvertibleConv1x1,
    Logit,
    ScalarAffine,
    Squeeze,
    Transform,
    checkerboard,
)


def randomize(module: nn.Module, std: float = 0.2, seed: int = 0) -> nn.Module:
    """Every parameter drawn at random (small, so log-scales stay moderate); every actnorm initialised."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
        for m in module.modules():
            if isinstance(m, ActNorm):
                m.initialized.fill_(1.0)
    return module


class TransformChecks:
    """Checks every :class:`Transform` must pass; the cases below feed them."""

    @staticmethod
    def assert_inverts(transform: Transform, x: torch.Tensor, context=None, atol: float = 1e-4) -> None:
        z, logabsdet = transform(x, context)
        assert z.shape[0] == x.shape[0] and z[0].numel() == x[0].numel() and logabsdet.shape == (x.shape[0],)
        assert torch.isfinite(z).all() and torch.isfinite(logabsdet).all()
        x_back, logabsdet_inverse = transform.inverse(z, context)
        assert torch.allclose(x_back, x, atol=atol), (x_back - x).abs().max()
        scale = max(1.0, logabsdet.abs().max().item())
        assert torch.allclose(logabsdet_inverse, -logabsdet, atol=atol * scale)

    @staticmethod
    def brute_force_logabsdet(fn, x: torch.Tensor) -> torch.Tensor:
        """log|det| of the Jacobian of ``fn`` (one example -> one example), per example, in float64."""
        values = []
        for b in range(x.shape[0]):
            jac = torch.autograd.functional.jacobian(lambda v, b=b: fn(v.unsqueeze(0), b).squeeze(0), x[b])
            dims = x[b].numel()  # the Jacobian is square: D out, D in
            values.append(torch.linalg.slogdet(jac.reshape(dims, dims))[1])
        return torch.stack(values)

    def assert_logabsdet_matches_jacobian(self, transform: Transform, x: torch.Tensor, context=None) -> None:
        def ctx(b):
            return None if context is None else context[b: b + 1]

        z, logabsdet = transform(x, context)
        expected = self.brute_force_logabsdet(lambda v, b: transform(v, ctx(b))[0], x)
        assert torch.allclose(logabsdet, expected, atol=1e-8), (logabsdet, expected)
        _, logabsdet_inverse = transform.inverse(z, context)
        expected_inverse = self.brute_force_logabsdet(lambda v, b: transform.inverse(v, ctx(b))[0], z)
        assert torch.allclose(logabsdet_inverse, expected_inverse, atol=1e-8)


def glow_net(i, o):
    return GlowCouplingNet(i, o, 8)


def resnet_net(i, o):
    return ResNetCouplingNet(i, o, 8, 1)


def coupling(channels, net, mask, parity, scale_fn, context_channels=0):
    return lambda: AffineCoupling(channels, net, mask, parity, scale_fn, context_channels)


# name -> (factory, input shape (C, H, W), context channels, input range: "real" or "unit")
CASES = {
    "actnorm": (lambda: ActNorm(3), (3, 3, 3), 0, "real"),
    "invertible_conv1x1": (lambda: InvertibleConv1x1(4), (4, 2, 3), 0, "real"),
    "coupling_channel_sigmoid": (coupling(4, glow_net, "channel", 0, "sigmoid"), (4, 3, 3), 0, "real"),
    "coupling_channel_odd_parity1": (coupling(3, glow_net, "channel", 1, "exp_tanh"), (3, 3, 3), 0, "real"),
    "coupling_channel_additive": (coupling(4, glow_net, "channel", 1, "additive"), (4, 3, 3), 0, "real"),
    "coupling_checkerboard_0": (coupling(1, resnet_net, "checkerboard", 0, "exp_tanh"), (1, 4, 4), 0, "real"),
    "coupling_checkerboard_1": (coupling(2, glow_net, "checkerboard", 1, "sigmoid"), (2, 3, 3), 0, "real"),
    "coupling_with_context": (coupling(2, glow_net, "checkerboard", 0, "exp_tanh", 3), (2, 3, 3), 3, "real"),
    "squeeze": (lambda: Squeeze(), (2, 4, 2), 0, "real"),
    "gaussianize": (lambda: Gaussianize(2, 3), (2, 3, 3), 3, "real"),
    "logit": (lambda: Logit(0.05), (2, 3, 3), 0, "unit"),
    "logit_small_alpha": (lambda: Logit(1e-6), (1, 3, 3), 0, "unit"),
    "scalar_affine": (lambda: ScalarAffine(-2.5, 0.3), (2, 2, 2), 0, "real"),
    "glow_step": (lambda: glow_step(4, 8), (4, 2, 2), 0, "real"),
    "glow_multiscale": (lambda: build_glow((1, 4, 4), 2, 2, 8), (1, 4, 4), 0, "real"),
    "glow_multiscale_additive_no_split_prior": (lambda: build_glow((2, 4, 4), 2, 1, 8, "additive", False),
                                                (2, 4, 4), 0, "real"),
    "realnvp_multiscale": (lambda: build_realnvp((1, 4, 4), 2, 8, 1, split_prior=True), (1, 4, 4), 0, "real"),
}


def make_case(name: str, dtype: torch.dtype, batch: int = 2, seed: int = 0):
    factory, shape, context_channels, kind = CASES[name]
    torch.manual_seed(seed)
    transform = randomize(factory()).to(dtype)
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, *shape, generator=g, dtype=dtype)
    if kind == "unit":
        x = torch.rand(batch, *shape, generator=g, dtype=dtype) * 0.98 + 0.01
    context = None
    if context_channels:
        context = torch.randn(batch, context_channels, *shape[1:], generator=g, dtype=dtype)
    return transform, x, context


@pytest.mark.parametrize("name", sorted(CASES))
class TestEveryTransform(TransformChecks):
    def test_inverse_of_forward_is_identity_in_float32(self, name):
        transform, x, context = make_case(name, torch.float32, batch=4)
        with torch.no_grad():
            self.assert_inverts(transform, x, context, atol=1e-4)

    def test_logabsdet_is_the_jacobian_log_determinant(self, name):
        transform, x, context = make_case(name, torch.float64)
        self.assert_logabsdet_matches_jacobian(transform, x, context)

    def test_logabsdet_is_per_example(self, name):
        """Each example's log|det| depends on that example only (no batch statistics leak in)."""
        transform, x, context = make_case(name, torch.float64, batch=3)
        _, together = transform(x, context)
        alone = torch.cat([transform(x[i:i + 1], None if context is None else context[i:i + 1])[1]
                           for i in range(3)])
        assert torch.allclose(together, alone, atol=1e-10)


# ------------------------------------------------------------------------------------------ one by one
def test_actnorm_initialises_to_zero_mean_unit_variance():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 5, 5, generator=g) * torch.tensor([0.1, 2.0, 7.0]).view(1, 3, 1, 1) \
        + torch.tensor([5.0, -1.0, 0.3]).view(1, 3, 1, 1)
    norm = ActNorm(3)
    assert not norm.initialized
    z, _ = norm(x)
    assert norm.initialized
    assert torch.allclose(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-4)
    assert torch.allclose(z.var((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    # Initialisation happens once: a second batch goes through the same affine map.
    z2, _ = norm(x * 3)
    assert torch.allclose(z2, (x * 3 + norm.bias.view(1, 3, 1, 1)) * norm.log_scale.exp().view(1, 3, 1, 1))


def test_actnorm_initialises_every_actnorm_of_a_flow_in_one_pass():
    flow = build_glow((1, 8, 8), num_scales=1, steps_per_scale=3, hidden_channels=8)
    x = torch.rand(32, 1, 8, 8)
    with torch.no_grad():
        flow(x)
    norms = [m for m in flow.modules() if isinstance(m, ActNorm)]
    assert len(norms) == 3 and all(bool(m.initialized) for m in norms)


def test_logit_logabsdet_is_exact_per_example_and_finite_at_the_ends():
    logit = Logit(1e-6)
    y = torch.tensor([[0.0, 1.0, 0.5], [0.25, 0.75, 1e-3]], dtype=torch.float64)
    z, logabsdet = logit(y)
    s = 1e-6 + (1 - 2e-6) * y
    expected = (math.log(1 - 2e-6) - torch.log(s) - torch.log(1 - s)).sum(1)
    assert torch.isfinite(z).all()
    assert torch.allclose(logabsdet, expected, rtol=1e-12)


def test_squeeze_moves_each_2x2_patch_into_channels():
    x = torch.arange(16.0).view(1, 1, 4, 4)
    z, _ = Squeeze()(x)
    assert z.shape == (1, 4, 2, 2)
    assert z[0, :, 0, 0].tolist() == [0.0, 1.0, 4.0, 5.0]  # the top-left patch
    with pytest.raises(ValueError, match="even"):
        Squeeze()(torch.zeros(1, 1, 3, 4))


def test_checkerboard_masks_are_complementary():
    a, b = checkerboard(3, 4, 0), checkerboard(3, 4, 1)
    assert torch.equal(a + b, torch.ones(1, 1, 3, 4)) and a[0, 0, 0, 0] == 1


def test_couplings_start_near_the_identity():
    """Zero-initialised last convolutions: additive and exp-tanh couplings start exactly as the identity."""
    x = torch.randn(2, 4, 3, 3)
    for scale_fn in ("exp_tanh", "additive"):
        z, logabsdet = AffineCoupling(4, glow_net, "channel", 0, scale_fn)(x)
        assert torch.equal(z, x) and torch.equal(logabsdet, torch.zeros(2))


def test_bad_arguments_are_clear_errors():
    with pytest.raises(ValueError, match="squeeze first"):
        AffineCoupling(1, glow_net, "channel")
    with pytest.raises(ValueError, match="mask"):
        AffineCoupling(2, glow_net, "diagonal")
    with pytest.raises(ValueError, match="alpha"):
        Logit(0.0)
    with pytest.raises(ValueError, match="divisible by 8"):
        build_glow((1, 28, 28), num_scales=3)
    with pytest.raises(ValueError, match="image data"):
        build_realnvp((784,), num_scales=2)
