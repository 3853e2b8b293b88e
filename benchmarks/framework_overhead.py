"""Framework overhead: lit-gen `fit` steps vs a hand-written PyTorch loop, same network, optimizer, data, batch.

For each family's digits config, the model, datamodule and optimizer come from the config exactly as
``lit-gen fit`` builds them. Two copies of the same initial model then train for ``--steps`` steps:
(a) through lit-gen's Trainer (the config's trainer with logging, loss checks and LR schedule; no
validation, no progress bar, no EMA: what a step costs; epoch-end checkpoints are included), (b) in a plain loop calling the same
``loss`` (the GAN: the same discriminator and generator updates). The two alternate ``--repeats`` times so
machine load hits both alike; the ratio of medians is printed. Goal: <= 1.05.

    python benchmarks/framework_overhead.py                       # every family, 60 steps x 3 repeats
    python benchmarks/framework_overhead.py --families vae gan --steps 30
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_common import lit_gen_cli, machine_line

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("vae", "autoregressive", "flow", "ebm", "gan", "diffusion")


def build(family: str, steps: int, run_dir: str):
    """Model, datamodule and trainer as ``lit-gen fit --config configs/<family>/digits.yaml`` builds them
    (lit-gen's callbacks, TensorBoard logging, epoch-end checkpoints), limited to ``steps`` training steps
    with no validation and no progress bar."""
    return lit_gen_cli(["--config", str(ROOT / "configs" / family / "digits.yaml"),
                        f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0",
                        "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
                        "--trainer.enable_model_summary=false", "--evaluation.every_n_epochs=0",
                        "--checkpoint.monitor=null", f"--trainer.logger.init_args.save_dir={run_dir}",
                        "--trainer.callbacks=[]"],  # no EMA: extra work, not overhead
                       run=False)


def lit_gen_steps(cli, steps: int) -> float:
    """Seconds per step of lit-gen's fit, warm-up steps excluded."""
    from lightning.pytorch.callbacks import Callback

    marks = []

    class Clock(Callback):
        def on_train_batch_start(self, *args):
            marks.append(time.perf_counter())

    cli.trainer.callbacks.append(Clock())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    marks.append(time.perf_counter())
    return (marks[-1] - marks[5]) / (len(marks) - 6)  # from the 6th batch start to the end of the last


def epochs(datamodule):
    """Batches epoch after epoch, each epoch a fresh pass over the loader as a hand-written loop does
    (``itertools.cycle`` would replay the first epoch's cached batches and skip loading them)."""
    loader = datamodule.train_dataloader()
    while True:
        yield from loader


def plain_steps(model, datamodule, steps: int, clip: float | None) -> float:
    """Seconds per step of a hand-written loop with the same network, optimizer, data and batch size."""
    from lit_gen.models.gan import GAN

    model.train()
    loader = epochs(datamodule)
    if isinstance(model, GAN):
        g_opt = model.generator_optimizer(model.generator.parameters())
        d_opt = model.discriminator_optimizer(model.discriminator.parameters())
    else:
        opt = model.optimizer_factory(model.parameters())
    start = None
    for step in range(steps + 5):
        if step == 5:
            start = time.perf_counter()
        x, y = next(loader)
        labels = y if model.conditional else None
        if isinstance(model, GAN):
            d_loss = model.discriminator_terms(x, labels)["loss"]
            d_opt.zero_grad()
            d_loss.backward()
            d_opt.step()
            g_loss = model.generator_loss(x.shape[0], labels)
            g_opt.zero_grad()
            g_loss.backward()
            g_opt.step()
        else:
            out = model.loss(x, labels)
            loss = out["loss"] if isinstance(out, dict) else out
            opt.zero_grad()
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(machine_line(args.threads))
    print(f"{args.steps} timed steps (after 5 warm-up steps) x {args.repeats} repeats, alternating\n")
    print(f"{'family':<15} {'lit-gen s/step':>15} {'plain s/step':>13} {'ratio':>7}  goal <= 1.05")
    ratios = {}
    for family in args.families:
        timings = {"lit-gen": [], "plain": []}
        with tempfile.TemporaryDirectory() as run_dir:
            for _ in range(args.repeats):
                cli = build(family, args.steps + 5, run_dir)  # seeded by the config: the same initial model
                plain_model = copy.deepcopy(cli.model)
                timings["lit-gen"].append(lit_gen_steps(cli, args.steps))
                cli.datamodule.setup("fit")
                timings["plain"].append(plain_steps(plain_model, cli.datamodule, args.steps,
                                                   cli.trainer.gradient_clip_val))
        ours, plain = statistics.median(timings["lit-gen"]), statistics.median(timings["plain"])
        ratios[family] = ours / plain
        print(f"{family:<15} {ours:>15.4f} {plain:>13.4f} {ours / plain:>7.3f}  "
              f"{'ok' if ours / plain <= 1.05 else 'MISSED'}", flush=True)


if __name__ == "__main__":
    main()
