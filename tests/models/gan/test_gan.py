"""The GAN module: shapes for every dataset, the truncation knob, which optimizer step moves which network,
and checkpoints that load without pickled factories."""

from __future__ import annotations

import math

import lightning as L
import pytest
import torch
from lightning.pytorch.plugins.precision import MixedPrecision
from torch.utils.data import DataLoader, TensorDataset

from lit_gen.core.levels import from_levels, to_levels
from lit_gen.models.gan import GAN
from lit_gen.models.gan.module import truncated_normal

TINY = {"latent_dim": 8, "generator_channels": 8, "discriminator_channels": 8}


@pytest.mark.parametrize("shape,levels", [((1, 8, 8), 17), ((1, 28, 28), 256), ((3, 32, 32), 256)])
@pytest.mark.parametrize("architecture", ["dcgan", "resnet"])
def test_shapes_and_samples_on_the_data_grid(shape, levels, architecture):
    model = GAN(data_shape=shape, num_levels=levels, architecture=architecture, **TINY).eval()
    s = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert s.shape == (5, *shape) and s.min() >= 0 and s.max() <= 1
    assert torch.equal(s, from_levels(to_levels(s, levels), levels)), "samples must lie on the K levels"
    assert model.score(2 * s - 1).shape == (5,)
    again = model.sample(5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s, again), "the generator argument must make sampling reproducible"


def test_truncated_latent_stays_in_range_with_the_truncated_normal_variance():
    t = 1.0
    z = truncated_normal((200_000,), t, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert z.abs().max() <= t
    # Var of N(0,1) truncated to [-t, t]: 1 - 2 t phi(t) / (2 Phi(t) - 1).
    phi = math.exp(-t * t / 2) / math.sqrt(2 * math.pi)
    mass = math.erf(t / math.sqrt(2))
    assert z.mean().item() == pytest.approx(0.0, abs=0.01)
    assert z.var().item() == pytest.approx(1 - 2 * t * phi / mass, abs=0.01)
    wide = truncated_normal((200_000,), 50.0, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert wide.var().item() == pytest.approx(1.0, abs=0.02), "a wide truncation is the plain normal"
    with pytest.raises(ValueError, match="truncation"):
        truncated_normal((3,), 0.0, None, torch.device("cpu"))


def test_truncation_reduces_sample_diversity():
    torch.manual_seed(0)
    model = GAN(data_shape=(1, 8, 8), num_levels=None, **TINY).eval()
    spread = {t: model.sample(400, generator=torch.Generator().manual_seed(1), truncation=t).var(0).mean()
              for t in (None, 0.2)}
    assert spread[0.2] < 0.5 * spread[None]


def test_conditional_generator_and_projection_discriminator_use_labels():
    torch.manual_seed(0)
    model = GAN(data_shape=(1, 8, 8), num_levels=17, num_classes=10, conditional=True, **TINY)
    for p in model.generator.parameters():  # move the class gains / projections off their initial values
        p.data.add_(0.1 * torch.randn_like(p))
    with torch.no_grad():
        model.discriminator.head.embed.weight.normal_()
    model.eval()
    zeros, sevens = torch.zeros(4, dtype=torch.long), torch.full((4,), 7)
    a = model.sample(4, labels=zeros, generator=torch.Generator().manual_seed(1))
    b = model.sample(4, labels=sevens, generator=torch.Generator().manual_seed(1))
    assert not torch.equal(a, b)
    x = 2 * a - 1
    assert not torch.allclose(model.score(x, zeros), model.score(x, sevens))
    with pytest.raises(ValueError, match="labels"):
        model.score(x, None)
    assert model.sample(10).shape == (10, 1, 8, 8)  # default labels: balanced classes


def data_loader(n=8, shape=(1, 8, 8)):
    x = from_levels(torch.randint(0, 17, (n, *shape), generator=torch.Generator().manual_seed(0)), 17)
    return DataLoader(TensorDataset(x, torch.zeros(n, dtype=torch.long)), batch_size=4)


class StepRecorder:
    """Which parameters each optimizer step changed: (network names changed) per step, in order."""

    def __init__(self, model: GAN) -> None:
        self.model, self.steps, self._before = model, [], None

    def snapshot(self):
        return {name: [p.detach().clone() for p in getattr(self.model, name).parameters()]
                for name in ("generator", "discriminator")}

    def pre(self, optimizer, args, kwargs):
        self._before = self.snapshot()

    def post(self, optimizer, args, kwargs):
        after = self.snapshot()
        changed = {name for name in after
                   if any(not torch.equal(a, b) for a, b in zip(self._before[name], after[name]))}
        owner = "generator" if optimizer is self.model.trainer.optimizers[0] else "discriminator"
        self.steps.append((owner, changed))


@pytest.mark.parametrize("loss,extra", [("non_saturating", {}), ("wasserstein", {"gradient_penalty": 10.0}),
                                        ("hinge", {"spectral_norm": True, "r1_penalty": 1.0})])
def test_each_optimizer_step_moves_only_its_network(loss, extra):
    torch.manual_seed(0)
    model = GAN(data_shape=(1, 8, 8), num_levels=17, loss=loss, n_critic=2, **TINY, **extra)
    recorder = StepRecorder(model)

    class Hooks(L.Callback):
        def on_train_start(self, trainer, pl_module):
            for opt in trainer.optimizers:
                opt.register_step_pre_hook(recorder.pre)
                opt.register_step_post_hook(recorder.post)

    trainer = L.Trainer(max_epochs=1, limit_train_batches=2, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu", callbacks=[Hooks()])
    trainer.fit(model, train_dataloaders=data_loader())
    # n_critic = 2: batch 0 steps D then G, batch 1 steps D only.
    assert recorder.steps == [("discriminator", {"discriminator"}), ("generator", {"generator"}),
                              ("discriminator", {"discriminator"})]
    assert trainer.global_step == 3, "global_step counts every optimizer step"
    assert all(p.requires_grad for p in model.parameters()), "toggling must restore requires_grad"


def test_optimizers_and_schedulers_come_from_their_factories():
    model = GAN(data_shape=(1, 8, 8), num_levels=17, **TINY,
                generator_optimizer=lambda p: torch.optim.SGD(p, lr=0.1),
                discriminator_optimizer=lambda p: torch.optim.Adam(p, lr=0.01),
                discriminator_lr_scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=1, gamma=0.5))
    g, d = model.configure_optimizers()
    assert isinstance(g["optimizer"], torch.optim.SGD) and "lr_scheduler" not in g
    assert {id(p) for group in g["optimizer"].param_groups for p in group["params"]} == \
        {id(p) for p in model.generator.parameters()}
    assert isinstance(d["lr_scheduler"]["scheduler"], torch.optim.lr_scheduler.StepLR)
    assert "generator_optimizer" not in model.hparams, "factories are not hyperparameters (checkpoints)"
    assert model.hparams["loss"] == "non_saturating"


def test_validation_loss_is_the_discriminator_objective():
    torch.manual_seed(0)
    model = GAN(data_shape=(1, 8, 8), num_levels=17, loss="hinge", **TINY).eval()
    x = next(iter(data_loader()))[0]
    torch.manual_seed(3)
    with torch.inference_mode():
        out = model.loss(x)
    torch.manual_seed(3)
    with torch.no_grad():
        fake = model.generate(4)
        real_scores, fake_scores = model.score(2 * x - 1), model.score(fake)
    expected = torch.relu(1 - real_scores).mean() + torch.relu(1 + fake_scores).mean()
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert {"generator_loss", "real_score", "fake_score"} <= set(out)


def fp16_with_scale(scale: float) -> MixedPrecision:
    """Lightning's 16-mixed precision on the CPU (its Trainer flag is GPU-only): autocast + GradScaler."""
    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu", init_scale=scale))


@pytest.mark.parametrize("precision", ["32-true", "16-mixed"])
@pytest.mark.parametrize("clip", [None, 1e-3])
def test_gradient_clip_norm_bounds_each_networks_step(clip, precision):
    """Manual optimization ignores trainer.gradient_clip_val; the GAN clips each network itself.

    With SGD at lr 1 a step moves the weights by exactly the (clipped) gradient, so its norm is the bound.
    Under 16-mixed (a real GradScaler, on the CPU) the clip must see unscaled gradients: clipping the
    scaled ones would leave steps 2**8 times too small (a small initial scale, so no step is skipped).
    """
    torch.manual_seed(0)
    sgd = lambda params: torch.optim.SGD(params, lr=1.0)  # noqa: E731
    model = GAN(data_shape=(1, 8, 8), num_levels=17, gradient_clip_norm=clip, generator_optimizer=sgd,
                discriminator_optimizer=sgd, **TINY)
    before = {name: torch.cat([p.detach().flatten().clone() for p in getattr(model, name).parameters()])
              for name in ("generator", "discriminator")}
    trainer = L.Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        accelerator="cpu",
                        plugins=[fp16_with_scale(2.0**8)] if precision == "16-mixed" else None)
    trainer.fit(model, train_dataloaders=data_loader())
    for name, old in before.items():
        moved = (torch.cat([p.detach().flatten() for p in getattr(model, name).parameters()]) - old).norm()
        if clip is None:
            assert moved > 1e-2, f"{name}: the unclipped step should be far larger than the bound"
        else:
            assert clip * 0.99 <= moved <= clip * 1.001, f"{name} moved {moved}"
