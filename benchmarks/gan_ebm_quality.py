"""GAN and EBM sample quality vs the factorized per-pixel baseline, on CPU, at a fixed time budget.

For each dataset (digits, Fashion-MNIST) and family (GAN, EBM): build model and data from the shipped
config (configs/<family>/<dataset>.yaml), train for at most ``--minutes`` of wall time (the config's
``max_epochs`` may end it sooner; EMA callbacks of the config are kept, so samples use EMA weights), then
draw N samples with the config's ``sample_kwargs`` and score FID against N training images. The
baseline is :class:`FactorizedCategorical` fitted in closed form (``fit_counts``) on the training split,
sampled at temperature 1. Goal: every family's FID < the baseline's, at the same N.

    python benchmarks/gan_ebm_quality.py          # the full run: 3 min per digits model, 10 per Fashion-MNIST
                                                  # model, N=200 (~32 min on 2 free cores)
    python benchmarks/gan_ebm_quality.py --minutes 0.25 --num 32 --datasets digits   # a smoke check

Writes sample grids (PNG) and results.json under ``--out``; prints a table with the machine and budget.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch
from bench_common import cpu_model, lit_gen_cli

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("digits", "fashion_mnist")
FAMILIES = ("gan", "ebm")
DEFAULT_MINUTES = {"digits": 3.0, "fashion_mnist": 10.0}


def build_from_config(family: str, dataset: str, overrides: list[str]):
    """(model, datamodule, weight-averaging callbacks, the configured trainer) as the config defines them."""
    from lightning.pytorch.callbacks import WeightAveraging

    config = ROOT / "configs" / family / f"{dataset}.yaml"
    cli = lit_gen_cli(["--config", str(config), "--trainer.logger=false", *overrides], run=False)
    averaging = [c for c in cli.trainer.callbacks if isinstance(c, WeightAveraging)]
    return cli.model, cli.datamodule, averaging, cli.trainer


def train(model, datamodule, callbacks, configured, minutes: float) -> dict[str, float]:
    """Fit with the config's max_epochs, gradient clipping and EMA, stopped by a wall-time budget."""
    import lightning as L
    from lightning.pytorch.callbacks import Timer

    timer = Timer(duration={"seconds": minutes * 60})
    trainer = L.Trainer(max_epochs=configured.max_epochs, accelerator="cpu", devices=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        limit_val_batches=0, num_sanity_val_steps=0,
                        gradient_clip_val=configured.gradient_clip_val, callbacks=[*callbacks, timer])
    start = time.perf_counter()
    trainer.fit(model, datamodule=datamodule)
    return {"train_seconds": time.perf_counter() - start, "epochs": trainer.current_epoch,
            "optimizer_steps": trainer.global_step}


def train_images(datamodule, num: int) -> torch.Tensor:
    train = datamodule.split_dataset("train")
    return torch.stack([train[i][0] for i in range(num)])


@torch.no_grad()
def draw(model, num: int, seed: int, chunk: int = 100) -> torch.Tensor:
    """N samples in seeded chunks, with the model's configured sampler knobs (as evaluation draws them)."""
    model.eval()
    parts = []
    for i, start in enumerate(range(0, num, chunk)):
        generator = torch.Generator().manual_seed(seed + i)
        parts.append(model.sample(min(chunk, num - start), generator=generator, **model.sample_kwargs))
    return torch.cat(parts).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--minutes", type=float, default=None,
                        help=f"training wall-time budget per model (default: {DEFAULT_MINUTES})")
    parser.add_argument("--num", type=int, default=200, help="N generated = N real images for FID")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(ROOT / "runs" / "bench_gan_ebm"))
    parser.add_argument("--override", action="append", default=[], metavar="FAMILY:ARG",
                        help="extra CLI argument for one family, e.g. gan:--model.init_args.latent_dim=16")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    import lightning as L

    from lit_gen.evaluation.features import get_inception
    from lit_gen.evaluation.images import save_image_grid
    from lit_gen.evaluation.metrics import fid
    from lit_gen.models.factorized import FactorizedCategorical

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    extractor = get_inception()
    results = []
    for dataset in args.datasets:
        real_feats, baseline_fid = None, None
        for family in args.families:
            L.seed_everything(args.seed, verbose=False)
            overrides = [o.split(":", 1)[1] for o in args.override if o.split(":", 1)[0] == family]
            model, datamodule, callbacks, configured = build_from_config(family, dataset, overrides)
            if real_feats is None:
                real_feats = extractor(train_images(datamodule, args.num))
                baseline = FactorizedCategorical(data_shape=datamodule.data_shape, num_levels=datamodule.num_levels)
                baseline.fit_counts(datamodule.train_dataloader())
                base_samples = baseline.sample(args.num, generator=torch.Generator().manual_seed(args.seed))
                save_image_grid(base_samples[:64], out / f"{dataset}_factorized.png")
                baseline_fid = fid(real_feats, extractor(base_samples))
                print(f"{dataset}: factorized baseline FID {baseline_fid:.1f} (N={args.num})", flush=True)
            minutes = args.minutes if args.minutes is not None else DEFAULT_MINUTES[dataset]
            stats = train(model, datamodule, callbacks, configured, minutes)
            start = time.perf_counter()
            samples = draw(model, args.num, args.seed)
            sample_seconds = (time.perf_counter() - start) / args.num
            save_image_grid(samples[:64], out / f"{dataset}_{family}.png")
            value = fid(real_feats, extractor(samples))
            row = {"dataset": dataset, "family": family, "model": type(model).__name__, "fid": value,
                   "baseline_fid": baseline_fid, "beats_baseline": value < baseline_fid, "n": args.num,
                   "sample_kwargs": model.sample_kwargs, "sample_sec_per_image": sample_seconds,
                   "budget_minutes": minutes, "overrides": overrides, **stats}
            results.append(row)
            print(f"{dataset} {family}: FID {value:.1f} vs baseline {baseline_fid:.1f} "
                  f"({stats['train_seconds']:.0f} s, {stats['epochs']} epochs, {stats['optimizer_steps']} steps)",
                  flush=True)

    machine = {"cpu": cpu_model(), "threads": args.threads, "cores_visible": os.cpu_count(),
               "torch": torch.__version__, "python": sys.version.split()[0]}
    (out / "results.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    print(f"\nmachine: {machine['cpu']}, {args.threads} threads, torch {machine['torch']}; "
          f"FID at N={args.num} generated vs N real (train split)")
    print(f"{'dataset':<14} {'family':<6} {'FID':>8} {'baseline':>9} {'beats':>6} {'budget min':>10} "
          f"{'train s':>8} {'steps':>7}")
    for r in results:
        print(f"{r['dataset']:<14} {r['family']:<6} {r['fid']:>8.1f} {r['baseline_fid']:>9.1f} "
              f"{r['beats_baseline']!s:>6} {r['budget_minutes']:>10g} {r['train_seconds']:>8.0f} "
              f"{r['optimizer_steps']:>7}")
    print(f"grids and results.json in {out}")


if __name__ == "__main__":
    main()
