"""The VAE: shapes for every dataset, the bounds' identities and ordering, and a trained model's quality."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lit_gen.core.levels import from_levels, to_levels
from lit_gen.datamodules import DigitsDataModule
from lit_gen.models.factorized import FactorizedCategorical
from lit_gen.models.vae import VAE


def digits_batch(n=16, seed=0):
    return from_levels(torch.randint(0, 17, (n, 1, 8, 8), generator=torch.Generator().manual_seed(seed)), 17)


@pytest.mark.parametrize(
    "shape,levels,likelihood",
    [((1, 8, 8), 17, "categorical"), ((1, 28, 28), 256, "logistic_mixture"), ((3, 32, 32), 256, "logistic_mixture"),
     ((1, 28, 28), 2, "bernoulli")],
)
def test_shapes_and_samples_on_the_data_grid(shape, levels, likelihood):
    model = VAE(data_shape=shape, num_levels=levels, latent_dim=4, channels=8, likelihood=likelihood)
    x = from_levels(torch.randint(0, levels, (3, *shape)), levels)
    assert model.loss(x)["loss"].shape == ()
    out = model.nll(x, num_samples=3)
    assert out.nats.shape == (3,) and out.kind == "estimate" and out.terms["elbo"][1] == "bound"
    for decode in ("mean", "sample"):
        s = model.sample(5, decode=decode, generator=torch.Generator().manual_seed(0))
        assert s.shape == (5, *shape)
        assert torch.equal(s, from_levels(to_levels(s, levels), levels)), "samples must lie on the K levels"


def test_mlp_variant_on_continuous_toy_data():
    model = VAE(data_shape=(2,), num_levels=None, architecture="mlp", likelihood="gaussian", latent_dim=2,
                channels=32)
    x = torch.rand(8, 2)
    assert torch.isfinite(model.nll(x, num_samples=4).nats).all()
    assert model.sample(6).shape == (6, 2)


def test_conditional_vae_uses_labels():
    model = VAE(data_shape=(1, 8, 8), num_levels=17, num_classes=10, conditional=True, latent_dim=4, channels=8)
    x, labels = digits_batch(4), torch.tensor([0, 1, 2, 3])
    assert torch.isfinite(model.loss(x, labels)["loss"])
    a = model.sample(4, labels=torch.zeros(4, dtype=torch.long), generator=torch.Generator().manual_seed(1),
                     decode="sample")
    b = model.sample(4, labels=torch.full((4,), 7), generator=torch.Generator().manual_seed(1), decode="sample")
    assert not torch.equal(a, b)
    with pytest.raises(ValueError, match="labels"):
        model.loss(x, None)


def test_iwae_with_one_sample_equals_the_elbo_with_the_same_noise():
    """k = 1 makes the IWAE bound the (one-sample) ELBO; with the mixture prior both use the MC KL."""
    torch.manual_seed(0)
    model = VAE(data_shape=(1, 8, 8), num_levels=17, latent_dim=4, channels=8, prior="mixture")
    x = digits_batch()
    recon, kl = model.elbo_terms(x, generator=torch.Generator().manual_seed(3))
    iwae = model.iwae_nll(x, num_samples=1, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(iwae, (kl - recon).double(), atol=1e-4)


def test_analytic_kl_is_the_expectation_of_the_sampled_kl():
    from lit_gen.nn.priors import StandardNormal, diagonal_normal_log_prob

    torch.manual_seed(0)
    prior = StandardNormal(3)
    mean, log_var = torch.randn(1, 3), torch.randn(1, 3) * 0.5
    z = mean + torch.exp(0.5 * log_var) * torch.randn(200000, 3)
    sampled = (diagonal_normal_log_prob(z, mean, 0.5 * log_var) - prior.log_prob(z)).mean()
    assert sampled.item() == pytest.approx(prior.kl(mean, log_var).item(), abs=0.01)


def test_mixture_prior_is_a_normalised_density():
    from lit_gen.nn.priors import GaussianMixture

    torch.manual_seed(0)
    prior = GaussianMixture(1, 3)
    grid = torch.linspace(-12, 12, 20001).unsqueeze(1)
    mass = torch.trapezoid(prior.log_prob(grid).exp().detach(), grid.squeeze(1))
    assert mass.item() == pytest.approx(1.0, abs=1e-4)


@pytest.fixture(scope="module")
def trained_digits_vae():
    """A small VAE trained for a few CPU seconds on digits, with the factorized baseline on the same split."""
    L.seed_everything(0)
    data = DigitsDataModule(batch_size=64)
    model = VAE(data_shape=data.data_shape, num_levels=17, latent_dim=16, channels=32,
                optimizer=lambda p: torch.optim.Adam(p, lr=2e-3))
    trainer = L.Trainer(max_epochs=25, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, limit_val_batches=0, accelerator="cpu")
    trainer.fit(model, datamodule=data)
    baseline = FactorizedCategorical(data_shape=data.data_shape, num_levels=17)
    baseline.fit_counts(data.train_dataloader())
    return model.eval(), baseline, data


def test_iwae_is_tighter_than_the_elbo_on_a_trained_model(trained_digits_vae):
    model, _, data = trained_digits_vae
    x = torch.stack([data.split_dataset("test")[i][0] for i in range(128)])
    out = model.nll(x, num_samples=50, generator=torch.Generator().manual_seed(0))
    elbo = out.terms["elbo"][0]
    assert out.nats.mean() < elbo.mean(), "IWAE (k=50) must be at most the ELBO bound"


def test_trained_vae_beats_the_factorized_baseline_in_test_bpd(trained_digits_vae):
    model, baseline, data = trained_digits_vae
    test = data.split_dataset("test")
    x = torch.stack([test[i][0] for i in range(len(test))])
    dims = 64 * torch.log(torch.tensor(2.0, dtype=torch.float64))
    vae_bpd = (model.nll(x, num_samples=20).nats.mean() / dims).item()
    baseline_bpd = (baseline.nll(x).nats.mean() / dims).item()
    assert vae_bpd < baseline_bpd - 0.3, (vae_bpd, baseline_bpd)


def test_trained_vae_samples_beat_the_baseline_in_fid(trained_digits_vae):
    from lit_gen.evaluation.features import get_inception
    from lit_gen.evaluation.metrics import fid

    model, baseline, data = trained_digits_vae
    extractor = get_inception()
    n = 96
    train = data.split_dataset("train")
    real = extractor(torch.stack([train[i][0] for i in range(n)]))
    vae = extractor(model.sample(n, generator=torch.Generator().manual_seed(0)))
    base = extractor(baseline.sample(n, generator=torch.Generator().manual_seed(0)))
    fid_vae, fid_base = fid(real, vae), fid(real, base)
    assert fid_vae < fid_base, (fid_vae, fid_base)


def test_beta_and_kl_warmup_weight_the_kl_of_each_training_step():
    """Training step n (0-based) minimises mean(-log p(x|z) + beta min(1, n / warmup) KL), each step's
    recon and KL recomputed with the same noise; validation and the reported bound use beta = 1."""
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    model = VAE(data_shape=(1, 8, 8), num_levels=17, latent_dim=4, channels=8, beta=0.5, kl_warmup_steps=4)
    steps = []
    original = model.loss

    def recording_loss(x, labels=None, generator=None):
        state = torch.get_rng_state()
        recon, kl = model.elbo_terms(x, labels)  # the noise the loss will draw
        torch.set_rng_state(state)
        out = original(x, labels, generator)
        steps.append((out["loss"].item(), (-recon).mean().item(), kl.mean().item()))
        return out

    model.loss = recording_loss
    loader = DataLoader(TensorDataset(digits_batch(24), torch.zeros(24, dtype=torch.long)), batch_size=4)
    trainer = L.Trainer(max_steps=6, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, train_dataloaders=loader)
    assert len(steps) == 6
    for n, (loss, recon, kl) in enumerate(steps):
        assert loss == pytest.approx(recon + 0.5 * min(1.0, n / 4) * kl, rel=1e-5), n
    assert steps[0][0] == pytest.approx(steps[0][1], rel=1e-6) and steps[0][2] > 1e-3, "beta starts at 0"

    model.loss = original
    model.eval()
    x = digits_batch(8)
    out = model.loss(x, generator=torch.Generator().manual_seed(1))
    recon, kl = model.elbo_terms(x, generator=torch.Generator().manual_seed(1))
    assert out["loss"].item() == pytest.approx((kl - recon).mean().item(), rel=1e-5), "val/loss is the -ELBO"
    elbo = model.nll(x, num_samples=2, generator=torch.Generator().manual_seed(1)).terms["elbo"][0]
    torch.testing.assert_close(elbo, (kl - recon).double())


def test_the_iwae_estimate_does_not_depend_on_iwae_chunk():
    """iwae_chunk bounds memory (importance samples decoded at once); the estimate is the same number."""
    from lit_gen.core.seeds import ExampleGenerators

    torch.manual_seed(0)
    model = VAE(data_shape=(1, 8, 8), num_levels=17, latent_dim=4, channels=8).eval()
    x = digits_batch(5)
    estimates = {}
    for chunk in (1, 3, 10, 12):
        model.iwae_chunk = chunk
        for name, source in (("per example", lambda: ExampleGenerators(0, range(5))),
                             ("one generator", lambda: torch.Generator().manual_seed(0))):
            estimates[chunk, name] = model.iwae_nll(x, num_samples=12, generator=source())
    for (chunk, name), value in estimates.items():
        torch.testing.assert_close(value, estimates[12, name], rtol=1e-6, atol=1e-6, msg=f"{chunk} {name}")
    assert not torch.allclose(estimates[12, "per example"], estimates[12, "one generator"]), "noise is drawn"


def test_the_papers_k_5000_estimate_chunked_equals_unchunked_on_binary_data():
    """Binarized MNIST's protocol (k = 5000 at test) on a tiny Bernoulli VAE: chunks of 100 give the number
    one chunk of 5000 gives, and it is an estimate below the ELBO's average (IWAE tightens the bound)."""
    from lit_gen.core.seeds import ExampleGenerators

    torch.manual_seed(0)
    model = VAE(data_shape=(1, 6, 6), num_levels=2, latent_dim=2, channels=4, likelihood="bernoulli").eval()
    x = (torch.rand(3, 1, 6, 6, generator=torch.Generator().manual_seed(1)) < 0.4).float()
    estimates = {}
    with torch.no_grad():
        for chunk in (100, 5000):
            model.iwae_chunk = chunk
            estimates[chunk] = model.iwae_nll(x, num_samples=5000, generator=ExampleGenerators(0, range(3)))
        many = torch.stack([(kl - recon) for recon, kl in (model.elbo_terms(x, None, ExampleGenerators(s, range(3)))
                                                          for s in range(200))]).mean(0)
    torch.testing.assert_close(estimates[100], estimates[5000], rtol=1e-6, atol=1e-6)
    assert (estimates[5000].double() <= many.double() + 1e-3).all()
