"""Seeded chunked sampling: the same sample set whatever the chunk size and the number of processes."""

from __future__ import annotations

import torch

from lit_gen.core.requests import (
    SampleRequest,
    balanced_labels,
    chunk_sizes,
    draw_chunk,
    draw_samples,
    rank_chunks,
)
from lit_gen.core.runtime import gather_chunks
from lit_gen.core.seeds import ExampleGenerators


def test_chunk_sizes_cover_the_request_exactly():
    assert chunk_sizes(10, 4) == [4, 4, 2]
    assert chunk_sizes(8, 4) == [4, 4]
    assert chunk_sizes(0, 4) == []


def fake_world_gather(per_rank: list[dict[int, torch.Tensor]], sizes: list[int], world: int) -> list[torch.Tensor]:
    """Run gather_chunks as every rank of a simulated world would, with a stacking all_gather."""
    padded_per_rank: list[torch.Tensor] = []

    def capture(t):
        padded_per_rank.append(t)
        return torch.stack([t] * world)  # placeholder result; only the padded input matters here

    for local in per_rank:  # first pass: each rank pads its chunks
        gather_chunks(local, sizes, world, capture, (3,))
    stacked = torch.stack(padded_per_rank)
    return [gather_chunks(local, sizes, world, lambda t: stacked, (3,)) for local in per_rank]


def test_gathered_chunks_equal_the_single_process_result():
    sizes = chunk_sizes(11, 3)  # 4 chunks: 3, 3, 3, 2
    chunk = {i: torch.full((s, 3), float(i)) + torch.arange(s).unsqueeze(1) / 10 for i, s in enumerate(sizes)}
    single = gather_chunks(chunk, sizes, 1, lambda t: t, (3,))
    assert single.shape == (11, 3)
    for world in (2, 3, 5):  # 5 ranks: one rank draws nothing and still takes part
        per_rank = [{i: chunk[i] for i in rank_chunks(len(sizes), r, world)} for r in range(world)]
        for result in fake_world_gather(per_rank, sizes, world):
            assert torch.equal(result, single)


def test_a_request_is_chunks_with_index_start_size_seed_and_labels():
    request = SampleRequest(10, seed=7, chunk_size=4, num_classes=3)
    assert len(request) == 3
    last = request[2]
    assert (last.index, last.start, last.size, last.seed) == (2, 8, 2, 7) and last.labels.tolist() == [2, 0]
    assert SampleRequest(10, 7, 4)[0].labels is None  # unlabeled data: no labels
    assert [c.index for c in request.for_rank(1, 2)] == [1]


def test_a_chunk_is_drawn_with_its_labels_only_by_a_conditional_model():
    seen = []

    class Model:
        device = torch.device("cpu")
        conditional = False

        def sample(self, n, labels=None, generator=None):
            seen.append(labels)
            return torch.zeros(n, 1)

    chunk = SampleRequest(4, 0, 4, num_classes=2)[0]
    draw_chunk(Model(), chunk, {})
    Model.conditional = True
    draw_chunk(Model(), chunk, {})
    assert seen[0] is None and seen[1].tolist() == [0, 1, 0, 1]


def test_sample_j_of_a_request_is_the_same_in_chunks_of_any_size():
    """Sample j comes from its own generator seeded seed + j: chunks of 3 or of 4 give the same ten samples,
    each equal to that sample drawn alone."""
    from lit_gen.models.factorized import FactorizedCategorical

    model = FactorizedCategorical()
    with torch.no_grad():
        model.logits.normal_(generator=torch.Generator().manual_seed(0))
    by_chunks = {}
    for chunk in (3, 4):
        starts = [i * chunk for i in range(len(chunk_sizes(10, chunk)))]
        by_chunks[chunk] = torch.cat([draw_samples(model, start, size, 5, {"temperature": 1.0})
                                      for start, size in zip(starts, chunk_sizes(10, chunk))])
    assert torch.equal(by_chunks[3], by_chunks[4])
    for j in (0, 7, 9):
        alone = model.sample(1, generator=ExampleGenerators(5, [j]))
        assert torch.equal(by_chunks[3][j : j + 1], alone)
    assert len(torch.unique(by_chunks[3].flatten(1), dim=0)) == 10


def test_balanced_labels_give_sample_j_the_label_j_mod_classes():
    labels = torch.cat([balanced_labels(i * 4, size, 3) for i, size in enumerate(chunk_sizes(10, 4))])
    assert labels.tolist() == [j % 3 for j in range(10)]
    chunks = torch.cat([c.labels for c in SampleRequest(10, 0, 4, num_classes=3)])
    assert torch.equal(chunks, labels)
