"""Learning-rate schedules follow their formula: the base class's (Lightning steps them every
``lr_scheduler_interval``), the GAN's two (stepped by hand), ReduceLROnPlateau on val/loss, and a resume."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lit_gen.core.levels import from_levels
from lit_gen.models.gan import GAN
from lit_gen.models.vae import VAE

BATCHES_PER_EPOCH = 3


def loader() -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = from_levels(torch.randint(0, 17, (4 * BATCHES_PER_EPOCH, 1, 8, 8), generator=g), 17)
    return DataLoader(TensorDataset(x, torch.zeros(len(x), dtype=torch.long)), batch_size=4)


class RecordLearningRates(L.Callback):
    """Every optimizer's learning rate at the start of each training batch, and at the end of the fit."""

    def __init__(self) -> None:
        self.at_batch: list[list[float]] = []
        self.at_end: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.at_batch.append([opt.param_groups[0]["lr"] for opt in trainer.optimizers])

    def on_train_end(self, trainer, pl_module) -> None:
        self.at_end = [opt.param_groups[0]["lr"] for opt in trainer.optimizers]


def fit(model, epochs: int, ckpt_path=None, val: bool = False, callbacks=()) -> tuple[L.Trainer, RecordLearningRates]:
    record = RecordLearningRates()
    trainer = L.Trainer(max_epochs=epochs, limit_val_batches=1 if val else 0, num_sanity_val_steps=0,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", callbacks=[record, *callbacks])
    trainer.fit(model, train_dataloaders=loader(), val_dataloaders=loader() if val else None, ckpt_path=ckpt_path)
    return trainer, record


def gan(interval: str) -> GAN:
    torch.manual_seed(0)
    return GAN(data_shape=(1, 8, 8), num_levels=17, latent_dim=8, generator_channels=8, discriminator_channels=8,
               n_critic=2, lr_scheduler_interval=interval,
               generator_optimizer=lambda p: torch.optim.Adam(p, lr=1e-3),
               discriminator_optimizer=lambda p: torch.optim.Adam(p, lr=2e-3),
               generator_lr_scheduler=lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.5),
               discriminator_lr_scheduler=lambda o: torch.optim.lr_scheduler.StepLR(o, step_size=2, gamma=0.1))


def gan_rates(steps: int) -> list[float]:
    """[generator, discriminator] learning rates after ``steps`` scheduler steps: 1e-3 * 0.5^n and
    2e-3 * 0.1^floor(n / 2)."""
    return [1e-3 * 0.5**steps, 2e-3 * 0.1 ** (steps // 2)]


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_gan_schedulers_step_once_per_batch_or_epoch_whatever_n_critic(interval):
    """With n_critic = 2 the generator steps on every other batch only; both schedules still count batches
    ("step": a step is a batch) or epochs, each scheduler exactly once per interval."""
    _, record = fit(gan(interval), epochs=2)
    assert len(record.at_batch) == 2 * BATCHES_PER_EPOCH
    for batch, rates in enumerate(record.at_batch):
        steps = batch if interval == "step" else batch // BATCHES_PER_EPOCH
        assert rates == pytest.approx(gan_rates(steps), rel=1e-12), (batch, rates)
    done = 2 * BATCHES_PER_EPOCH if interval == "step" else 2
    assert record.at_end == pytest.approx(gan_rates(done), rel=1e-12)


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_gan_schedules_resumed_mid_way_go_on_as_if_never_stopped(interval, tmp_path):
    _, straight = fit(gan(interval), epochs=3)
    trainer, _ = fit(gan(interval), epochs=1)
    trainer.save_checkpoint(tmp_path / "one_epoch.ckpt")
    resumed_trainer, resumed = fit(gan(interval), epochs=3, ckpt_path=tmp_path / "one_epoch.ckpt")
    assert resumed.at_batch == straight.at_batch[BATCHES_PER_EPOCH:]
    assert resumed.at_end == pytest.approx(gan_rates(3 * BATCHES_PER_EPOCH if interval == "step" else 3), rel=1e-12)
    assert [c.scheduler.last_epoch for c in resumed_trainer.lr_scheduler_configs] == \
        [3 * BATCHES_PER_EPOCH if interval == "step" else 3] * 2


def vae(**kwargs) -> VAE:
    torch.manual_seed(0)
    return VAE(data_shape=(1, 8, 8), num_levels=17, latent_dim=4, channels=8, val_iwae_samples=2,
               optimizer=lambda p: torch.optim.Adam(p, lr=1e-3), **kwargs)


@pytest.mark.parametrize("interval", ["step", "epoch"])
def test_lr_scheduler_interval_steps_the_schedule_every_batch_or_every_epoch(interval):
    model = vae(lr_scheduler=lambda o: torch.optim.lr_scheduler.ExponentialLR(o, gamma=0.5),
                lr_scheduler_interval=interval)
    _, record = fit(model, epochs=2)
    for batch, (rate,) in enumerate(record.at_batch):
        steps = batch if interval == "step" else batch // BATCHES_PER_EPOCH
        assert rate == pytest.approx(1e-3 * 0.5**steps, rel=1e-12), batch
    assert record.at_end == pytest.approx([1e-3 * 0.5 ** (6 if interval == "step" else 2)], rel=1e-12)


class RecordMetric(L.Callback):
    def __init__(self, name: str) -> None:
        self.name, self.values = name, []

    def on_validation_end(self, trainer, pl_module) -> None:
        self.values.append(float(trainer.callback_metrics[self.name]))


@pytest.mark.parametrize("mode", ["min", "max"])
def test_reduce_lr_on_plateau_follows_val_loss(mode):
    """The base class gives ReduceLROnPlateau the monitor val/loss: the scheduler's best is the lowest
    (``mode: max``: highest) val/loss of the epochs, not another metric's, and patience 0 halves the rate
    after each epoch that did not improve on it (``max`` on a falling loss: every epoch after the first)."""
    model = vae(lr_scheduler=lambda o: torch.optim.lr_scheduler.ReduceLROnPlateau(o, mode=mode, factor=0.5,
                                                                                   patience=0))
    val_loss, val_nll = RecordMetric("val/loss"), RecordMetric("val/nll")
    trainer, record = fit(model, epochs=3, val=True, callbacks=[val_loss, val_nll])
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert trainer.lr_scheduler_configs[0].monitor == "val/loss"
    best = min if mode == "min" else max
    assert scheduler.best == pytest.approx(best(val_loss.values), rel=1e-7)
    assert best(val_loss.values) != pytest.approx(best(val_nll.values), rel=1e-4), "another metric's best"
    improved = (lambda new, old: new < old) if mode == "min" else (lambda new, old: new > old)
    worse = sum(not improved(v, best(val_loss.values[:i + 1])) for i, v in enumerate(val_loss.values[1:]))
    assert worse == (0 if mode == "min" else 2), val_loss.values  # the loss falls in three epochs
    assert record.at_end == pytest.approx([1e-3 * 0.5**worse], rel=1e-12)
