"""The evaluation callback's share of a fit's wall time, at a config's default settings.

Runs ``lit-gen fit --config <config>`` as written (its epochs, its evaluation schedule) and times every
call of the evaluation callback (sampling, grids, Inception features, FID) against the whole fit.
Goal: <= 10 % for the default quickstart run.

    python benchmarks/evaluation_share.py                                   # configs/quickstart.yaml
    python benchmarks/evaluation_share.py --config configs/gan/digits.yaml --max-epochs 20
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import tempfile
import time
from pathlib import Path

import torch
from bench_common import lit_gen_cli, machine_line

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=str(ROOT / "configs" / "quickstart.yaml"))
    parser.add_argument("--max-epochs", type=int, help="cap the config's epochs (the share is per epoch)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from lit_gen.evaluation.callback import GenerativeEvaluation

    spent = []
    original = GenerativeEvaluation.evaluate

    def timed(self, *a, **k):
        start = time.perf_counter()
        try:
            return original(self, *a, **k)
        finally:
            spent.append(time.perf_counter() - start)

    GenerativeEvaluation.evaluate = timed
    extra = [f"--trainer.max_epochs={args.max_epochs}"] if args.max_epochs else []
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        lit_gen_cli(["fit", "--config", args.config, f"--trainer.logger.init_args.save_dir={out}",
                     "--trainer.enable_progress_bar=false", *extra])
        total = time.perf_counter() - start
    share = sum(spent) / total
    print(machine_line(args.threads))
    print(f"{args.config}: fit {total:.1f} s, evaluation callback {sum(spent):.1f} s in {len(spent)} calls "
          f"= {100 * share:.1f} % of the fit (goal <= 10 %: {'ok' if share <= 0.10 else 'MISSED'})")


if __name__ == "__main__":
    main()
