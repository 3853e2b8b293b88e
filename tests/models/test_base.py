"""What every family inherits from GenerativeModule: random-state checkpoints and the compile option."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from lit_gen.models.base import collect_rng_state, restore_rng_state
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
