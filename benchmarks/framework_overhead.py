"""Framework overhead: lit-gen `fit` steps vs a hand-written PyTorch loop, same network, optimizer, data, batch.

For each family's digits config, the model, datamodule and optimizer come from the config exactly as
``lit-gen fit`` builds them. Two copies of the same initial model then train for ``--steps`` steps:
(a) through lit-gen's Trainer (the config's trainer with logging, loss checks and LR schedule; no
validation, no progress bar, no EMA; epoch-end checkpoints included), (b) in a plain loop calling the
same ``loss`` (the GAN: the same discriminator and generator updates). The two alternate ``--repeats``
times so machine load hits both alike. Goal: <= 1.05 for the step time: the median over steps of one
step's wall time (batch start to the next batch start, data loading included), medians over repeats.
Also printed: the whole window from the 6th batch's start to the last batch's end divided by its steps,
which adds the epoch-end work (lit-gen's checkpoint after every epoch: digits epochs are only ~21 steps
long, so its share there is far above what an MNIST epoch of ~900 steps sees). ``--device cuda`` and
``--precision bf16-mixed`` run both on a GPU and under bf16 autocast (run twice for the bf16 / fp32
speed-up).

    python benchmarks/framework_overhead.py                       # every family, 60 steps x 3 repeats
    python benchmarks/framework_overhead.py --families vae gan --steps 30
    python benchmarks/framework_overhead.py --device cuda --precision bf16-mixed
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import contextlib
import copy
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_common import lit_gen_cli, machine_line, synchronize

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("vae", "autoregressive", "flow", "ebm", "gan", "diffusion")


def build(family: str, steps: int, run_dir: str, device: str, precision: str):
    """Model, datamodule and trainer as ``lit-gen fit --config configs/<family>/digits.yaml`` builds them
    (lit-gen's callbacks, TensorBoard logging, epoch-end checkpoints), limited to ``steps`` training steps
    with no validation and no progress bar."""
    return lit_gen_cli(["--config", str(ROOT / "configs" / family / "digits.yaml"),
                        f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=0",
                        "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
                        "--trainer.enable_model_summary=false", "--evaluation.every_n_epochs=0",
                        "--checkpoint.monitor=null", f"--trainer.logger.init_args.save_dir={run_dir}",
                        "--trainer.callbacks=[]",  # no EMA: extra work, not overhead
                        f"--trainer.accelerator={'gpu' if device.startswith('cuda') else 'cpu'}",
                        "--trainer.devices=1", f"--trainer.precision={precision}"],
                       run=False)


def step_times(marks: list[float], end: float) -> tuple[float, float]:
    """(median seconds of one step, mean seconds per step over the window) from each step's start time
    (warm-up steps excluded) and the end of the last step."""
    window = marks[5:] + [end]
    return statistics.median(b - a for a, b in zip(window[:-1], window[1:])), (end - marks[5]) / len(marks[5:])


def lit_gen_steps(cli, steps: int, device: str) -> tuple[float, float]:
    """Seconds per step of lit-gen's fit (median step, window mean), warm-up steps excluded."""
    from lightning.pytorch.callbacks import Callback

    starts, ends = [], []

    class Clock(Callback):
        def on_train_batch_start(self, *args):
            synchronize(device)
            starts.append(time.perf_counter())

        def on_train_batch_end(self, *args):
            synchronize(device)
            ends.append(time.perf_counter())

    cli.trainer.callbacks.append(Clock())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return step_times(starts, ends[-1])


def epochs(datamodule):
    """Batches epoch after epoch, each epoch a fresh pass over the loader as a hand-written loop does
    (``itertools.cycle`` would replay the first epoch's cached batches and skip loading them)."""
    loader = datamodule.train_dataloader()
    while True:
        yield from loader


def plain_steps(model, datamodule, steps: int, clip: float | None, device: str,
                precision: str) -> tuple[float, float]:
    """Seconds per step (median step, window mean) of a hand-written loop with the same network,
    optimizer, data and batch size."""
    from lit_gen.models.gan import GAN

    model.to(device).train()
    loader = epochs(datamodule)
    bf16 = precision == "bf16-mixed"

    def autocast():
        return torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    if isinstance(model, GAN):
        g_opt = model.generator_optimizer(model.generator.parameters())
        d_opt = model.discriminator_optimizer(model.discriminator.parameters())
    else:
        opt = model.optimizer_factory(model.parameters())
    marks = []
    for _ in range(steps + 5):
        synchronize(device)
        marks.append(time.perf_counter())
        x, y = next(loader)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        labels = y if model.conditional else None
        if isinstance(model, GAN):
            with autocast():
                d_loss = model.discriminator_terms(x, labels)["loss"]
            d_opt.zero_grad()
            d_loss.backward()
            d_opt.step()
            with autocast():
                g_loss = model.generator_loss(x.shape[0], labels)
            g_opt.zero_grad()
            g_loss.backward()
            g_opt.step()
        else:
            with autocast():
                out = model.loss(x, labels)
            loss = out["loss"] if isinstance(out, dict) else out
            opt.zero_grad()
            loss.backward()
            if clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
    synchronize(device)
    return step_times(marks, time.perf_counter())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (both loops run there)")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    print(machine_line(args.threads, args.device) + f", precision {args.precision}")
    print(f"{args.steps} timed steps (after 5 warm-up steps) x {args.repeats} repeats, alternating\n")
    print(f"{'':<15} {'median step (s)':^33} {'window incl. epoch ends (s/step)':^34}")
    print(f"{'family':<15} {'lit-gen':>9} {'plain':>9} {'ratio':>7}  {'lit-gen':>9} {'plain':>9} {'ratio':>7}"
          "   goal: median step ratio <= 1.05")
    for family in args.families:
        timings = {"lit-gen": [], "plain": []}
        with tempfile.TemporaryDirectory() as run_dir:
            for _ in range(args.repeats):
                # seeded by the config: the same initial model
                cli = build(family, args.steps + 5, run_dir, args.device, args.precision)
                plain_model = copy.deepcopy(cli.model)
                timings["lit-gen"].append(lit_gen_steps(cli, args.steps, args.device))
                cli.datamodule.setup("fit")
                timings["plain"].append(plain_steps(plain_model, cli.datamodule, args.steps,
                                                   cli.trainer.gradient_clip_val, args.device, args.precision))
        (ours, ours_window), (plain, plain_window) = (
            tuple(statistics.median(t[i] for t in timings[name]) for i in (0, 1)) for name in ("lit-gen", "plain"))
        print(f"{family:<15} {ours:>9.4f} {plain:>9.4f} {ours / plain:>7.3f}  {ours_window:>9.4f} "
              f"{plain_window:>9.4f} {ours_window / plain_window:>7.3f}   "
              f"{'ok' if ours / plain <= 1.05 else 'MISSED'}", flush=True)


if __name__ == "__main__":
    main()
