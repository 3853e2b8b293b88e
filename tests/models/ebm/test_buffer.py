"""The replay buffer keeps its size, reinitialises at its rate, and round-trips through its state."""

from __future__ import annotations

import pytest
import torch

from lit_gen.models.ebm.buffer import ReplayBuffer


def noise(n, generator=None):
    return torch.rand((n, 1, 2, 2), generator=generator) + 10.0  # fresh states are >= 10: recognisable


def test_size_is_constant_and_draws_mix_at_the_reinit_rate():
    buffer = ReplayBuffer(500, noise, reinit_rate=0.05, generator=torch.Generator().manual_seed(0))
    buffer.samples.zero_()  # stored states are 0: a drawn state is either 0 (kept) or >= 10 (fresh)
    generator = torch.Generator().manual_seed(1)
    fresh_total, drawn = 0, 0
    for _ in range(40):
        draw = buffer.draw(500, generator)
        assert torch.equal(draw.fresh, draw.samples.flatten(1).min(1).values >= 10)
        assert torch.equal(draw.samples[~draw.fresh], torch.zeros_like(draw.samples[~draw.fresh]))
        fresh_total += int(draw.fresh.sum())
        drawn += len(draw.fresh)
        assert len(buffer) == 500 and buffer.samples.shape == (500, 1, 2, 2)
    # 20000 draws at p = 0.05: standard error 0.0015.
    assert fresh_total / drawn == pytest.approx(0.05, abs=0.006)
    assert not buffer.draw(100, generator, reinit=False).fresh.any()


def test_update_writes_states_back_where_they_were_drawn():
    buffer = ReplayBuffer(50, noise, reinit_rate=0.5)
    draw = buffer.draw(20)
    refined = -draw.samples
    buffer.update(draw.indices, refined)
    assert len(buffer) == 50
    last = {int(i): k for k, i in enumerate(draw.indices)}  # with repeats, the last write wins
    for index, k in last.items():
        assert torch.equal(buffer.samples[index], refined[k])
    untouched = [i for i in range(50) if i not in last]
    assert (buffer.samples[untouched] >= 10).all()


def test_state_round_trip_is_exact():
    a = ReplayBuffer(30, noise)
    a.update(torch.arange(5), torch.zeros(5, 1, 2, 2))
    b = ReplayBuffer(30, noise)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.samples, b.samples)
    with pytest.raises(ValueError, match="do not fit"):
        ReplayBuffer(30, lambda n, g=None: torch.zeros(n, 3)).load_state_dict(a.state_dict())
