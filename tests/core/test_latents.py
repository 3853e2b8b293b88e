"""Paths between latents: the endpoints, the norm kept on the sphere, the straight-line fallback."""

import math

import torch

from lit_gen.core.latents import lerp, slerp


def test_slerp_starts_and_ends_at_the_latents_and_follows_the_great_circle():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[0.0, 1.0], [2.0, 0.0]])
    path = slerp(a, b, torch.linspace(0, 1, 5))
    assert path.shape == (2, 5, 2)
    assert torch.allclose(path[:, 0], a) and torch.allclose(path[:, -1], b)
    assert torch.allclose(path.norm(dim=-1), torch.tensor([[1.0] * 5, [2.0] * 5]))  # never through the inside
    mid = path[0, 2]
    assert torch.allclose(mid, torch.tensor([math.sqrt(0.5), math.sqrt(0.5)]))


def test_parallel_latents_fall_back_to_the_straight_line():
    a = torch.tensor([[1.0, 1.0, 1.0]])
    weights = torch.tensor([0.0, 0.25, 1.0])
    path = slerp(a, 3 * a, weights)
    assert torch.isfinite(path).all() and torch.allclose(path, lerp(a, 3 * a, weights))


def test_image_shaped_latents_keep_their_shape():
    a, b = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    assert slerp(a, b, torch.linspace(0, 1, 7)).shape == (3, 7, 2, 4, 4)
