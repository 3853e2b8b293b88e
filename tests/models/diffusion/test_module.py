"""The Diffusion module: loss, label dropout, guidance, sampling arguments, and a trained model's bound."""

from __future__ import annotations

import functools
import math

import pytest
import torch
from torch import nn

from lit_gen.evaluation.likelihood import from_levels, to_levels
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


def test_loss_terms_and_vlb_weighting():
    model = Diffusion(data_shape=(1, 8, 8), num_levels=17, backbone=TINY, num_timesteps=50, vlb_weight=0.5)
    out = model.loss(digits_batch(), generator=torch.Generator().manual_seed(0))
    assert set(out) == {"loss", "mse", "vlb_per_dim"}
    assert out["loss"].item() == pytest.approx(out["mse"].item() + 0.5 * out["vlb_per_dim"].item(), rel=1e-5)
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


def test_hyperparameters_record_the_backbone_as_plain_data():
    model = Diffusion(data_shape=(1, 8, 8), num_levels=17, backbone=TINY)
    init_args = {"channels": 8, "channel_mults": (1, 2), "num_res_blocks": 1}
    expected = {"class_path": "lit_gen.models.diffusion.unet.UNet", "init_args": init_args}
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
