"""Sampling speed per family: images per second at batch 64, with each config's own sampler settings.

Speed does not depend on the weights, so models are built from the configs without training (the EBM
samples from its replay buffer as configured). Also times DDIM-50 against DDPM-1000 per image on the MNIST
diffusion config, one batch of each in turn. Goal: DDIM-50 / DDPM-1000 time per image <= 1/15.

    python benchmarks/sampling_speed.py                     # digits configs of every family
    python benchmarks/sampling_speed.py --dataset mnist     # 28x28 configs (no data files needed)
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import statistics
import time
from pathlib import Path

import torch
from bench_common import lit_gen_cli, machine_line

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("vae", "autoregressive", "flow", "ebm", "gan", "diffusion")


def build(family: str, dataset: str):
    cli = lit_gen_cli(["--config", str(ROOT / "configs" / family / f"{dataset}.yaml"),
                       "--trainer.logger=false"], run=False)
    return cli.model.eval()


@torch.no_grad()
def seconds_per_image(model, batch: int, repeats: int, warmup: bool = True, knobs: dict | None = None) -> float:
    """Median seconds per image of ``model.sample`` with ``knobs`` (default: the config's sample_kwargs)."""
    kwargs = model.sample_kwargs if knobs is None else knobs
    if warmup:
        model.sample(batch, generator=torch.Generator().manual_seed(0), **kwargs)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        model.sample(batch, generator=torch.Generator().manual_seed(i + 1), **kwargs)
        times.append((time.perf_counter() - start) / batch)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=["digits", "mnist"])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads))
    print(f"configs/<family>/{args.dataset}.yaml, batch {args.batch}, median of {args.repeats}\n")
    print(f"{'family':<15} {'sampler settings':<45} {'images/s':>10}")
    for family in args.families:
        model = build(family, args.dataset)
        sec = seconds_per_image(model, args.batch, args.repeats)
        print(f"{family:<15} {str(model.sample_kwargs)[:45]:<45} {1 / sec:>10.1f}", flush=True)

    model = build("diffusion", "mnist")
    T = model.num_timesteps
    ddim_knobs = {"sampler": "ddim", "steps": 50, "eta": 0.0}
    ddim = seconds_per_image(model, args.batch, 1, knobs=ddim_knobs)  # the first DDIM run is the warm-up
    ddpm = seconds_per_image(model, args.batch, 1, warmup=False, knobs={"sampler": "ddpm"})
    print(f"\ndiffusion (configs/diffusion/mnist.yaml): DDIM-50 {ddim * 1000:.1f} ms/image, DDPM-{T} "
          f"{ddpm * 1000:.1f} ms/image; DDIM / DDPM = 1/{ddpm / ddim:.1f} (goal <= 1/15: "
          f"{'ok' if ddim / ddpm <= 1 / 15 else 'MISSED'})")


if __name__ == "__main__":
    main()
