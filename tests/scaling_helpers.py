"""What the multi-process tests share, and what they put into the processes they launch.

- ``shipped_configs`` / ``tiny_args``: every model config the project ships, and the overrides that make
  one tiny (widths, steps, batch and sample counts) without touching its callbacks or other options.
- ``python -m tests.scaling_helpers COMMANDS.json RESULTS_DIR`` runs several ``lit-gen`` commands in one
  process. Under ``--trainer.strategy=ddp`` the first command's trainer starts the other ranks (Lightning's
  launcher re-executes this same command line with ``LOCAL_RANK`` set) and every later command reuses those
  processes and their process group: a matrix of configs pays Python's start-up (~5 s) once, not per run.
- ``RankDump``: each rank's place in the world and its raw and averaged (EMA) weights, saved to a file.
- ``SignalAt``: sends this process a signal at a global step, as a cluster scheduler would.
- ``RankFailingDigits`` / ``NaNOnRankVAE``: a data error or a NaN loss on one rank only.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import signal
import sys
import time
import traceback
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import Callback, WeightAveraging
from torch import Tensor

from lit_gen.datamodules.digits import DigitsDataModule
from lit_gen.errors import LitGenError
from lit_gen.models.vae import VAE

ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("vae", "autoregressive", "flow", "ebm", "gan", "diffusion", "flow_matching", "latent")

# Per model class: what makes it tiny (only the arguments its constructor takes are passed).
MODEL_TINY: dict[str, dict[str, Any]] = {
    "VAE": {"channels": 8, "latent_dim": 4, "iwae_samples": 2, "val_iwae_samples": 2, "prior_components": 2,
            "num_mixtures": 2},
    "GatedPixelCNN": {"channels": 6, "num_layers": 2, "head_channels": 12, "num_mixtures": 2},  # 6: 3 colours
    "MADE": {"hidden_sizes": [16, 16], "num_mixtures": 2},
    "Glow": {"hidden_channels": 8, "steps_per_scale": 1, "dequantizer_channels": 4},
    "RealNVP": {"hidden_channels": 8, "num_blocks": 1},
    "EBM": {"channels": 8, "buffer_size": 16, "langevin_steps": 2, "val_langevin_steps": 1},
    "GAN": {"latent_dim": 8, "generator_channels": 8, "discriminator_channels": 8},
    "Diffusion": {"num_timesteps": 10, "val_vlb_terms": 4, "backbone.init_args.channels": 8},
    "FlowMatching": {"backbone.init_args.channels": 8, "likelihood_solver": "euler", "likelihood_steps": 2},
    "VQVAE": {"num_codes": 8, "code_dim": 4, "channels": 8, "num_mixtures": 2, "restart_every": 1},
    "VQVAEPixelCNN": {"channels": 4, "num_layers": 2, "head_channels": 8},
    "Autoencoder": {"latent_channels": 2, "channels": 8, "num_mixtures": 2},
    "LatentDiffusion": {"latent_model.init_args.num_timesteps": 10,
                        "latent_model.init_args.backbone.init_args.channels": 8},
}
# A second stage's first stage: the class tiny_first_stage writes for it.
FIRST_STAGES = {"VQVAEPixelCNN": "VQVAE", "LatentDiffusion": "Autoencoder"}
SAMPLER_STEPS = {"Diffusion": 5, "EBM": 2, "FlowMatching": 2}  # sample_kwargs' steps, when the config sets them
PER_PROCESS_BATCH = 4
FAKE_SPLIT = 8  # examples in the fake test / validation splits: one batch on each of 2 processes


def shipped_configs() -> list[Path]:
    """configs/quickstart.yaml and every configs/<family>/*.yaml (the variants included)."""
    return [ROOT / "configs" / "quickstart.yaml",
            *sorted(p for family in FAMILIES for p in (ROOT / "configs" / family).glob("*.yaml"))]


def config_id(config: Path) -> str:
    """``vae/digits``, ``quickstart``: the config's path under configs/, without .yaml."""
    return str(config.relative_to(ROOT / "configs").with_suffix(""))


def callbacks_in(config: Path) -> list[str]:
    """The class paths of the callbacks a config's trainer section lists."""
    trainer = yaml.safe_load(config.read_text()).get("trainer") or {}
    return [c["class_path"] for c in trainer.get("callbacks") or []]


def tiny_args(config: Path, data_root: Path) -> list[str]:
    """Overrides that make ``config`` a few-second run: small widths, sampler steps, batches and sample
    counts, fake data files for (binarized) MNIST / Fashion-MNIST / CIFAR-10. Callbacks, schedules, monitors and every
    other option stay the config's own."""
    cfg = yaml.safe_load(config.read_text())
    model_path = cfg["model"]["class_path"]
    module, _, name = model_path.rpartition(".")
    model_class = getattr(importlib.import_module(module), name)
    accepted = inspect.signature(model_class.__init__).parameters
    init = cfg["model"].get("init_args") or {}
    tiny = MODEL_TINY[model_class.__name__]
    # (a string as itself: jsonargparse keeps the quotes of a JSON string given to a str argument)
    args = [f"--model.init_args.{key}={value if isinstance(value, str) else json.dumps(value)}"
            for key, value in tiny.items()
            if key.split(".")[0] in accepted]
    sample_kwargs = dict(init.get("sample_kwargs") or {})
    if "steps" in sample_kwargs:
        sample_kwargs["steps"] = SAMPLER_STEPS[model_class.__name__]
        args.append(f"--model.init_args.sample_kwargs={json.dumps(sample_kwargs)}")
    data = cfg["data"]["class_path"].rsplit(".", 1)[1]
    if model_class.__name__ in FIRST_STAGES:  # a second stage: a tiny first stage of its data's shape
        first_stage = tiny_first_stage(data, data_root, FIRST_STAGES[model_class.__name__])
        args.append(f"--model.init_args.first_stage={first_stage}")
    # Two chunks of predictions: one for each of 2 processes, and the same two in one process.
    args += [f"--data.init_args.batch_size={PER_PROCESS_BATCH}",
             f"--data.init_args.eval_batch_size={PER_PROCESS_BATCH}",
             f"--data.init_args.predict_num_samples={2 * PER_PROCESS_BATCH}"]
    if data in ("MNISTDataModule", "FashionMNISTDataModule", "BinarizedMNISTDataModule"):
        args += [f"--data.init_args.root={data_root / 'idx'}", f"--data.init_args.val_size={FAKE_SPLIT}"]
    elif data == "CIFAR10DataModule":
        args += [f"--data.init_args.root={data_root}", f"--data.init_args.val_size={FAKE_SPLIT}"]
    elif data == "Toy2DDataModule":
        args += ["--data.init_args.num_train=64", f"--data.init_args.num_val={FAKE_SPLIT}",
                 f"--data.init_args.num_test={FAKE_SPLIT}"]
    args += ["--evaluation.val_num_samples=4", "--evaluation.test_num_samples=4",
             "--evaluation.sample_batch_size=2", "--evaluation.grid_size=4", "--prediction.grid_size=4"]
    n_critic = int(init.get("n_critic", 1))  # a GAN's generator steps once every n_critic batches
    return [*args, "--trainer.max_epochs=1", f"--trainer.limit_train_batches={max(2, n_critic + 1)}",
            "--trainer.limit_val_batches=1", "--trainer.limit_test_batches=1",
            "--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def tiny_first_stage(data: str, data_root: Path, kind: str = "VQVAE") -> Path:
    """A second stage's first stage for the datamodule ``data``: a tiny, untrained ``kind`` (VQVAE or
    Autoencoder) of its data's shape, written once under ``data_root`` (seeded: the same file for the
    2-process and the 1-process runs)."""
    from lit_gen.models import latent
    from tests.models.latent.helpers import save_first_stage

    path = data_root / "first_stage" / (f"{data}.ckpt" if kind == "VQVAE" else f"{kind}-{data}.ckpt")
    if not path.is_file():
        shape, levels, downsamples = ((1, 8, 8), 17, 1) if data == "DigitsDataModule" else ((1, 28, 28), 256, 2)
        with torch.random.fork_rng():  # the caller's random stream is left as it was
            torch.manual_seed(0)
            save_first_stage(getattr(latent, kind)(data_shape=shape, num_levels=levels, num_classes=10,
                                                   num_downsamples=downsamples, **MODEL_TINY[kind]), path)
    return path


def write_fake_data(root: Path) -> Path:
    """MNIST-style IDX files (root/idx) and CIFAR-10 batches (root/cifar-10-batches-py), in their formats."""
    from tests.datamodules.conftest import make_idx_set, write_cifar_batch

    # 60 training images: after the validation split, 6 batches of 4 on each of 2 processes (a GAN with
    # n_critic = 5 takes six).
    make_idx_set(root / "idx", n_train=60, n_test=FAKE_SPLIT)
    rng = np.random.default_rng(0)
    for name, n in [(f"data_batch_{i}", 12) for i in range(1, 6)] + [("test_batch", FAKE_SPLIT)]:
        images = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        write_cifar_batch(root / "cifar-10-batches-py" / name, images, rng.integers(0, 10, n).tolist())
    return root


def callback_arg(class_path: str, **init_args: Any) -> str:
    """A command-line option that appends a callback to the config's own."""
    return "--trainer.callbacks+=" + json.dumps({"class_path": class_path, "init_args": init_args})


def launch_env(**extra: str) -> dict[str, str]:
    """The environment of a launched run: one thread per process, this repository importable, and none of
    the variables of a cluster or a launcher this test itself might run under."""
    cluster = ("LOCAL_RANK", "RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK",
               "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RUN_ID", "PL_GLOBAL_SEED")
    env = {k: v for k, v in os.environ.items() if k not in cluster and not k.startswith("SLURM_")}
    return {**env, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra}


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


class RankDump(Callback):
    """Saves ``<directory>/rank<global rank>.pt`` when the training epoch ends: the rank's world (size, node,
    cluster environment), the step it started training at and the one it ended at, its raw weights and
    the weights of every weight-averaging callback (EMA)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self.start_step: int | None = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.start_step = trainer.global_step

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        averaging = [cb for cb in trainer.callbacks if isinstance(cb, WeightAveraging) and cb._average_model is not None]
        for cb in averaging:
            if hasattr(cb, "follow_until_started"):  # lit-gen's EMA: the current weights until its first update
                cb.follow_until_started(pl_module)
        averaged = [cb._average_model.module.state_dict() for cb in averaging]
        state = {
            "global_rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "node_rank": trainer.node_rank,
            "num_nodes": trainer.num_nodes,
            # what the trainer detected (a single-device strategy does not carry it)
            "cluster_environment": type(trainer._accelerator_connector.cluster_environment).__name__,
            "start_step": self.start_step,
            "global_step": trainer.global_step,
            "raw": {k: v.detach().clone() for k, v in pl_module.state_dict().items()},
            "averaged": [{k: v.detach().clone() for k, v in avg.items()} for avg in averaged],
        }
        Path(self.directory).mkdir(parents=True, exist_ok=True)
        torch.save(state, Path(self.directory) / f"rank{trainer.global_rank}.pt")


class SignalAt(Callback):
    """Sends this process ``signal_name`` once the global step reaches ``step`` (a scheduler's signal)."""

    def __init__(self, signal_name: str, step: int) -> None:
        self.signum = getattr(signal, signal_name)
        self.step = step
        self.sent = False

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if not self.sent and trainer.global_step >= self.step:
            self.sent = True
            signal.raise_signal(self.signum)


class _FailingDataset(torch.utils.data.Dataset):
    """Serves ``after`` batches, then every further batch on ``rank`` raises (as a corrupt file would)."""

    def __init__(self, inner: Any, rank: int, after: int) -> None:
        self.inner, self.rank, self.after, self.batches = inner, rank, after, 0

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int) -> Any:
        return self.inner[index]

    def __getitems__(self, indices: list[int]) -> list[Any]:
        self.batches += 1
        if self.batches > self.after and _rank() == self.rank:
            raise LitGenError(f"training example {indices[0]} is unreadable on rank {self.rank} (injected)")
        return self.inner.__getitems__(indices)


class RankFailingDigits(DigitsDataModule):
    """The digits, whose training data fails on ``fail_rank`` after ``fail_after`` batches."""

    def __init__(self, *, fail_rank: int = 1, fail_after: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.fail_rank, self.fail_after = fail_rank, fail_after

    def split_dataset(self, split: str) -> Any:
        dataset = super().split_dataset(split)
        return _FailingDataset(dataset, self.fail_rank, self.fail_after) if split == "train" else dataset


class NaNOnRankVAE(VAE):
    """A VAE whose training loss turns NaN on ``nan_rank`` from global step ``nan_step`` on."""

    def __init__(self, *, nan_rank: int = 1, nan_step: int = 1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.nan_rank, self.nan_step = nan_rank, nan_step

    def loss(self, x: Tensor, labels: Tensor | None = None, generator: Any = None) -> dict[str, Tensor]:
        out = super().loss(x, labels, generator)
        if self.training and self.global_step >= self.nan_step and _rank() == self.nan_rank:
            out["loss"] = out["loss"] * float("nan")
        return out


def run_commands(commands: list[dict[str, Any]], results: Path) -> None:
    """Each command through ``lit_gen.cli.main``; ``<results>/<name>.rank<r>.json`` holds its exit code."""
    from lit_gen.cli import main

    results.mkdir(parents=True, exist_ok=True)
    for command in commands:
        start = time.perf_counter()
        code, error = 0, None
        try:
            main(command["args"])
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        except Exception:  # noqa: BLE001 -- recorded: the next command runs, a broken config names itself
            code, error = 1, traceback.format_exc()
        record = {"name": command["name"], "code": code, "error": error, "rank": _rank(),
                  "seconds": time.perf_counter() - start}
        (results / f"{command['name']}.rank{record['rank']}.json").write_text(json.dumps(record))
        if not in_step():
            raise SystemExit(f"rank {record['rank']}: the other ranks did not finish {command['name']}")


def in_step(timeout_s: float = 60.0) -> bool:
    """Whether every rank has finished the same command (a command that failed on one rank only leaves the
    others inside it): a barrier that times out instead of waiting forever."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return True
    try:
        dist.monitored_barrier(timeout=timedelta(seconds=timeout_s), wait_all_ranks=True)
    except RuntimeError:
        return False
    return True


if __name__ == "__main__":
    run_commands(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
