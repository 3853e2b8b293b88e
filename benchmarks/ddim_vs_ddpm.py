"""DDIM-50 vs ancestral DDPM-1000 on one checkpoint: time per image side by side, and FID of each.

Goals: DDIM with 50 steps samples >= 18x faster per image than DDPM with all T = 1000 steps, with an FID
within 20 % of DDPM's (same checkpoint, same N, the same real images: the first N test images). Each DDIM
eta in ``--eta`` gets its own row (eta = 0: deterministic; eta = 1: DDPM-like noise on the 50-step grid).

    python benchmarks/diffusion_mnist.py --root data/mnist --minutes 30        # writes .../final.ckpt
    python benchmarks/ddim_vs_ddpm.py --root data/mnist \
        --ckpt runs/diffusion-mnist-benchmark/version_0/final.ckpt

Both samplers draw the same seeded chunks with the same batch size, one chunk of each in turn, so machine
load hits both alike; times exclude feature extraction.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_common import cpu_model
from diffusion_mnist import build, real_test_features


@torch.no_grad()
def draw_both(model, num: int, batch_size: int,
              samplers: dict[str, dict]) -> dict[str, tuple[torch.Tensor, float]]:
    """Each sampler's ``num`` samples (sample j seeded j, as lit-gen's evaluation) and seconds per image,
    alternating samplers chunk by chunk."""
    from lit_gen.core.requests import SampleRequest, draw_chunk

    model.eval()
    images = {name: [] for name in samplers}
    seconds = dict.fromkeys(samplers, 0.0)
    for chunk in SampleRequest(num, 0, batch_size, model.num_classes):
        for name, kwargs in samplers.items():
            start = time.perf_counter()
            images[name].append(draw_chunk(model, chunk, kwargs).float().cpu())
            seconds[name] += time.perf_counter() - start
    return {name: (torch.cat(images[name]), seconds[name] / num) for name in samplers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="folder with the MNIST IDX files")
    ap.add_argument("--ckpt", type=Path, required=True, help="checkpoint of --config (EMA weights)")
    ap.add_argument("--config", default=str(REPO / "configs" / "diffusion" / "mnist.yaml"))
    ap.add_argument("--num-samples", type=int, default=1000, help="N per sampler, and N first test images")
    ap.add_argument("--batch-size", type=int, default=250)
    ap.add_argument("--ddim-steps", type=int, default=50)
    ap.add_argument("--eta", type=float, nargs="+", default=[0.0, 1.0], help="DDIM eta values, a row each")
    ap.add_argument("--threads", type=int, default=2)
    args, overrides = ap.parse_known_args()  # the rest goes to lit-gen: the checkpoint's run's overrides

    torch.set_num_threads(args.threads)
    from lit_gen.evaluation.features import get_inception
    from lit_gen.evaluation.images import save_image_grid
    from lit_gen.evaluation.metrics import fid

    cli = build(args.config, args.root, REPO / "runs", None, overrides)
    model, datamodule = cli.model, cli.datamodule
    state = torch.load(args.ckpt, map_location="cpu", weights_only=True)
    model.load_state_dict(state["state_dict"])
    num_timesteps = model.num_timesteps
    print(f"machine: {cpu_model()} | {os.cpu_count()} logical cores | load average "
          f"{os.getloadavg()[0]:.1f} | torch {torch.__version__} ({torch.get_num_threads()} threads)")
    print(f"checkpoint: {args.ckpt} | T = {num_timesteps} | N = {args.num_samples} per sampler | "
          f"batch {args.batch_size}")

    ddpm = f"DDPM-{num_timesteps}"
    samplers = {ddpm: {"sampler": "ddpm"}}
    for eta in args.eta:
        samplers[f"DDIM-{args.ddim_steps} eta={eta:g}"] = {"sampler": "ddim", "steps": args.ddim_steps, "eta": eta}
    results = draw_both(model, args.num_samples, args.batch_size, samplers)
    extractor = get_inception()
    real = real_test_features(datamodule, args.num_samples)
    scores = {}
    for name, (images, sec) in results.items():
        scores[name] = fid(real, extractor(images))
        slug = name.lower().replace(" ", "_").replace("=", "")
        save_image_grid(images[:100], args.ckpt.parent / f"samples_{slug}.png")
        print(f"{name:>16s}: {sec * 1000:9.1f} ms per image | FID {scores[name]:8.2f} "
              f"(N = {args.num_samples} vs the first {args.num_samples} test images)")
    mark = lambda ok: "ok" if ok else "MISSED"
    t_ddpm = results[ddpm][1]
    for ddim in list(results)[1:]:
        speedup, rel = t_ddpm / results[ddim][1], abs(scores[ddim] - scores[ddpm]) / scores[ddpm]
        print(f"{ddim}: {speedup:.1f}x faster per image than {ddpm} (goal >= 18x: {mark(speedup >= 18)}); "
              f"FID {100 * rel:.1f} % apart (goal <= 20 %: {mark(rel <= 0.2)})")


if __name__ == "__main__":
    main()
