"""Seeded chunked sampling: the same sample set whatever the number of processes."""

from __future__ import annotations

import torch

from lit_gen.evaluation.sampling import SampleRequests, chunk_sizes, gather_chunks, rank_chunks


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


def test_sample_requests_are_chunk_index_size_seed():
    requests = SampleRequests(10, 4, seed=7)
    assert len(requests) == 3
    assert requests[2].tolist() == [2, 2, 7, 4]
