"""Sampling speed per family: images per second at batch 64, with each config's own sampler settings.

Speed does not depend on the weights, so models are built from the configs without training (the EBM
samples from its replay buffer as configured). Also times DDIM-50 against DDPM-1000 per image on the MNIST
diffusion config, one batch of each in turn. Goal: DDIM-50 / DDPM-1000 time per image <= 1/15.
On a GPU (the default device when one is visible) ``--bf16`` adds images/s under bf16 autocast and the
bf16 / fp32 speed-up.

    python benchmarks/sampling_speed.py                     # digits configs of every family
    python benchmarks/sampling_speed.py --dataset mnist     # 28x28 configs (no data files needed)
    python benchmarks/sampling_speed.py --dataset mnist --batch 256 --bf16    # on a GPU
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import contextlib
import statistics
import time
from pathlib import Path

import torch
from bench_common import default_device, lit_gen_cli, machine_line, synchronize

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("vae", "autoregressive", "flow", "ebm", "gan", "diffusion")


def build(family: str, dataset: str, device: str):
    cli = lit_gen_cli(["--config", str(ROOT / "configs" / family / f"{dataset}.yaml"),
                       "--trainer.logger=false"], run=False)
    return cli.model.eval().to(device)


@torch.no_grad()
def seconds_per_image(model, batch: int, repeats: int, warmup: bool = True, knobs: dict | None = None,
                      bf16: bool = False) -> float:
    """Median seconds per image of ``model.sample`` with ``knobs`` (default: the config's sample_kwargs),
    optionally under bf16 autocast (what ``precision: bf16-mixed`` runs)."""
    kwargs = model.sample_kwargs if knobs is None else knobs
    device = str(model.device)
    autocast = torch.autocast(model.device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()

    def draw(seed: int) -> None:
        with autocast:
            model.sample(batch, generator=torch.Generator(model.device).manual_seed(seed), **kwargs)
        synchronize(device)

    if warmup:
        draw(0)
    times = []
    for i in range(repeats):
        start = time.perf_counter()
        draw(i + 1)
        times.append((time.perf_counter() - start) / batch)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=["digits", "mnist"])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default=default_device(), help="cpu, cuda, cuda:1 ... (default: a GPU if any)")
    parser.add_argument("--bf16", action="store_true", help="also time bf16 autocast: images/s and the speed-up")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line(args.threads, args.device))
    print(f"configs/<family>/{args.dataset}.yaml, batch {args.batch}, median of {args.repeats}, "
          f"device {args.device}\n")
    print(f"{'family':<15} {'sampler settings':<45} {'images/s':>10}"
          + (f" {'bf16 images/s':>14} {'bf16 / fp32':>11}" if args.bf16 else ""))
    for family in args.families:
        model = build(family, args.dataset, args.device)
        rate = 1 / seconds_per_image(model, args.batch, args.repeats)
        line = f"{family:<15} {str(model.sample_kwargs)[:45]:<45} {rate:>10.1f}"
        if args.bf16:
            rate_bf16 = 1 / seconds_per_image(model, args.batch, args.repeats, bf16=True)
            line += f" {rate_bf16:>14.1f} {rate_bf16 / rate:>10.2f}x"
        print(line, flush=True)

    model = build("diffusion", "mnist", args.device)
    T = model.num_timesteps
    ddim_knobs = {"sampler": "ddim", "steps": 50, "eta": 0.0}
    ddim = seconds_per_image(model, args.batch, 1, knobs=ddim_knobs)  # the first DDIM run is the warm-up
    ddpm = seconds_per_image(model, args.batch, 1, warmup=False, knobs={"sampler": "ddpm"})
    print(f"\ndiffusion (configs/diffusion/mnist.yaml): DDIM-50 {ddim * 1000:.1f} ms/image, DDPM-{T} "
          f"{ddpm * 1000:.1f} ms/image; DDIM / DDPM = 1/{ddpm / ddim:.1f} (goal <= 1/15: "
          f"{'ok' if ddim / ddpm <= 1 / 15 else 'MISSED'})")


if __name__ == "__main__":
    main()
