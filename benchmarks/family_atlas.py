"""The family atlas: every family trained on the same data under the same budget, evaluated the same way.

For each family, ``configs/<family>/<dataset>.yaml`` is trained through the lit-gen CLI for at most
``--minutes`` of wall time (``lit-gen fit ... --trainer.max_time``, no validation; the config's epochs
may end it sooner), then ``lit-gen test`` evaluates the weights at the budget's end with one protocol for
all: test NLL / bits/dim with its kind where a likelihood exists (N stated), and FID, KID, precision and recall of N samples against
N training images. The factorized per-pixel baseline is fitted in closed form and evaluated by the same
callback. Writes the seed survey's comparison table with measured numbers as ``atlas_<dataset>.md``, a
figure with a sample grid per family (``atlas_<dataset>.png``) and ``atlas_<dataset>.json``.

    python benchmarks/family_atlas.py                                   # digits, 2 minutes per family
    python benchmarks/family_atlas.py --dataset fashion_mnist --minutes 4
    python benchmarks/family_atlas.py --dataset mnist --root data/mnist --minutes 10
    python benchmarks/family_atlas.py --minutes 0.2 --num 32 --families vae gan   # a smoke check

The two-stage latent families (``latent_vq``: VQ-VAE then its PixelCNN prior; ``latent_diffusion``: the
autoencoder then diffusion of its latents) spend a third of the budget on the first stage and the rest on the
second, which is tested (its checkpoint carries the first stage); steps and parameters are the second stage's
(its parameters include the frozen first stage's).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (see flow_mnist.py)

import argparse
import json
import time
from pathlib import Path

import torch
from bench_common import cpu_model, lit_gen_cli

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("vae", "autoregressive", "flow", "ebm", "gan", "diffusion", "flow_matching", "latent_vq",
            "latent_diffusion")
#: Two-stage families: (first-stage config, second-stage config) under configs/latent/, and the first
#: stage's share of the budget. The second stage is tested; it carries its first stage.
TWO_STAGES = {"latent_vq": ("vqvae_{}.yaml", "vqvae_pixelcnn_{}.yaml"),
              "latent_diffusion": ("autoencoder_{}.yaml", "latent_diffusion_{}.yaml")}
FIRST_STAGE_SHARE = 1 / 3
# The seed survey's columns that are properties of the family, not measurements.
OBJECTIVE = {
    "vae": "ELBO", "autoregressive": "exact log-likelihood", "flow": "exact log-likelihood (change of variables)",
    "ebm": "contrastive divergence (Langevin)", "gan": "adversarial", "diffusion": "denoising (weighted VLB)",
    "flow_matching": "velocity regression (ODE)", "latent_vq": "VQ-VAE, then PixelCNN over codes (bound)",
    "latent_diffusion": "autoencoder, then diffusion of latents", "baseline": "per-pixel histogram",
}


def newest(path: Path, pattern: str) -> Path:
    return max(path.glob(pattern), key=lambda p: p.stat().st_mtime)


def evaluation_args(num: int, nll_batches: int | None, nll_batch_size: int | None) -> list[str]:
    args = [f"--evaluation.test_num_samples={num}", f"--evaluation.num_real={num}", "--evaluation.kid=true",
            f"--evaluation.kid_subset_size={min(100, num // 2)}", "--evaluation.precision_recall=true",
            "--evaluation.grid_size=64", f"--evaluation.sample_batch_size={min(100, num)}"]
    if nll_batches:
        args.append(f"--trainer.limit_test_batches={nll_batches}")
    if nll_batch_size:
        args.append(f"--data.init_args.eval_batch_size={nll_batch_size}")
    return args


def fit_for(config: str, name: str, out: Path, minutes: float, common: list[str]):
    """``lit-gen fit`` of ``config`` for at most ``minutes``; (the CLI, seconds, its final checkpoint)."""
    seconds = int(minutes * 60)
    logger = [f"--trainer.logger.init_args.save_dir={out / 'runs'}", f"--trainer.logger.init_args.name={name}",
              "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    start = time.perf_counter()
    # The budget is for training: no validation (some configs log a costly bound there, e.g. diffusion's
    # full VLB), no sample metrics, nothing to monitor; the weights at the budget's end are tested.
    fitted = lit_gen_cli(["fit", "--config", config, *logger, *common, "--evaluation.every_n_epochs=0",
                          "--checkpoint.monitor=null", "--trainer.limit_val_batches=0",
                          f"--trainer.max_time=00:00:{seconds // 60:02d}:{seconds % 60:02d}"])
    elapsed = time.perf_counter() - start
    # The weights at the budget's end: last.ckpt is written at epoch ends, and the time limit stops
    # training mid-epoch.
    final = Path(fitted.trainer.log_dir) / "checkpoints" / "final.ckpt"
    fitted.trainer.save_checkpoint(final, weights_only=False)
    return fitted, elapsed, final


def run_family(family: str, dataset: str, out: Path, minutes: float, common: list[str],
               evaluation: list[str]) -> dict:
    logger = [f"--trainer.logger.init_args.save_dir={out / 'runs'}", f"--trainer.logger.init_args.name={family}",
              "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]
    if family in TWO_STAGES:  # the first stage for its share of the budget, the second on it for the rest
        first, second = (str(ROOT / "configs" / "latent" / name.format(dataset)) for name in TWO_STAGES[family])
        _, first_seconds, first_final = fit_for(first, f"{family}-first-stage", out, minutes * FIRST_STAGE_SHARE,
                                                common)
        common = [*common, f"--model.init_args.first_stage={first_final}"]
        fitted, train_seconds, final = fit_for(second, family, out, minutes * (1 - FIRST_STAGE_SHARE), common)
        train_seconds += first_seconds
        config = second
    else:
        config = str(ROOT / "configs" / family / f"{dataset}.yaml")
        fitted, train_seconds, final = fit_for(config, family, out, minutes, common)
    params = sum(p.numel() for p in fitted.model.parameters())
    steps, epochs = fitted.trainer.global_step, fitted.trainer.current_epoch
    lit_gen_cli(["test", "--config", config, *logger, *common, *evaluation, f"--ckpt_path={final}"])
    report = json.loads(newest(out / "runs" / family, "version_*/eval/*/metrics.json").read_text())
    grid = newest(out / "runs" / family, "version_*/eval/*/test_*.png")
    return {"family": family, "model": report["model"].rsplit(".", 1)[-1], "params": params,
            "train_seconds": train_seconds, "steps": steps, "epochs": epochs, "metrics": report["metrics"],
            "grid": str(grid)}


def run_baseline(dataset: str, out: Path, common: list[str], evaluation: list[str]) -> dict:
    """FactorizedCategorical fitted in closed form, then tested by the same evaluation callback."""
    config = str(ROOT / "configs" / "vae" / f"{dataset}.yaml")  # for its datamodule and evaluation blocks
    built = lit_gen_cli(["--config", config, *common, *evaluation, "--trainer.enable_progress_bar=false",
                         "--model=lit_gen.models.factorized.FactorizedCategorical",
                         f"--trainer.logger.init_args.save_dir={out / 'runs'}",
                         "--trainer.logger.init_args.name=baseline"], run=False)
    start = time.perf_counter()
    model = built.model.fit_counts(built.datamodule.train_dataloader())
    train_seconds = time.perf_counter() - start
    built.trainer.test(model, datamodule=built.datamodule)
    report = json.loads(newest(out / "runs" / "baseline", "version_*/eval/*/metrics.json").read_text())
    grid = newest(out / "runs" / "baseline", "version_*/eval/*/test_*.png")
    return {"family": "baseline", "model": "FactorizedCategorical", "params": sum(p.numel() for p in model.parameters()),
            "train_seconds": train_seconds, "steps": 0, "epochs": 1, "metrics": report["metrics"], "grid": str(grid)}


def value(row: dict, name: str, fmt: str = "{:.3g}") -> str:
    entry = row["metrics"].get(name)
    return "n/a" if not entry or entry.get("value") is None else fmt.format(entry["value"])


def format_count(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 100_000 else f"{n / 1e3:.1f}k"


def markdown(rows: list[dict], header: str) -> str:
    lines = [header, "",
             "| family | model | objective | test bits/dim (kind, N) | FID | KID | precision | recall | "
             "sampling s/image | parameters | training |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['family']} | failed: {row['error']} |" + " |" * 9)
            continue
        bpd = row["metrics"].get("bpd")
        if bpd and bpd.get("value") is not None:
            likelihood = f"{bpd['value']:.3f} ({bpd['kind']}, {bpd['n']})"
        else:
            likelihood = "not available"
        training = "closed form" if row["family"] == "baseline" else \
            f"{row['train_seconds'] / 60:.1f} min, {row['steps']} steps"
        lines.append(
            f"| {row['family']} | {row['model']} | {OBJECTIVE[row['family']]} | {likelihood} | "
            f"{value(row, 'fid', '{:.1f}')} | {value(row, 'kid_mean', '{:.4f}')} | {value(row, 'precision', '{:.2f}')} | "
            f"{value(row, 'recall', '{:.2f}')} | {value(row, 'sample_sec_per_image', '{:.2g}')} | "
            f"{format_count(row['params'])} | {training} |")
    return "\n".join(lines) + "\n"


def figure(rows: list[dict], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    rows = [row for row in rows if "error" not in row]
    fig, axes = plt.subplots(1, len(rows), figsize=(2.6 * len(rows), 3.3))
    for axis, row in zip(axes if len(rows) > 1 else [axes], rows):
        axis.imshow(mpimg.imread(row["grid"]), cmap="gray")
        axis.set_axis_off()
        bpd = row["metrics"].get("bpd")
        likelihood = f"{bpd['value']:.2f} bpd ({bpd['kind']})" if bpd and bpd.get("value") is not None else "no NLL"
        axis.set_title(f"{row['family']}\nFID {value(row, 'fid', '{:.0f}')} | {likelihood}", fontsize=9)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits", choices=["digits", "mnist", "fashion_mnist"])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--minutes", type=float, default=2.0, help="training wall-time budget per family")
    parser.add_argument("--num", type=int, default=200, help="N generated = N real (train) images for FID etc.")
    parser.add_argument("--nll-batches", type=int, default=None,
                        help="test batches for the NLL (default: all on digits, 1 elsewhere)")
    parser.add_argument("--nll-batch-size", type=int, default=None,
                        help="test batch size (default: the config's on digits, 100 elsewhere)")
    parser.add_argument("--root", type=Path, help="data root for mnist / fashion_mnist (IDX files)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "atlas")
    parser.add_argument("--reuse", action="store_true", help="keep the rows an interrupted run already measured")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    small = args.dataset == "digits"
    nll_batches = args.nll_batches if args.nll_batches is not None else (None if small else 1)
    nll_batch_size = args.nll_batch_size if args.nll_batch_size is not None else (None if small else 100)
    common = [f"--data.init_args.root={args.root}"] if args.root else []
    evaluation = evaluation_args(args.num, nll_batches, nll_batch_size)
    out = args.out / args.dataset
    out.mkdir(parents=True, exist_ok=True)
    machine = f"{cpu_model()}, {os.cpu_count()} cores, {args.threads} torch threads, torch {torch.__version__}"
    print(f"machine: {machine}; budget {args.minutes:g} min per family; N = {args.num}", flush=True)

    def measured(family: str, run) -> dict:
        """A family's row, saved as soon as it is measured; with --reuse, an earlier run's row is kept."""
        path = out / "rows" / f"{family}.json"
        if args.reuse and path.is_file():
            return json.loads(path.read_text())
        try:
            row = run()
        except Exception as error:  # one family's failure is a row of the atlas, not the end of it
            message = " ".join(str(error).split())[:200]
            print(f"{family} FAILED: {type(error).__name__}: {message}", flush=True)
            return {"family": family, "error": f"{type(error).__name__}: {message}"}  # not saved: --reuse retries
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(row, indent=2))
        return row

    rows = [measured("baseline", lambda: run_baseline(args.dataset, out, common, evaluation))]
    for family in args.families:
        rows.append(measured(family, lambda: run_family(family, args.dataset, out, args.minutes, common,
                                                        evaluation)))
        print(markdown(rows[-1:], f"{family} done").splitlines()[-1], flush=True)

    header = (f"## {args.dataset}: every family, {args.minutes:g} minutes of training each\n\n"
              f"Machine: {machine}. FID / KID / precision / recall: N = {args.num} generated vs {args.num} "
              f"training images (Inception 2015-12-05 pool features). Bits/dim on the test split, N as stated.")
    table = markdown(rows, header)
    (out.parent / f"atlas_{args.dataset}.md").write_text(table)
    (out.parent / f"atlas_{args.dataset}.json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    figure(rows, f"{args.dataset}, {args.minutes:g} CPU minutes per family, FID at N = {args.num}",
           out.parent / f"atlas_{args.dataset}.png")
    print("\n" + table)
    print(f"written: {out.parent / f'atlas_{args.dataset}.md'}, .png, .json")


if __name__ == "__main__":
    main()
