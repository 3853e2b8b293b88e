"""lit-gen's EMAWeightAveraging: the current weights until its first update (a fit that ends before the
average starts is the run without EMA, bit for bit), Lightning's EMA from then on (the same checkpoint as
Lightning's own callback), and picklable."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch
from torch.optim.swa_utils import get_ema_avg_fn

from lit_gen.averaging import EMADecay, EMAWeightAveraging
from tests.conftest import ROOT, quiet_trainer_args, run_cli

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")
TINY_VAE = ["--model.init_args.channels=8", "--model.init_args.latent_dim=4", "--model.init_args.iwae_samples=3"]
# 2 epochs of 3 steps, validation after each: the average is used (swapped in) twice and saved.
SHORT = ["--trainer.max_epochs=2", "--trainer.limit_train_batches=3", "--trainer.limit_val_batches=1",
         "--trainer.num_sanity_val_steps=0", "--evaluation.every_n_epochs=0"]


def ema_config(tmp_path: Path, class_path: str, start: int) -> str:
    path = tmp_path / f"ema_{class_path.rsplit('.', 2)[-2]}_{start}.yaml"
    path.write_text(f"trainer:\n  callbacks:\n    - class_path: {class_path}\n"
                    f"      init_args: {{decay: 0.5, update_starting_at_step: {start}}}\n")
    return str(path)


def fit(tmp_path: Path, name: str, *extra: str) -> dict:
    assert run_cli(["fit", "--config", QUICKSTART, *extra, *TINY_VAE, *SHORT,
                    *quiet_trainer_args(tmp_path, name)]) == 0
    return torch.load(tmp_path / name / "version_0" / "checkpoints" / "last.ckpt", weights_only=True)


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def best_score(checkpoint: dict) -> float:
    states = [state for key, state in checkpoint["callbacks"].items() if key.startswith("ModelCheckpoint")]
    return float(states[0]["best_model_score"])


def test_a_fit_that_ends_before_the_average_starts_is_the_run_without_ema(tmp_path):
    plain = fit(tmp_path, "plain")
    waiting = fit(tmp_path, "waiting", "--config", ema_config(tmp_path, "lit_gen.averaging.EMAWeightAveraging", 1000))
    assert "averaging_state" in waiting and int(waiting["averaging_state"]["n_averaged"]) == 0
    assert_same_weights(waiting["state_dict"], plain["state_dict"])  # validated, saved: the trained weights
    assert_same_weights(waiting["current_model_state"], plain["state_dict"])
    assert best_score(waiting) == best_score(plain)  # validation scored the trained weights
    # Lightning's own callback would have validated and saved the initial weights
    lightning = fit(tmp_path, "lightning",
                    "--config", ema_config(tmp_path, "lightning.pytorch.callbacks.EMAWeightAveraging", 1000))
    assert any(not torch.equal(lightning["state_dict"][k], plain["state_dict"][k]) for k in plain["state_dict"])


def test_once_started_it_is_lightnings_ema(tmp_path):
    ours = fit(tmp_path, "ours", "--config", ema_config(tmp_path, "lit_gen.averaging.EMAWeightAveraging", 2))
    theirs = fit(tmp_path, "theirs",
                 "--config", ema_config(tmp_path, "lightning.pytorch.callbacks.EMAWeightAveraging", 2))
    assert int(ours["averaging_state"]["n_averaged"]) == 4  # steps 2..5 (zero-based) of 6
    assert_same_weights(ours["state_dict"], theirs["state_dict"])
    assert_same_weights(ours["current_model_state"], theirs["current_model_state"])
    assert any(not torch.equal(ours["state_dict"][k], ours["current_model_state"][k]) for k in ours["state_dict"])


def test_it_pickles_and_its_decay_is_torchs():
    callback = pickle.loads(pickle.dumps(EMAWeightAveraging(decay=0.9, update_starting_at_step=3)))
    assert callback.update_starting_at_step == 3 and callback._kwargs["avg_fn"].decay == 0.9
    average, current = torch.randn(5), torch.randn(5)
    assert torch.equal(EMADecay(0.9)(average, current, 1), get_ema_avg_fn(0.9)(average, current, 1))
    with pytest.raises(ValueError, match=r"decay must be in \[0, 1\]"):
        EMADecay(1.5)
