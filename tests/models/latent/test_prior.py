"""The second stage: the pair's nll is reconstruction + prior nats and a valid bound (checked exactly on an
enumerable model), the first stage is checked when loaded, frozen, and kept inside the second stage."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from lit_gen.errors import CheckpointError, ConfigurationError
from lit_gen.models.latent import VQVAE, VQVAEPixelCNN
from lit_gen.models.latent.prior import FIRST_STAGE_KEY
from tests.models.latent.helpers import DIGITS, TINY_PRIOR, save_first_stage, tiny_vqvae

X = torch.randint(0, 17, (5, 1, 8, 8), generator=torch.Generator().manual_seed(0)) / 16
LABELS = torch.tensor([0, 3, 3, 9, 1])


@pytest.fixture
def first_stage_path(tmp_path):
    return save_first_stage(tiny_vqvae(seed=1), tmp_path / "vq" / "version_0" / "checkpoints" / "last.ckpt")


def test_nll_is_the_reconstruction_nll_plus_the_prior_nll_computed_apart(first_stage_path):
    torch.manual_seed(0)
    model = VQVAEPixelCNN(first_stage=str(first_stage_path), conditional=True, **DIGITS, **TINY_PRIOR).eval()
    out = model.nll(X, LABELS)
    assert out.kind == "bound" and model.likelihood_kind == "bound"

    vqvae = model.first_stage
    z_e = vqvae.encoder(X * 2 - 1)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, z_e.shape[1])
    codes = torch.cdist(flat, vqvae.quantizer.codebook).argmin(1).view(5, 4, 4)
    logits = vqvae.decoder(vqvae.quantizer.codebook[codes].permute(0, 3, 1, 2))  # (B, 17, 1, 8, 8)
    levels = (X * 16).round().long()
    recon = -F.log_softmax(logits, 1).gather(1, levels[:, None]).flatten(1).sum(1)
    code_image = codes[:, None].float() / 7  # the prior's one-channel image of K = 8 levels
    prior_logits = model.prior(code_image * 2 - 1, LABELS)  # (B, 8, 1, 4, 4)
    prior = -F.log_softmax(prior_logits, 1).gather(1, codes[:, None, None]).flatten(1).sum(1)
    assert torch.allclose(out.nats, (recon + prior).double(), rtol=1e-5)
    # the labels matter to the prior only
    other = model.nll(X, torch.tensor([5, 5, 5, 5, 5]))
    assert not torch.allclose(other.nats, out.nats)


def test_an_enumerable_pair_sums_to_one_and_its_nll_bounds_the_exact_one(tmp_path):
    """2x2 binary images (K = 2 levels), a 1x1 code map of 4 codes: log p(x) = log sum_z p(z) p(x|z) is
    exact by enumeration. Over all 16 images p(x) sums to one, and the reported nll is -log p(x) plus
    -log p(z_q(x) | x) >= 0: the bound, with the gap of the one code map the encoder picks."""
    torch.manual_seed(0)
    images = torch.tensor(list(itertools.product([0.0, 1.0], repeat=4))).view(16, 1, 2, 2)
    vqvae = VQVAE(data_shape=(1, 2, 2), num_levels=2, num_codes=4, code_dim=2, channels=4, num_downsamples=1,
                  likelihood="bernoulli")
    with torch.no_grad():  # codes at the encoder outputs of four of the images: several codes in use
        vqvae.quantizer.codebook.copy_(vqvae.quantizer.flatten(vqvae.encode(images[[0, 6, 9, 15]])))
    path = save_first_stage(vqvae, tmp_path / "binary.ckpt")
    model = VQVAEPixelCNN(first_stage=str(path), data_shape=(1, 2, 2), num_levels=2, channels=4, num_layers=1,
                          kernel_size=1, kernel_size_rest=1, head_channels=4)
    with torch.no_grad():  # a prior far from uniform, and a decoder whose codes differ
        for p in model.prior.parameters():
            p.copy_(torch.randn_like(p))
        for p in model.first_stage.decoder.parameters():
            p.mul_(3.0)
    model = model.double().eval()  # the heads' log-probabilities are float32: tolerances of that
    with torch.no_grad():
        images = images.double()
        codes = torch.arange(4).view(4, 1, 1)
        log_pz = model.prior_log_prob(codes)  # (4,)
        assert float(torch.logsumexp(log_pz, 0)) == pytest.approx(0.0, abs=1e-6)
        vq = model.first_stage
        log_px_given_z = torch.stack([vq.log_likelihood(images, vq.quantizer.embed(z.expand(16, 1, 1)))
                                      for z in codes], 1)  # (16, 4)
        log_px = torch.logsumexp(log_pz[None, :] + log_px_given_z, 1)  # (16,)
        assert float(torch.logsumexp(log_px, 0)) == pytest.approx(0.0, abs=1e-6)

        reported = model.nll(images).nats
        chosen = vq.encode_codes(images).view(16)
        posterior = log_pz[chosen] + log_px_given_z[torch.arange(16), chosen] - log_px  # log p(z_q(x) | x)
        assert (reported >= -log_px - 1e-6).all()
        assert torch.allclose(reported - (-log_px), -posterior, atol=1e-5)
        assert (reported + log_px).max() > 1e-3  # a strict bound somewhere: the pair is not reported as exact
        assert len(chosen.unique()) > 1


def test_samples_are_decoded_code_maps_on_the_datas_levels_seeded_per_sample(first_stage_path):
    from lit_gen.core.seeds import ExampleGenerators

    torch.manual_seed(0)
    model = VQVAEPixelCNN(first_stage=str(first_stage_path), **DIGITS, **TINY_PRIOR).eval()
    images = model.sample(4, generator=ExampleGenerators(7, range(4)))
    assert images.shape == (4, 1, 8, 8) and torch.equal(images * 16, (images * 16).round())
    assert torch.equal(model.sample(2, generator=ExampleGenerators(7, range(2, 4))), images[2:])
    greedy = model.sample(2, generator=ExampleGenerators(7, range(2)), temperature=0.0)
    assert torch.equal(greedy[0], greedy[1])  # temperature 0: the prior's argmax, the same code map


def test_the_prior_alone_learns_and_the_first_stage_stays_frozen(first_stage_path):
    torch.manual_seed(0)
    model = VQVAEPixelCNN(first_stage=str(first_stage_path), **DIGITS, **TINY_PRIOR).train()
    frozen = {k: v.clone() for k, v in model.first_stage.state_dict().items()}
    out = model.loss(X)
    assert set(out) == {"loss", "prior_nats"}
    out["loss"].backward()
    assert all(p.grad is not None for p in model.prior.parameters())
    assert all(not p.requires_grad for p in model.first_stage.parameters())
    assert all(torch.equal(frozen[k], v) for k, v in model.first_stage.state_dict().items())
    assert "recon_nats" in model.eval().loss(X)


def test_the_checkpoint_keeps_the_first_stage_and_rebuilds_it_without_the_file(first_stage_path, tmp_path):
    torch.manual_seed(0)
    model = VQVAEPixelCNN(first_stage=str(first_stage_path), **DIGITS, **TINY_PRIOR).eval()
    checkpoint = {"state_dict": model.state_dict()}
    model.on_save_checkpoint(checkpoint)
    assert any(k.startswith("first_stage.") for k in checkpoint["state_dict"])
    first_stage_path.unlink()
    later = VQVAEPixelCNN(first_stage=str(first_stage_path), **DIGITS, **TINY_PRIOR)
    assert later.first_stage is None  # nothing to build from yet
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        later.nll(X)
    later.on_load_checkpoint(checkpoint)
    later.load_state_dict(checkpoint["state_dict"])
    assert torch.allclose(later.eval().nll(X).nats, model.nll(X).nats)
    assert later.first_stage_record.digest == checkpoint[FIRST_STAGE_KEY]["digest"]


def test_a_run_folder_names_its_newest_last_checkpoint(tmp_path):
    older = save_first_stage(tiny_vqvae(seed=1), tmp_path / "vq" / "version_9" / "checkpoints" / "last.ckpt")
    newer = save_first_stage(tiny_vqvae(seed=2), tmp_path / "vq" / "version_10" / "checkpoints" / "last.ckpt")
    model = VQVAEPixelCNN(first_stage=str(tmp_path / "vq"), **DIGITS, **TINY_PRIOR)
    assert model.first_stage_record.path == str(newer) != str(older)


def test_the_first_stage_is_checked_before_use(first_stage_path, tmp_path):
    with pytest.raises(CheckpointError, match=r"trained on data with num_levels=17, but this data has num_levels=256"):
        VQVAEPixelCNN(first_stage=str(first_stage_path), data_shape=(1, 8, 8), num_levels=256, **TINY_PRIOR)
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {}, "lit_gen": {"model": "lit_gen.models.vae.module.VAE"}}, other)
    with pytest.raises(CheckpointError, match="holds a lit_gen.models.vae.module.VAE checkpoint"):
        VQVAEPixelCNN(first_stage=str(other), **DIGITS, **TINY_PRIOR)
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        VQVAEPixelCNN(first_stage=str(garbage), **DIGITS, **TINY_PRIOR)
    with pytest.raises(ConfigurationError, match="first_stage must name"):
        VQVAEPixelCNN(**DIGITS, **TINY_PRIOR)
