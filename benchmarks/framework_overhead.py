"""Framework overhead: lit-gen `fit` steps vs a hand-written PyTorch loop, same network, optimizer, data, batch.

For each family's digits config (``--dataset`` for the 28x28 ones), the model, datamodule and optimizer
come from the config exactly as ``lit-gen fit`` builds them, twice (the same initial model: seeded by the
config). One copy trains through lit-gen's Trainer (the config's trainer with logging, loss checks and LR
schedule; no validation, no progress bar, no EMA; epoch-end checkpoints included), the other in a
hand-written loop calling the same ``loss`` with the same optimizer, step-wise LR schedule and gradient
clipping (the GAN: the same discriminator and generator updates), each on its own data loader.

The two are interleaved step by step: a callback runs one hand-written step just before each of lit-gen's,
so both see the same machine load within a fraction of a second. (Run back to back, a few seconds apart,
the same step moved by 10-40 % on the shared 2-core VM this was written on, far more than the 5 % to
decide.) A lit-gen step is everything lit-gen does from the end of one step to the end of the next (its
loop, data loading, hooks, logging and epoch-end checkpoint included) minus the hand-written step run in
between; a hand-written step includes loading its batch. Goal: median lit-gen step / median hand-written
step <= 1.05, over ``--steps`` steps after 5 warm-up steps. Also printed: the mean step of each, which adds
the rare slow steps (lit-gen's checkpoint at every epoch end: digits epochs are only ~21 steps long, so
its share there is far above an MNIST epoch's of ~470 steps). ``--device cuda`` and ``--precision
bf16-mixed`` run both on a GPU and under bf16 autocast (run twice for the bf16 / fp32 speed-up).
``--log-every-step`` is the ablation of lit-gen's step logging: every training term through Lightning's
``self.log`` at every step (on_step and on_epoch), as lit-gen logged them before.

    python benchmarks/framework_overhead.py                       # every family, 200 steps each
    python benchmarks/framework_overhead.py --families vae gan --steps 100
    python benchmarks/framework_overhead.py --device cuda --precision bf16-mixed
    python benchmarks/framework_overhead.py --dataset mnist --root /tmp/mnist --device cuda
    python benchmarks/framework_overhead.py --log-every-step        # the logging ablation
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

import torch
from bench_common import lit_gen_cli, machine_line, synchronize

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("vae", "autoregressive", "flow", "ebm", "gan", "diffusion")
WARMUP = 5


def build(run_dir: str, device: str, precision: str, family: str, dataset: str = "digits", root: str | None = None):
    """Model, datamodule and trainer as ``lit-gen fit --config configs/<family>/<dataset>.yaml`` builds them
    (lit-gen's callbacks, TensorBoard logging, epoch-end checkpoints), with no validation, no progress bar
    and no step or epoch limit (the interleaving callback stops it after a number of batches: a GAN's
    global step counts both of its optimizers' steps)."""
    data_root = [f"--data.init_args.root={root}"] if root else []
    return lit_gen_cli(["--config", str(ROOT / "configs" / family / f"{dataset}.yaml"), *data_root,
                        "--trainer.max_steps=-1", "--trainer.max_epochs=-1", "--trainer.limit_val_batches=0",
                        "--trainer.num_sanity_val_steps=0", "--trainer.enable_progress_bar=false",
                        "--trainer.enable_model_summary=false", "--evaluation.every_n_epochs=0",
                        "--checkpoint.monitor=null", f"--trainer.logger.init_args.save_dir={run_dir}",
                        "--trainer.callbacks=[]",  # no EMA: extra work, not overhead
                        f"--trainer.accelerator={'gpu' if device.startswith('cuda') else 'cpu'}",
                        "--trainer.devices=1", f"--trainer.precision={precision}"],
                       run=False)


def epochs(loader):
    """Batches epoch after epoch, each epoch a fresh pass over the loader as a hand-written loop does
    (``itertools.cycle`` would replay the first epoch's cached batches and skip loading them)."""
    while True:
        yield from loader


class PlainLoop:
    """A hand-written training loop with the same network, optimizer, step-wise LR schedule, clipping,
    data and batch size as lit-gen's fit, run one step at a time."""

    def __init__(self, model, datamodule, clip: float | None, device: str, precision: str):
        from lit_gen.models.gan import GAN

        datamodule.setup("fit")
        self.model, self.clip, self.device = model.to(device).train(), clip, device
        self.batches = epochs(datamodule.train_dataloader())
        self.bf16 = precision == "bf16-mixed"
        self.gan = isinstance(model, GAN)
        self.count = 0
        if self.gan:
            self.g_opt = model.generator_optimizer(model.generator.parameters())
            self.d_opt = model.discriminator_optimizer(model.discriminator.parameters())
        else:
            self.opt = model.optimizer_factory(model.parameters())
            step_schedule = model.lr_scheduler_factory is not None and model.lr_scheduler_interval == "step"
            self.scheduler = model.lr_scheduler_factory(self.opt) if step_schedule else None

    def autocast(self):
        device_type = torch.device(self.device).type
        return torch.autocast(device_type, dtype=torch.bfloat16) if self.bf16 else contextlib.nullcontext()

    def step(self) -> None:
        model = self.model
        x, y = next(self.batches)
        x, y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        labels = y if model.conditional else None
        if self.gan:
            with self.autocast():
                d_loss = model.discriminator_terms(x, labels)["loss"]
            self.d_opt.zero_grad()
            d_loss.backward()
            self.d_opt.step()
            if self.count % model.n_critic == 0:  # batch_idx restarts each epoch in lit-gen; equal for n_critic 1
                with self.autocast():
                    g_loss = model.generator_loss(x.shape[0], labels)
                self.g_opt.zero_grad()
                g_loss.backward()
                self.g_opt.step()
        else:
            with self.autocast():
                out = model.loss(x, labels)
            loss = out["loss"] if isinstance(out, dict) else out
            self.opt.zero_grad()
            loss.backward()
            if self.clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), self.clip)
            self.opt.step()
            if self.scheduler is not None:
                self.scheduler.step()
        self.count += 1


def log_every_term_every_step() -> None:
    """The logging ablation: lit-gen's training terms each through ``self.log`` at every step, on_step and
    on_epoch (Lightning then keeps the epoch means; lit-gen's own sums stay empty)."""
    from lit_gen.models.base import GenerativeModule

    def log_terms(self, terms, batch_size):
        for name, value in terms.items():
            self.log(f"train/{name}", value.detach(), prog_bar=name == "loss", on_step=True, on_epoch=True,
                     batch_size=batch_size)

    GenerativeModule.log_train_terms = log_terms


def interleaved_steps(cli, plain: PlainLoop, steps: int, device: str) -> tuple[list[float], list[float]]:
    """Seconds of each lit-gen step and each hand-written step, one of each in turn, warm-up excluded."""
    from lightning.pytorch.callbacks import Callback

    ours, theirs = [], []
    marks = {}

    class Interleave(Callback):
        def on_train_batch_start(self, *args):
            synchronize(device)
            start = time.perf_counter()
            plain.step()
            synchronize(device)
            marks["batch"] = time.perf_counter()
            theirs.append(marks["batch"] - start)
            # lit-gen's work since its last step ended: its loop, data loading, hooks, epoch-end checkpoint
            marks["between"] = start - marks["end"] if "end" in marks else None

        def on_train_batch_end(self, trainer, *args):
            synchronize(device)
            marks["end"] = time.perf_counter()
            if marks["between"] is not None:
                ours.append(marks["between"] + marks["end"] - marks["batch"])
            else:
                theirs.pop()  # no lit-gen time before its first step: drop the pair
            trainer.should_stop = len(ours) >= steps + WARMUP

    cli.trainer.callbacks.append(Interleave())
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    return ours[WARMUP:], theirs[WARMUP:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i] (both loops run there)")
    parser.add_argument("--precision", default="32-true", choices=["32-true", "bf16-mixed"])
    parser.add_argument("--dataset", default="digits", choices=["digits", "mnist", "fashion_mnist"],
                        help="which configs/<family>/<dataset>.yaml (the 28x28 ones need --root)")
    parser.add_argument("--root", default=None, help="data directory of the MNIST / Fashion-MNIST files")
    parser.add_argument("--log-every-step", action="store_true",
                        help="ablation: every training term through self.log at every step")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.log_every_step:
        log_every_term_every_step()

    print(machine_line(args.threads, args.device) + f", precision {args.precision}")
    print(f"configs/<family>/{args.dataset}.yaml, {args.steps} interleaved steps of each after {WARMUP} warm-up "
          "steps" + (", ABLATION: every term through self.log at every step" if args.log_every_step else "") + "\n")
    print(f"{'':<15} {'median step (ms)':^26} {'mean step (ms)':^26}")
    print(f"{'family':<15} {'lit-gen':>8} {'plain':>8} {'ratio':>8} {'lit-gen':>8} {'plain':>8} {'ratio':>8}"
          "   goal: median ratio <= 1.05")
    for family in args.families:
        with tempfile.TemporaryDirectory() as run_dir:
            cli = build(run_dir, args.device, args.precision, family, args.dataset, args.root)
            twin = build(run_dir, args.device, args.precision, family, args.dataset, args.root)
            plain = PlainLoop(twin.model, twin.datamodule, twin.trainer.gradient_clip_val, args.device,
                              args.precision)
            ours, theirs = interleaved_steps(cli, plain, args.steps, args.device)
        median = [statistics.median(t) * 1000 for t in (ours, theirs)]
        mean = [statistics.fmean(t) * 1000 for t in (ours, theirs)]
        print(f"{family:<15} {median[0]:>8.2f} {median[1]:>8.2f} {median[0] / median[1]:>8.3f} {mean[0]:>8.2f} "
              f"{mean[1]:>8.2f} {mean[0] / mean[1]:>8.3f}   {'ok' if median[0] / median[1] <= 1.05 else 'MISSED'}",
              flush=True)


if __name__ == "__main__":
    main()
