"""Recompute a checkpoint's test NLL outside the Trainer, to check what ``metrics.json`` reports."""

from __future__ import annotations

import inspect
from pathlib import Path

import torch

from lit_gen.core.seeds import ExampleGenerators


def split_nll(config_args: list[str], checkpoint: Path, num_batches: int, split: str = "test",
              weights: str = "state_dict") -> float:
    """Mean NLL (nats) of the first ``num_batches`` batches of ``split`` under the checkpoint's weights.

    The model and datamodule are built from the same config as the run (``config_args``: ``--config`` and
    overrides, no subcommand); ``weights`` is the checkpoint entry loaded (``state_dict``: the EMA average
    when the run had one; ``current_model_state``: the raw training weights beside it). Example i of the
    split draws its noise from a generator seeded ``evaluation.seed + i`` (docs/evaluation.md), first for
    the loss as an evaluation step does, then for ``nll``.
    """
    from lit_gen.cli import LitGenCLI

    cli = LitGenCLI(args=config_args, run=False)
    model, data = cli.model.eval(), cli.datamodule
    model.load_state_dict(torch.load(checkpoint, map_location="cpu", weights_only=True)[weights])
    seed = cli.config.evaluation.seed
    loader = data.test_dataloader() if split == "test" else data.val_dataloader()
    takes_noise = "generator" in inspect.signature(model.loss).parameters
    total, count = torch.zeros((), dtype=torch.float64), 0
    with torch.no_grad():
        for (batch, indices), _ in zip(zip(loader, loader.batch_sampler), range(num_batches)):
            x, labels = model.split_batch(batch)
            source = ExampleGenerators(seed, indices)
            if takes_noise:
                model.loss(x, labels, generator=source)
            nats = model.nll(x, labels, **model.eval_nll_kwargs(split), generator=source).nats
            total += nats.double().sum()
            count += nats.numel()
    return float(total / count)
