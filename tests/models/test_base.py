"""What every family inherits from GenerativeModule: random-state checkpoints and the compile option."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import Logger

from lit_gen.core.runtime import collect_rng_state, restore_rng_state
from lit_gen.models.vae import VAE


def test_random_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(3), np.random.seed(3), random.seed(3)
    torch.save({"rng": collect_rng_state()}, tmp_path / "state.ckpt")
    expected = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    torch.manual_seed(0), np.random.seed(0), random.seed(0)
    restore_rng_state(torch.load(tmp_path / "state.ckpt", weights_only=True)["rng"])
    again = (torch.rand(4), np.random.rand(4), [random.random() for _ in range(4)])
    assert torch.equal(expected[0], again[0])
    assert np.array_equal(expected[1], again[1]) and expected[2] == again[2]


@pytest.mark.slow  # inductor compiles C++ kernels: ~45 s on the 2-core CPU
def test_compile_keeps_parameter_names_and_results():
    kwargs = {"data_shape": (1, 8, 8), "num_levels": 17, "channels": 8, "latent_dim": 4}
    torch.manual_seed(0)
    eager = VAE(**kwargs)
    compiled = VAE(**kwargs, compile=True)
    compiled.load_state_dict(eager.state_dict())
    compiled.setup("fit")
    assert compiled.encoder._compiled_call_impl is not None
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    x = torch.randint(0, 17, (16, 1, 8, 8)).float() / 16
    torch.manual_seed(1)
    expected = eager.loss(x)["loss"]
    torch.manual_seed(1)
    got = compiled.loss(x)["loss"]
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_one_compiled_training_step_equals_the_eager_one():
    """The default suite's compile check (the VAE one above is slow-marked): the smallest MADE compiled
    in place, ~10 s on a 2-core CPU with an empty inductor cache. Same parameter names, same loss, same
    gradients as the eager model."""
    from lit_gen.models.autoregressive import MADE

    kwargs = {"data_shape": (4,), "num_levels": 3, "hidden_sizes": (8,)}
    torch.manual_seed(0)
    eager = MADE(**kwargs)
    compiled = MADE(**kwargs, compile=True)
    compiled.load_state_dict(eager.state_dict())
    compiled.setup("fit")
    assert compiled.net._compiled_call_impl is not None and eager.net._compiled_call_impl is None
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    x = torch.randint(0, 3, (16, 4), generator=torch.Generator().manual_seed(1)).float() / 2
    expected, got = eager.loss(x), compiled.loss(x)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    expected.backward()
    got.backward()
    for (name, p), q in zip(eager.named_parameters(), compiled.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-5, atol=1e-6, msg=name)


class RecordingLogger(Logger):
    """Keeps every ``log_metrics`` call: (step, metrics)."""

    def __init__(self, save_dir):
        super().__init__()
        self.calls: list[tuple[int, dict[str, float]]] = []
        self._save_dir = str(save_dir)

    name, version = "recording", 0

    @property
    def save_dir(self):
        return self._save_dir

    def log_metrics(self, metrics, step=None):
        self.calls.append((step, dict(metrics)))

    def log_hyperparams(self, *args, **kwargs):
        pass


@pytest.mark.parametrize("family", ["vae", "gan"])
def test_training_terms_reach_the_logger_every_n_steps_and_as_exact_epoch_means(family, tmp_path):
    """Each step's terms are handed to the logger on the steps it writes (``log_every_n_steps``) and as
    float64 epoch means over the epoch's examples (the last batch is smaller)."""
    from lit_gen.cli import LitGenCLI
    from tests.conftest import TINY_FAMILIES

    config, tiny = TINY_FAMILIES[family]
    cli = LitGenCLI(args=["--config", str(config), *tiny, "--trainer.max_epochs=2", "--trainer.log_every_n_steps=2",
                          "--trainer.limit_val_batches=0", "--trainer.num_sanity_val_steps=0",
                          "--trainer.enable_progress_bar=false", "--checkpoint.monitor=null",
                          "--trainer.callbacks=[]", "--evaluation.every_n_epochs=0", "--data.init_args.batch_size=300",
                          f"--trainer.default_root_dir={tmp_path}"], run=False)
    model, logger = cli.model, RecordingLogger(tmp_path)
    cli.trainer.loggers = [logger]
    steps = []  # (epoch, batch size, {name: value}) of every training step, as the model reported them
    original = model.log_train_terms

    def record(terms, batch_size):
        steps.append((model.current_epoch, batch_size, {k: float(v) for k, v in terms.items()}))
        original(terms, batch_size)

    model.log_train_terms = record
    cli.trainer.fit(model, datamodule=cli.datamodule)

    sizes = {size for _, size, _ in steps}
    assert len(sizes) == 2, "the epoch must end on a smaller batch for the mean to be tested"
    step_logs = [(step, m) for step, m in logger.calls if any(k.endswith("_step") for k in m)]
    assert [step for step, _ in step_logs] == [i for i in range(len(steps)) if (i + 1) % 2 == 0]
    for step, metrics in step_logs:
        assert {k for k in metrics if k.endswith("_step")} == {f"train/{name}_step" for name in steps[step][2]}
        for name, value in steps[step][2].items():
            assert metrics[f"train/{name}_step"] == pytest.approx(value, rel=1e-6)
    epoch_logs = [m for _, m in logger.calls if any(k.endswith("_epoch") for k in m)]
    assert len(epoch_logs) == 2
    for epoch, metrics in enumerate(epoch_logs):
        rows = [(size, terms) for e, size, terms in steps if e == epoch]
        for name in rows[0][1]:
            expected = sum(size * terms[name] for size, terms in rows) / sum(size for size, _ in rows)
            assert metrics[f"train/{name}_epoch"] == pytest.approx(expected, rel=1e-6), name
    assert "train/loss" in cli.trainer.callback_metrics or family == "gan"


@pytest.fixture(scope="module")
def threads_of_a_module_fixture():
    return torch.get_num_threads()


def test_module_scoped_fixtures_run_on_one_thread(threads_of_a_module_fixture):
    """Module-scoped fixtures (models trained once for several tests) come after tests/models/conftest.py's
    one-thread setting, as the tests themselves do."""
    assert threads_of_a_module_fixture == 1 == torch.get_num_threads()
