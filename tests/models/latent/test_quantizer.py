"""The vector quantizer: straight-through gradients, the EMA update's formula on a hand case, restarts of
dead codes, idempotent quantization."""

from __future__ import annotations

import pytest
import torch

from lit_gen.errors import ConfigurationError
from lit_gen.models.latent.quantizer import VectorQuantizer, perplexity
from tests.models.latent.helpers import tiny_vqvae


def quantizer_with(codebook: list[list[float]], **kwargs) -> VectorQuantizer:
    q = VectorQuantizer(len(codebook), len(codebook[0]), **kwargs)
    with torch.no_grad():
        q.codebook.copy_(torch.tensor(codebook))
        if q.update == "ema":
            q.ema_sums.copy_(q.codebook)
    return q


def as_map(points: list[list[float]]) -> torch.Tensor:
    """Points (N, D) as one example's (1, D, 1, N) encoder output map, in that order."""
    return torch.tensor(points).t()[None, :, None, :]


def test_straight_through_passes_the_decoders_gradient_to_the_encoder_unchanged():
    q = quantizer_with([[0.0, 0.0], [5.0, 5.0]], restart_every=0).eval()
    z_e = as_map([[0.3, -0.2], [4.0, 6.0], [1.0, 0.5]]).requires_grad_(True)
    out = q(z_e)
    assert out.codes.flatten().tolist() == [0, 1, 0]
    assert torch.equal(out.z_q, torch.tensor([[0.0, 0.0], [5.0, 5.0], [0.0, 0.0]]).t()[None, :, None, :])
    weights = torch.randn(z_e.shape, generator=torch.Generator().manual_seed(0))
    (out.z_q * weights).sum().backward()
    assert torch.equal(z_e.grad, weights)


def test_straight_through_gradients_reach_the_encoders_weights():
    """With beta = 0 and EMA updates, the reconstruction term is the only path to the encoder: its weights
    get a gradient only through the straight-through estimator."""
    model = tiny_vqvae(beta=0.0)
    x = torch.randint(0, 17, (4, 1, 8, 8), generator=torch.Generator().manual_seed(1)) / 16
    model.loss(x)["loss"].backward()
    first = model.encoder.net[0].weight.grad
    assert first is not None and first.abs().sum() > 0
    assert not model.quantizer.codebook.requires_grad  # EMA: the codebook is a buffer


def test_ema_update_is_its_formula_on_a_hand_case():
    """K = 3 codes in 2-D, decay 0.5. Points (1, 0), (0, 1) go to code 0 and (9, 11) to code 1; code 2 is
    unused. Every code starts as if seen once at its initial place: N = (1, 1, 1), m = e."""
    q = quantizer_with([[0.0, 0.0], [10.0, 10.0], [-10.0, -10.0]], decay=0.5, epsilon=0.1, restart_every=0)
    q.train()(as_map([[1.0, 0.0], [0.0, 1.0], [9.0, 11.0]]))
    # N_k <- 0.5 N_k + 0.5 n_k with n = (2, 1, 0); m_k <- 0.5 m_k + 0.5 sum of its points
    counts = torch.tensor([1.5, 1.0, 0.5])
    sums = torch.tensor([[0.5, 0.5], [9.5, 10.5], [-5.0, -5.0]])
    assert torch.allclose(q.ema_counts, counts) and torch.allclose(q.ema_sums, sums)
    # Laplace smoothing: (N_k + eps) / (N + K eps) * N, N = 3
    smoothed = torch.tensor([1.6, 1.1, 0.6]) / 3.3 * 3.0
    assert torch.allclose(q.codebook, sums / smoothed[:, None], atol=1e-6)
    q.eval()(as_map([[1.0, 0.0]]))  # evaluation never updates
    assert torch.allclose(q.ema_counts, counts)


def test_a_dead_code_is_restarted_at_an_encoder_output_deterministically_given_the_seed():
    def run(seed: int) -> VectorQuantizer:
        torch.manual_seed(seed)
        q = quantizer_with([[0.0, 0.0], [3.0, 3.0], [100.0, 100.0]], update="loss", restart_every=2).train()
        q(as_map([[0.1, 0.0], [2.9, 3.0]]))
        assert torch.equal(q.codebook[2], torch.tensor([100.0, 100.0]))  # not yet: the window is 2 steps
        q(as_map([[0.0, 0.2], [3.1, 3.0], [1.5, 1.4]]))
        return q

    q = run(0)
    last_batch = [[0.0, 0.2], [3.1, 3.0], [1.5, 1.4]]
    assert q.codebook[2].tolist() in [pytest.approx(p) for p in last_batch]  # at one of the batch's outputs
    assert q.codebook[:2].tolist() == [[0.0, 0.0], [3.0, 3.0]]  # used codes stay (the loss moves them)
    assert q.window_usage.sum() == 0 and int(q.window_steps) == 0  # a new window starts
    assert torch.equal(run(0).codebook, q.codebook)


def test_a_restarted_ema_code_starts_its_running_means_at_its_new_place():
    torch.manual_seed(0)
    q = quantizer_with([[0.0, 0.0], [100.0, 100.0]], decay=0.9, restart_every=1).train()
    q(as_map([[1.0, 1.0]]))
    assert q.codebook[1].tolist() == [1.0, 1.0] and q.ema_counts[1] == 1.0 and q.ema_sums[1].tolist() == [1.0, 1.0]


def test_quantization_is_idempotent():
    q = VectorQuantizer(16, 3).eval()
    z = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0)) * 2
    codes = q.codes(z)
    assert codes.unique().numel() > 8  # many codes in play, not a trivial map
    quantized = q.embed(codes)
    assert torch.equal(q.codes(quantized), codes) and torch.equal(q.embed(q.codes(quantized)), quantized)
    again = q(quantized)  # and the straight-through value, up to the rounding of z + (z_q - z)
    assert torch.equal(again.codes, codes) and torch.allclose(again.z_q, quantized)
    assert torch.allclose(again.commitment, torch.zeros(4))


def test_perplexity_counts_the_codes_in_use():
    assert float(perplexity(torch.tensor([5.0, 5.0, 5.0, 5.0]))) == pytest.approx(4.0)
    assert float(perplexity(torch.tensor([0.0, 7.0, 0.0]))) == pytest.approx(1.0)


@pytest.mark.parametrize("bad", [{"update": "kmeans"}, {"decay": 1.0}, {"restart_every": -1}], ids=str)
def test_bad_settings_are_refused_in_one_line(bad):
    with pytest.raises(ConfigurationError) as info:
        VectorQuantizer(4, 2, **bad)
    assert "\n" not in str(info.value)
