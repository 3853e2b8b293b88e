"""The EBM module: shapes, the steps knob, the contrastive objective and its buffer, exact checkpoints."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from lit_gen.core.levels import from_levels, to_levels
from lit_gen.errors import LitGenError
from lit_gen.models.ebm import EBM

TINY = {"channels": 4, "langevin_steps": 3, "buffer_size": 32}


def digits_like(n=8):
    return from_levels(torch.randint(0, 17, (n, 1, 8, 8), generator=torch.Generator().manual_seed(0)), 17)


@pytest.mark.parametrize("shape,levels", [((1, 8, 8), 17), ((1, 28, 28), 256), ((3, 32, 32), 256)])
def test_shapes_and_samples_on_the_data_grid(shape, levels):
    model = EBM(data_shape=shape, num_levels=levels, **TINY).eval()
    for init in ("noise", "buffer"):
        s = model.sample(3, generator=torch.Generator().manual_seed(0), init=init)
        assert s.shape == (3, *shape) and s.min() >= 0 and s.max() <= 1
        assert torch.equal(s, from_levels(to_levels(s, levels), levels)), "samples must lie on the K levels"
        again = model.sample(3, generator=torch.Generator().manual_seed(0), init=init)
        assert torch.equal(s, again), "the generator argument must make sampling reproducible"


def test_steps_knob_runs_the_sampler_that_many_steps():
    model = EBM(data_shape=(1, 8, 8), num_levels=None, step_size=0.5, noise_std=0.0, **TINY).eval()
    start = model.sample(4, generator=torch.Generator().manual_seed(0), steps=0, init="noise")
    noise = (model.noise(4, torch.Generator().manual_seed(0)) + 1) / 2
    assert torch.allclose(start, noise), "0 steps returns the uniform starting noise"
    with torch.no_grad():
        e0 = model.energy(2 * start - 1).mean()
        moved = model.sample(4, generator=torch.Generator().manual_seed(0), steps=10, init="noise")
        e10 = model.energy(2 * moved - 1).mean()
    assert e10 < e0, "noise-free Langevin steps descend the energy"


def test_sampling_works_inside_inference_mode():
    model = EBM(data_shape=(1, 8, 8), num_levels=17, **TINY).eval()
    with torch.inference_mode():
        assert model.sample(2).shape == (2, 1, 8, 8)
        assert torch.isfinite(model.loss(digits_like(4))["loss"])


def test_training_loss_updates_the_buffer_and_validation_leaves_it():
    torch.manual_seed(0)
    model = EBM(data_shape=(1, 8, 8), num_levels=17, energy_reg=0.5, **TINY)
    before = model.buffer.samples.clone()
    out = model.train().loss(digits_like())
    expected = out["contrastive_divergence"] + 0.5 * out["energy_reg"]
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-6)
    assert out["contrastive_divergence"].item() == pytest.approx(
        (out["data_energy"] - out["sample_energy"]).item(), abs=1e-6)
    out["loss"].backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert not torch.equal(before, model.buffer.samples), "training writes refined states back"
    assert len(model.buffer) == 32
    after_train = model.buffer.samples.clone()
    with torch.no_grad():
        model.eval().loss(digits_like())
    assert torch.equal(after_train, model.buffer.samples), "validation must not change the buffer"


@pytest.mark.parametrize("training", [True, False])
def test_the_objective_is_the_energies_of_data_and_chains(training):
    """L = mean E(x+) - mean E(x-) + alpha mean(E(x+)^2 + E(x-)^2), with every energy recomputed by
    ``model.energy``: x+ the data in [-1, 1] (plus ``data_noise`` in training), x- the buffer states after
    ``langevin_steps`` (training, written back) or ``val_langevin_steps`` (validation, left) steps."""
    import copy

    torch.manual_seed(0)
    model = EBM(data_shape=(1, 8, 8), num_levels=17, energy_reg=0.5, data_noise=0.1, val_langevin_steps=2,
                **TINY).train(training)
    twin = copy.deepcopy(model)  # the same weights and buffer, to replay the same draws on
    x = digits_like()
    torch.manual_seed(1)
    out = model.loss(x, generator=None if training else torch.Generator().manual_seed(2))
    torch.manual_seed(1)
    positive = 2 * x - 1
    if training:
        positive = positive + 0.1 * torch.randn_like(positive)
    generator = None if training else torch.Generator().manual_seed(2)
    draw_state = twin.buffer.samples.clone()
    negative = twin.negatives(8, 3 if training else 2, update_buffer=training, generator=generator)
    with torch.no_grad():
        e_pos, e_neg = model.energy(positive), model.energy(negative)
    cd = e_pos.mean() - e_neg.mean()
    reg = (e_pos.pow(2) + e_neg.pow(2)).mean()
    assert out["data_energy"].item() == pytest.approx(e_pos.mean().item(), rel=1e-5, abs=1e-6)
    assert out["sample_energy"].item() == pytest.approx(e_neg.mean().item(), rel=1e-5, abs=1e-6)
    assert out["contrastive_divergence"].item() == pytest.approx(cd.item(), rel=1e-5, abs=1e-6)
    assert out["energy_reg"].item() == pytest.approx(reg.item(), rel=1e-5)
    assert out["loss"].item() == pytest.approx((cd + 0.5 * reg).item(), rel=1e-5, abs=1e-6)
    assert not torch.equal(negative, 2 * x - 1) and e_pos.std() > 0
    # The chains the energies were taken on are the ones the buffer keeps (training) or leaves (validation).
    assert torch.equal(model.buffer.samples, twin.buffer.samples)
    assert torch.equal(model.buffer.samples, draw_state) is not training


def test_checkpoint_restores_the_buffer_exactly(tmp_path):
    torch.manual_seed(0)
    model = EBM(data_shape=(1, 8, 8), num_levels=17, **TINY)
    loader = DataLoader(TensorDataset(digits_like(8), torch.zeros(8, dtype=torch.long)), batch_size=4)
    trainer = L.Trainer(max_steps=2, limit_val_batches=0, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, accelerator="cpu")
    trainer.fit(model, train_dataloaders=loader)
    path = tmp_path / "ebm.ckpt"
    trainer.save_checkpoint(path)
    state = torch.load(path, weights_only=True)  # what `lit-gen test/predict` loads
    assert torch.equal(state["lit_gen_replay_buffer"]["samples"], model.buffer.samples)
    restored = EBM.load_from_checkpoint(path)
    assert torch.equal(restored.buffer.samples, model.buffer.samples)
    assert not torch.equal(restored.buffer.samples, EBM(data_shape=(1, 8, 8), **TINY).buffer.samples)


def test_mlp_energy_on_flat_data_and_unconditional_only():
    model = EBM(data_shape=(2,), num_levels=None, architecture="mlp", channels=16, buffer_size=8)
    assert model.sample(5).shape == (5, 2)
    with pytest.raises(LitGenError, match="unconditional"):
        EBM(data_shape=(1, 8, 8), num_classes=10, conditional=True, **TINY)
