"""Under DDP every rank ends a step with the same codebook: the EMA statistics and the usage window are
summed over the ranks, and restarted codes take rank 0's encoder outputs, though each rank sees its own
batch and draws from its own random stream."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lit_gen.models.latent.quantizer import VectorQuantizer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def batch(rank: int, step: int) -> torch.Tensor:
    """Rank ``rank``'s encoder outputs at ``step``: different on every rank, each rank's in a tight cluster
    (so most codes go unused and get restarted)."""
    return 0.1 * torch.randn(3, 2, 2, 2, generator=torch.Generator().manual_seed(10 * step + rank)) + 4 * rank


def quantizer(**kwargs) -> VectorQuantizer:
    torch.manual_seed(0)  # the same initial codebook everywhere, as DDP's first broadcast makes it
    return VectorQuantizer(6, 2, decay=0.8, **kwargs).train()


def run_rank(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        one_step = quantizer(restart_every=0)
        one_step(batch(rank, 0))
        restarting = quantizer(restart_every=2)
        torch.manual_seed(100 + rank)  # each rank its own random stream, as lit-gen gives them
        for step in range(4):
            restarting(batch(rank, step))
        torch.save({"one_step": one_step.state_dict(), "restarting": restarting.state_dict()},
                   f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_hold_the_same_codebook_and_it_is_the_update_of_both_batches(tmp_path):
    mp.spawn(run_rank, args=(free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    for part in ("one_step", "restarting"):
        for name, value in ranks[0][part].items():
            assert torch.equal(value, ranks[1][part][name]), f"{part}.{name}"
    # the window ending at step 3 restarted its dead codes at encoder outputs of rank 0's batch
    codebook = ranks[0]["restarting"]["codebook"]
    rank0, rank1 = (VectorQuantizer.flatten(batch(r, 3)) for r in (0, 1))
    restarted = [row for row in codebook if (rank0 == row).all(1).any()]
    assert restarted and not any((rank1 == row).all(1).any() for row in codebook)

    alone = quantizer(restart_every=0)
    alone(torch.cat([batch(0, 0), batch(1, 0)]))  # one process, both ranks' batches
    for name, value in alone.state_dict().items():
        assert torch.allclose(ranks[0]["one_step"][name].float(), value.float(), atol=1e-6), name
