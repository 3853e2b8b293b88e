"""Start-up time of the ``lit-gen`` command against the floor every torch CLI pays (importing torch).

Each round runs, one after the other in fresh processes: ``python -c "import torch"``, ``lit-gen --help``,
``lit-gen fit --help`` and ``lit-gen fit --config quickstart --trainer.max_epoch 1`` (a typo, which must be
reported as one line before anything is built). Rounds interleave the four commands, so a change of the
machine's load hits them alike; the table shows medians over the rounds and each command's ratio to the
torch import. Goal: ``--help`` and the typo within 1.5x the torch import.

    python benchmarks/startup.py --rounds 7
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time

from bench_common import cpu_model

COMMANDS = {
    "import torch": [sys.executable, "-c", "import torch"],
    "lit-gen --help": ["lit-gen", "--help"],
    "lit-gen fit --help": ["lit-gen", "fit", "--help"],
    "typo: --trainer.max_epoch": ["lit-gen", "fit", "--config", "quickstart", "--trainer.max_epoch", "1"],
}


def seconds(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False,
                   env={**os.environ, "PYTHONWARNINGS": "ignore"})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if shutil.which("lit-gen") is None:
        raise SystemExit("lit-gen is not on PATH: pip install -e . first")
    for command in COMMANDS.values():  # warm the file cache once
        seconds(command)
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for _ in range(args.rounds):
        for name, command in COMMANDS.items():
            times[name].append(seconds(command))
    floor = statistics.median(times["import torch"])
    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; {args.rounds} interleaved rounds, medians\n")
    print("| command | seconds | x import torch |")
    print("|---|---|---|")
    for name, values in times.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.2f} | {median / floor:.2f} |")


if __name__ == "__main__":
    main()
