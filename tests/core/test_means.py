"""Split means: exact float64 sums, counts per metric, reduction, and a state that round-trips."""

from __future__ import annotations

import torch

from lit_gen.core.means import SplitMeans


def test_sums_and_counts_are_per_split_and_metric():
    means = SplitMeans()
    means.add("val", "nll", torch.tensor([1.0, 2.0]), 2)
    means.add("val", "nll", torch.tensor([3.0]), 1)
    means.add("val", "loss", torch.tensor(5.0), 4)
    means.add("test", "nll", torch.tensor(7.0), 1)
    totals = means.pop("val")
    assert {k: (float(s), float(c)) for k, (s, c) in totals.items()} == {"loss": (5.0, 4.0), "nll": (6.0, 3.0)}
    assert totals["nll"][0].dtype == torch.float64
    assert means.pop("val") == {}, "pop clears the split"
    assert float(means.pop("test")["nll"][0]) == 7.0


def test_pop_reduces_sums_and_counts_together():
    means = SplitMeans()
    means.add("val", "nll", torch.tensor(3.0), 3)
    totals = means.pop("val", reduce=lambda t: t * 2)  # two ranks holding the same totals
    assert (float(totals["nll"][0]), float(totals["nll"][1])) == (6.0, 6.0)


def test_state_round_trips_and_adds_to_what_is_there():
    means = SplitMeans()
    means.add("train", "loss", torch.tensor(1.25, dtype=torch.float64), 5)
    state = means.state("train")
    again = SplitMeans()
    again.add("train", "loss", torch.tensor(0.75), 3)
    again.load("train", state, "cpu")
    total, count = again.pop("train")["loss"]
    assert (float(total), float(count)) == (2.0, 8.0)
    assert means.state("other") == {}
