"""The VQ-VAE first stage: its loss terms in nats, the two codebook updates, no likelihood of its own, and
samples of uniform codes on the data's levels."""

from __future__ import annotations

import pytest
import torch

from lit_gen.errors import ConfigurationError
from lit_gen.models.latent import VQVAE
from tests.models.latent.helpers import DIGITS, tiny_vqvae

X = torch.randint(0, 17, (6, 1, 8, 8), generator=torch.Generator().manual_seed(0)) / 16


def test_the_reconstruction_term_is_the_nats_of_x_given_its_codes():
    model = tiny_vqvae().eval()
    out = model.loss(X)
    recon = model.reconstruction_nll(X)
    assert recon.dtype == torch.float64 and recon.shape == (6,)
    assert float(out["recon_nats"]) == pytest.approx(float(recon.mean()), rel=1e-6)
    # the decoder's 17-way softmax: nats of one of 17 levels per pixel, near log 17 each when untrained
    assert 0.5 * 64 * torch.log(torch.tensor(17.0)) < recon.mean() < 2 * 64 * torch.log(torch.tensor(17.0))
    assert float(out["loss"].detach()) == pytest.approx(float(out["recon_nats"] + 0.25 * out["commitment"]), rel=1e-5)
    assert 1.0 <= float(out["perplexity"]) <= 8.0 and 0 < float(out["codebook_usage"]) <= 1.0


def test_the_loss_variant_trains_the_codebook_by_its_gradient_and_ema_does_not():
    model = tiny_vqvae(codebook_update="loss").train()
    out = model.loss(X)
    assert "codebook_loss" in out
    out["loss"].backward()
    used = torch.zeros(8, dtype=torch.bool)
    used[model.encode_codes(X).unique()] = True
    grad = model.quantizer.codebook.grad
    assert (grad[used].abs().sum(1) > 0).all() and (grad[~used] == 0).all()  # only chosen codes move

    ema = tiny_vqvae().train()
    before = ema.quantizer.codebook.clone()
    ema.loss(X)
    assert not torch.equal(ema.quantizer.codebook, before)  # a training step moved the codebook itself
    ema.eval().loss(X)
    after = ema.quantizer.codebook.clone()
    ema.loss(X)
    assert torch.equal(ema.quantizer.codebook, after)  # evaluation never does


def test_a_frozen_first_stage_neither_learns_nor_updates_its_codebook_in_training_mode():
    model = tiny_vqvae().freeze_first_stage().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.loss(X)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(p.requires_grad for p in model.parameters())


def test_alone_it_has_no_likelihood_and_samples_decode_uniform_codes_on_the_datas_levels():
    model = tiny_vqvae().eval()
    assert not model.has_likelihood and model.likelihood_kind is None
    draw = lambda: model.sample(5, generator=torch.Generator().manual_seed(3))  # noqa: E731
    images = draw()
    assert images.shape == (5, 1, 8, 8)
    assert torch.equal(images * 16, (images * 16).round()) and images.min() >= 0 and images.max() <= 1
    assert torch.equal(images, draw())
    sampled = model.sample(5, generator=torch.Generator().manual_seed(3), decode="sample")
    assert not torch.equal(sampled, images)


def test_the_code_map_is_the_image_halved_per_stage():
    assert tiny_vqvae(num_downsamples=2).code_shape == (2, 2)
    assert VQVAE(data_shape=(1, 28, 28), num_levels=256, num_codes=4, code_dim=2, channels=4,
                 num_downsamples=2).code_shape == (7, 7)


@pytest.mark.parametrize(("overrides", "fragment"), [
    ({"likelihood": "gaussian"}, "likelihood must be one of"),
    ({"num_levels": None}, "needs discrete images"),
    ({"data_shape": (64,)}, "needs discrete images"),
    ({"num_codes": 1}, "num_codes must be an integer >= 2"),
    ({"conditional": True}, "unconditional"),
    ({"beta": -1.0}, "beta must be >= 0"),
], ids=str)
def test_bad_settings_are_refused_in_one_line(overrides, fragment):
    with pytest.raises(ConfigurationError) as info:
        VQVAE(**{**DIGITS, "channels": 4, "code_dim": 2, "num_codes": 4, **overrides})
    assert fragment in str(info.value) and "\n" not in str(info.value)
