"""The Diffusion module: loss, label dropout, guidance, sampling arguments, and a trained model's bound."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from lit_gen.core.levels import from_levels, to_levels
from lit_gen.models.diffusion import Diffusion, UNet

TINY = functools.partial(UNet, channels=8, channel_mults=(1, 2), num_res_blocks=1)


def digits_batch(n=8, seed=0):
    return from_levels(torch.randint(0, 17, (n, 1, 8, 8), generator=torch.Generator().manual_seed(seed)), 17)


class LabelProbe(nn.Module):
    """A backbone that records the labels it sees and answers a fixed function of (x, time, label)."""

    def __init__(self, data_shape, num_classes=None):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.seen: list[torch.Tensor] = []

    def forward(self, x, time, labels=None):
        if labels is not None:
            self.seen.append(labels.clone())
        shift = 0.0 if labels is None else labels.float().view(-1, 1, 1, 1) / 10
        return self.scale * (0.5 * x + shift + time.view(-1, 1, 1, 1) / 1000)


def linear_schedule(num_timesteps):
    """Ho et al.'s linear betas rescaled by 1000 / T, with their coefficients (:func:`coefficients`)."""
    scale = 1000 / num_timesteps
    return coefficients(torch.linspace(scale * 1e-4, min(scale * 0.02, 0.999), num_timesteps, dtype=torch.float64))


def cosine_schedule(num_timesteps, offset):
    """Nichol & Dhariwal's abar(t) = cos^2((t/T + s) / (1 + s) pi/2), betas from its ratios (clipped)."""
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    abar = torch.cos((steps + offset) / (1 + offset) * math.pi / 2) ** 2
    return coefficients((1 - abar[1:] / abar[:-1]).clamp(max=0.999))


def coefficients(betas):
    """The products of the betas and the posterior q(x_{t-1} | x_t, x_0)'s coefficients, written out here in
    float64 (0-based t, abar_{-1} = 1)."""
    abar = torch.cumprod(1 - betas, 0)
    abar_prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    return {"beta": betas, "abar": abar, "c0": betas * abar_prev.sqrt() / (1 - abar),
            "ct": (1 - abar_prev) * (1 - betas).sqrt() / (1 - abar), "var": betas * (1 - abar_prev) / (1 - abar)}


def gaussian_kl(m1, v1, m2, v2):
    """KL(N(m1, v1) || N(m2, v2)), elementwise, the closed form."""
    return 0.5 * (torch.log(v2 / v1) + v1 / v2 + (m1 - m2) ** 2 / v2 - 1)


def discretized_gaussian_nll(x0, mean, std, num_levels):
    """-log P(x0) per dimension: the Gaussian's mass on the level's bin, the edge bins open to +-inf."""
    from torch.special import ndtr

    half = 1 / (num_levels - 1)
    upper = torch.where(x0 > 1 - half / 2, torch.ones_like(x0), ndtr((x0 + half - mean) / std))
    lower = torch.where(x0 < -1 + half / 2, torch.zeros_like(x0), ndtr((x0 - half - mean) / std))
    return -torch.log(upper - lower)


def record_backbone(model):
    """Every call of the backbone: (its input x_t, its time input, its output)."""
    calls = []
    model.backbone.register_forward_hook(lambda module, args, out: calls.append(
        (args[0].detach().double(), args[1].detach(), out.detach().double())))
    return calls


def test_loss_terms_and_vlb_weighting():
    """loss = mse + vlb_weight * T * L_t / D, rebuilt from the backbone's own input and output: the noise
    of x_t, the closed-form KL of the posteriors (the decoder's discretized NLL at t = 0)."""
    T, B = 50, 512
    model = Diffusion(data_shape=(1, 8, 8), num_levels=17, backbone=TINY, num_timesteps=T, vlb_weight=0.5)
    torch.manual_seed(0)
    nn.init.normal_(model.backbone.out[-1].weight, std=0.1)  # an output that is not eps = 0
    calls = record_backbone(model)
    x = digits_batch(B)
    out = model.loss(x, generator=torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "mse", "vlb_per_dim"}
    assert out["loss"].item() == pytest.approx(out["mse"].item() + 0.5 * out["vlb_per_dim"].item(), rel=1e-5)
    (xt, time, eps_hat), = calls
    s, x0 = linear_schedule(T), (2 * x - 1).double()
    t = torch.round(time.double() * T / 1000).long()
    assert torch.allclose(t.double() * 1000 / T, time.double()), "the backbone sees t rescaled to [0, 1000)"
    at = lambda name: s[name][t].view(-1, 1, 1, 1)
    noise = (xt - at("abar").sqrt() * x0) / (1 - at("abar")).sqrt()
    assert abs(noise.mean().item()) < 0.02 and noise.var().item() == pytest.approx(1.0, abs=0.03)
    assert set(t.tolist()) == set(range(T)), "t ~ U{0..T-1}"
    mse = (eps_hat - noise).pow(2).flatten(1).mean(1)
    x0_hat = (xt - (1 - at("abar")).sqrt() * eps_hat) / at("abar").sqrt()
    var = torch.where(t == 0, s["var"][1], s["var"][t]).view(-1, 1, 1, 1)  # "small": beta~_t (beta~_1 at 0)
    model_mean = at("c0") * x0_hat + at("ct") * xt
    kl = gaussian_kl(at("c0") * x0 + at("ct") * xt, var, model_mean, var).flatten(1).sum(1)
    decoder = discretized_gaussian_nll(x0, model_mean, var.sqrt(), 17).flatten(1).sum(1)
    vlb_per_dim = torch.where(t == 0, decoder, kl) * T / 64
    assert out["mse"].item() == pytest.approx(mse.mean().item(), rel=1e-5)
    assert out["vlb_per_dim"].item() == pytest.approx(vlb_per_dim.mean().item(), rel=1e-4)
    assert out["loss"].item() == pytest.approx(mse.mean().item() + 0.5 * vlb_per_dim.mean().item(), rel=1e-4)
    out["loss"].backward()
    assert all(p.grad is not None for p in model.backbone.parameters())
    # a fresh U-Net predicts eps = 0: L_simple is the noise's variance
    plain = Diffusion(data_shape=(1, 8, 8), num_levels=17, backbone=TINY, num_timesteps=50)
    mse = plain.loss(digits_batch(512), generator=torch.Generator().manual_seed(0))["mse"]
    assert mse.item() == pytest.approx(1.0, abs=0.02)


def test_label_dropout_only_while_training():
    model = Diffusion(data_shape=(1, 8, 8), num_levels=17, num_classes=10, conditional=True,
                      backbone=LabelProbe, label_dropout=0.3)
    labels = torch.arange(4000) % 10
    model.train().loss(torch.zeros(4000, 1, 8, 8), labels)
    seen = model.backbone.seen[-1]
    assert (seen == 10).float().mean().item() == pytest.approx(0.3, abs=0.03)
    assert torch.equal(seen[seen != 10], labels[seen != 10]), "kept labels must be unchanged"
    model.eval().loss(torch.zeros(100, 1, 8, 8), labels[:100])
    assert torch.equal(model.backbone.seen[-1], labels[:100])


def test_guidance_combines_conditional_and_unconditional_outputs():
    model = Diffusion(data_shape=(1, 8, 8), num_levels=17, num_classes=10, conditional=True,
                      backbone=LabelProbe, prediction="x0", clip_x0=False, num_timesteps=100).eval()
    xt, t, labels = torch.randn(3, 1, 8, 8), torch.tensor([5, 50, 99]), torch.tensor([1, 4, 7])
    cond, _ = model.denoiser(labels, 1.0)(xt, t)
    uncond, _ = model.denoiser(labels, 0.0)(xt, t)
    assert torch.allclose(uncond, model.backbone(xt, model._time(t), torch.full((3,), 10)))
    guided, eps = model.denoiser(labels, 3.0)(xt, t)
    torch.testing.assert_close(guided, uncond + 3.0 * (cond - uncond))
    torch.testing.assert_close(model.schedule.x0_from_eps(xt, t, eps), guided, rtol=0, atol=1e-4)


@pytest.mark.parametrize("conditional", [False, True])
def test_samples_lie_on_the_data_levels_and_are_reproducible(conditional):
    torch.manual_seed(0)
    model = Diffusion(data_shape=(1, 8, 8), num_levels=17, num_classes=10, conditional=conditional,
                      backbone=TINY, num_timesteps=40).eval()
    nn.init.normal_(model.backbone.out[-1].weight, std=0.1)
    knobs = {"guidance_scale": 2.0} if conditional else {}
    a = model.sample(6, generator=torch.Generator().manual_seed(3), sampler="ddim", steps=10, **knobs)
    b = model.sample(6, generator=torch.Generator().manual_seed(3), sampler="ddim", steps=10, **knobs)
    c = model.sample(6, generator=torch.Generator().manual_seed(4), sampler="ddim", steps=10, **knobs)
    assert a.shape == (6, 1, 8, 8) and torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(a, from_levels(to_levels(a, 17), 17)), "samples must lie on the K levels"
    assert model.sample(2, sampler="ddpm").shape == (2, 1, 8, 8)


def test_sampling_arguments_are_checked():
    model = Diffusion(data_shape=(1, 8, 8), num_levels=17, backbone=TINY, num_timesteps=40)
    with pytest.raises(ValueError, match="sampler"):
        model.sample(2, sampler="euler")
    with pytest.raises(ValueError, match="ddpm"):
        model.sample(2, sampler="ddpm", steps=10)
    with pytest.raises(ValueError, match="conditional"):
        model.sample(2, guidance_scale=3.0)
    for bad in ({"sampler": "euler"}, {"temperature": 0.5}, {"guidance_scale": 2.0}):
        with pytest.raises(ValueError, match="sampler|sample_kwargs|conditional"):  # caught at construction
            Diffusion(data_shape=(1, 8, 8), num_levels=17, backbone=TINY, sample_kwargs=bad)
    # more DDIM steps than T (e.g. a config's 50 with a smaller T from the command line) means all T
    torch.testing.assert_close(model.sample(2, steps=41, generator=torch.Generator().manual_seed(0)),
                               model.sample(2, steps=40, generator=torch.Generator().manual_seed(0)))


def test_nll_is_a_bound_with_every_term_and_the_subset_estimate_is_labelled():
    model = Diffusion(data_shape=(1, 8, 8), num_levels=17, backbone=TINY, num_timesteps=30).eval()
    x = digits_batch(4)
    out = model.nll(x, generator=torch.Generator().manual_seed(0))
    assert out.kind == "bound" and out.nats.shape == (4,) and torch.isfinite(out.nats).all()
    assert model.vlb(x).num_terms == 30 and model.vlb(x, num_terms=8).num_terms == 8
    assert model.likelihood_kinds() == {"nll": "bound", "bpd": "bound", "vlb_subset": "estimate",
                                        "vlb_subset_bpd": "estimate"}


def test_the_bound_is_its_terms_written_out():
    """Every term of the bound recomputed from the x_t the backbone saw and what it answered: the prior's
    KL against N(0, I), the closed-form KL of q(x_{t-1} | x_t, x_0) and the model's step (variance beta_t)
    for each t >= 1, the discretized Gaussian decoder at t = 0 (clipped x0 prediction, width beta~_1)."""
    T, B = 30, 4
    model = Diffusion(data_shape=(1, 8, 8), num_levels=17, backbone=TINY, num_timesteps=T,
                      model_variance="large").eval()
    torch.manual_seed(0)
    nn.init.normal_(model.backbone.out[-1].weight, std=0.1)
    x = digits_batch(B)
    nll = model.nll(x, generator=torch.Generator().manual_seed(0)).nats
    calls = record_backbone(model)
    terms = model.vlb(x, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(nll, terms.total)

    s, x0 = linear_schedule(T), (2 * x - 1).double()
    xt, time, eps_hat = (torch.cat(parts) for parts in zip(*calls))
    t = torch.round(time.double() * T / 1000).long()
    example = torch.arange(len(t)) % B  # the denoiser sees x0.repeat(k, ...)-shaped batches
    assert sorted(zip(example.tolist(), t.tolist())) == [(i, s_) for i in range(B) for s_ in range(T)]
    at = lambda name: s[name][t].view(-1, 1, 1, 1)
    x0_hat = ((xt - (1 - at("abar")).sqrt() * eps_hat) / at("abar").sqrt()).clamp(-1, 1)
    mean_q, mean_p = at("c0") * x0[example] + at("ct") * xt, at("c0") * x0_hat + at("ct") * xt
    kl = gaussian_kl(mean_q, at("var"), mean_p, at("beta")).flatten(1).sum(1)
    decoder = discretized_gaussian_nll(x0[example], mean_p, s["var"][1].sqrt(), 17).flatten(1).sum(1)
    abar_last = s["abar"][-1]
    prior = gaussian_kl(abar_last.sqrt() * x0, 1 - abar_last, torch.zeros(()), torch.ones(())).flatten(1).sum(1)
    by_example = lambda v: torch.zeros(B, dtype=torch.float64).index_add(0, example, v)
    expected = {"prior": prior, "decoder": by_example(torch.where(t == 0, decoder, 0.0)),
                "diffusion": by_example(torch.where(t == 0, 0.0, kl))}
    for name, value in expected.items():
        torch.testing.assert_close(getattr(terms, name), value, rtol=1e-5, atol=1e-6, msg=name)
    torch.testing.assert_close(terms.total, sum(expected.values()), rtol=1e-5, atol=1e-6)


class ConstantImage(nn.Module):
    """A backbone whose x0 prediction is one fixed image whatever x_t: every term of the bound is then a
    number, not a draw, so the full bound is exact and only the subset's timesteps are random."""

    def __init__(self, data_shape, num_classes=None):
        super().__init__()
        self.image = nn.Parameter(torch.linspace(-0.9, 0.8, math.prod(data_shape)).view(1, *data_shape))

    def forward(self, x, time, labels=None):
        return self.image.expand_as(x)


def test_the_subset_estimate_is_unbiased_for_the_full_bound():
    """val_vlb: subset's estimate (decoder + one t per stratum, weighted by its size) averages to the full
    bound. The digits config's schedule and reverse variance; 13 strata of 3 timesteps."""
    T = 40
    model = Diffusion(data_shape=(1, 8, 8), num_levels=17, backbone=ConstantImage, num_timesteps=T,
                      prediction="x0", schedule="cosine", cosine_offset=0.05, model_variance="large").eval()
    x = digits_batch(3)
    full = model.vlb(x, generator=torch.Generator().manual_seed(0))
    again = model.vlb(x, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(full.total, again.total, rtol=1e-12, atol=0)  # no draw left in it
    # Closed form of the full bound's diffusion part: per dimension, the KL of N(mu_q, beta~_t) from
    # N(mu_p, beta_t) with mu_q - mu_p = c0_t (x0 - c).
    s, x0, c = cosine_schedule(T, 0.05), (2 * x - 1).double(), model.backbone.image.detach().double()
    sq = (x0 - c).pow(2).flatten(1).sum(1, keepdim=True)
    beta, var, c0 = s["beta"][1:], s["var"][1:], s["c0"][1:]
    per_t = 0.5 * 64 * (torch.log(beta / var) + var / beta - 1) + c0**2 * sq / (2 * beta)
    torch.testing.assert_close(full.diffusion, per_t.sum(1), rtol=1e-9, atol=0)
    g = torch.Generator().manual_seed(2)
    draws = torch.stack([model.vlb(x, num_terms=14, generator=g).total for _ in range(1000)])
    spread = draws.std(0)
    assert (spread > 0.02 * full.total).all(), "the estimate must vary, or the test proves nothing"
    assert ((draws.mean(0) - full.total).abs() < 4 * spread / math.sqrt(len(draws))).all(), \
        (draws.mean(0), full.total)


def test_hyperparameters_record_the_backbone_as_plain_data():
    model = Diffusion(data_shape=(1, 8, 8), num_levels=17, backbone=TINY)
    init_args = {"channels": 8, "channel_mults": (1, 2), "num_res_blocks": 1}
    expected = {"class_path": "lit_gen.nn.unet.UNet", "init_args": init_args}
    assert model.hparams["backbone"] == expected


# ------------------------------------------------------------------------------------ trained on digits
def train_on_digits(steps: int, seed: int = 0) -> Diffusion:
    """A 0.16M-parameter model on the digits training split, plain Adam steps (no Trainer: a few seconds).

    T = 100 cosine steps with offset 0.05 (the smallest noise just under the 17 levels' spacing), v
    prediction and the beta_t reverse variance: the settings of configs/diffusion/digits.yaml, smaller.
    """
    from lit_gen.datamodules import DigitsDataModule

    torch.manual_seed(seed)
    train = DigitsDataModule().split_dataset("train")
    x = torch.stack([train[i][0] for i in range(len(train))])
    model = Diffusion(data_shape=(1, 8, 8), num_levels=17, num_timesteps=100, schedule="cosine",
                      cosine_offset=0.05, prediction="v", model_variance="large",
                      backbone=functools.partial(UNet, channels=16, channel_mults=(1, 2), num_res_blocks=1,
                                                 dropout=0.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        loss = model.loss(x[torch.randint(0, len(x), (64,), generator=g)], generator=g)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def digits_test_bpd(model, num: int) -> tuple[float, float]:
    """(bound, prior term) in bits/dim on the first ``num`` test digits, every term of the bound."""
    from lit_gen.datamodules import DigitsDataModule

    test = DigitsDataModule().split_dataset("test")
    x = torch.stack([test[i][0] for i in range(num)])
    terms = model.vlb(x, generator=torch.Generator().manual_seed(0))
    assert terms.num_terms == model.num_timesteps
    dims = 64 * math.log(2)
    return (terms.total.mean() / dims).item(), (terms.prior.mean() / dims).item()


def test_a_little_training_tightens_the_bound():
    """Fast check: 150 steps take the bound from the untrained model's far below; its prior term is ~0."""
    untrained, _ = digits_test_bpd(train_on_digits(0), 100)
    trained, prior = digits_test_bpd(train_on_digits(150), 100)
    assert trained < untrained - 1.0, (trained, untrained)
    assert 0 <= prior < 1e-4


@pytest.mark.slow
def test_trained_bound_beats_the_factorized_baseline_on_digits():
    """1000 steps (~1 CPU minute): the bound, every term, on all 300 test digits, below the closed-form
    per-pixel categorical baseline (2.425 bits/dim)."""
    from lit_gen.datamodules import DigitsDataModule
    from lit_gen.models.factorized import FactorizedCategorical

    data = DigitsDataModule()
    baseline = FactorizedCategorical(data_shape=(1, 8, 8), num_levels=17).fit_counts(data.train_dataloader())
    test = data.split_dataset("test")
    x = torch.stack([test[i][0] for i in range(len(test))])
    baseline_bpd = (baseline.nll(x).nats.mean() / (64 * math.log(2))).item()
    bound_bpd, _ = digits_test_bpd(train_on_digits(1000), len(test))
    assert bound_bpd < baseline_bpd - 0.1, (bound_bpd, baseline_bpd)


@pytest.mark.parametrize("val_vlb", ["full", "subset", "skip"])
def test_val_vlb_decides_what_validation_logs(val_vlb):
    """``full``: val/nll is the bound with every term; ``subset``: val/vlb_subset is the estimate from
    ``val_vlb_terms`` terms and no val/nll is logged; ``skip``: the loss only. Each number recomputed on the
    validation batch with example i's noise seeded evaluation_seed + i, after the loss's draws."""
    import lightning as L

    from lit_gen.core.seeds import ExampleGenerators
    from lit_gen.datamodules import DigitsDataModule

    torch.manual_seed(0)
    model = Diffusion(data_shape=(1, 8, 8), num_levels=17, backbone=TINY, num_timesteps=20, val_vlb=val_vlb,
                      val_vlb_terms=5)
    nn.init.normal_(model.backbone.out[-1].weight, std=0.1)
    data = DigitsDataModule(batch_size=16)
    trainer = L.Trainer(limit_val_batches=1, logger=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu")
    logged = {k: float(v) for k, v in trainer.validate(model, datamodule=data, verbose=False)[0].items()}
    loader = data.val_dataloader()
    (x, _), indices = next(iter(loader)), next(iter(loader.batch_sampler))
    model.eval()
    with torch.no_grad():
        source = ExampleGenerators(0, indices)
        loss = model.loss(x, generator=source)["loss"]
        source_subset = ExampleGenerators(0, indices)
        model.loss(x, generator=source_subset)
        subset = model.vlb(x, num_terms=5, generator=source_subset).total
        source_full = ExampleGenerators(0, indices)
        model.loss(x, generator=source_full)
        bound = model.vlb(x, generator=source_full).total
    assert logged["val/loss"] == pytest.approx(loss.item(), rel=1e-6)
    expected = {"full": {"val/nll", "val/bpd"}, "subset": {"val/vlb_subset", "val/vlb_subset_bpd"}, "skip": set()}
    assert {k for k in logged if k not in ("val/loss", "val/mse", "val/num_examples")} == expected[val_vlb]
    if val_vlb == "full":
        assert logged["val/nll"] == pytest.approx(bound.mean().item(), rel=1e-6)
        assert logged["val/bpd"] == pytest.approx(bound.mean().item() / (64 * math.log(2)), rel=1e-6)
    if val_vlb == "subset":
        assert logged["val/vlb_subset"] == pytest.approx(subset.mean().item(), rel=1e-6)
        assert abs(subset.mean() - bound.mean()) > 1e-3 * bound.mean(), "the estimate is not the bound itself"
