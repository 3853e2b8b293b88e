"""Shared fixtures: an isolated cache and run directory per test session, CLI helpers."""

from __future__ import annotations

import os
from pathlib import Path

# Spin-waiting OpenMP threads make tiny ops ~100x slower when another process holds a core.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Real-feature caches of the tests never mix with the user's ~/.cache/lit_gen.

    The converted Inception weights are reused from the user cache when present (converting costs a few
    seconds), but features are cached in a fresh directory so cache hits/misses are what tests expect.
    """
    cache = tmp_path_factory.mktemp("lit_gen_cache")
    user_weights = Path(os.environ.get("LIT_GEN_CACHE", Path.home() / ".cache" / "lit_gen")) / "weights"
    if user_weights.is_dir():
        (cache / "weights").symlink_to(user_weights, target_is_directory=True)
    old = os.environ.get("LIT_GEN_CACHE")
    os.environ["LIT_GEN_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("LIT_GEN_CACHE", None)
    else:
        os.environ["LIT_GEN_CACHE"] = old


def run_cli(args: list[str]) -> int:
    """Run ``lit-gen`` in-process; returns the exit code (0 when it returns normally)."""
    from lit_gen.cli import main

    try:
        main(args)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    return 0


def quiet_trainer_args(run_dir: Path, name: str = "test") -> list[str]:
    """Trainer overrides that keep CLI tests fast, quiet and inside ``run_dir``."""
    return [
        "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.logger.init_args.save_dir={run_dir}",
        f"--trainer.logger.init_args.name={name}",
    ]


# Every family's digits config with overrides that make it tiny: for tests that run each family through
# the CLI (resume, precision, multi-process). Family-specific behaviour is tested under tests/models.
TINY_FAMILIES = {
    "vae": (ROOT / "configs" / "vae" / "digits.yaml",
            ["--model.init_args.channels=8", "--model.init_args.latent_dim=4", "--model.init_args.iwae_samples=3"]),
    "autoregressive": (ROOT / "configs" / "autoregressive" / "digits.yaml",
                       ["--model.init_args.channels=8", "--model.init_args.num_layers=2",
                        "--model.init_args.head_channels=16"]),
    "flow": (ROOT / "configs" / "flow" / "digits.yaml",
             ["--model.init_args.hidden_channels=8", "--model.init_args.steps_per_scale=1"]),
    "diffusion": (ROOT / "configs" / "diffusion" / "digits.yaml",
                  ["--model.init_args.backbone.init_args.channels=8", "--model.init_args.val_vlb=skip",
                   "--model.init_args.num_timesteps=20"]),
    "flow_matching": (ROOT / "configs" / "flow_matching" / "digits.yaml",
                      ["--model.init_args.backbone.init_args.channels=8", "--model.init_args.likelihood_solver=euler",
                       "--model.init_args.likelihood_steps=2", "--model.init_args.sample_kwargs.steps=2"]),
    "gan": (ROOT / "configs" / "gan" / "digits.yaml",
            ["--model.init_args.generator_channels=8", "--model.init_args.discriminator_channels=8"]),
    "ebm": (ROOT / "configs" / "ebm" / "digits.yaml",
            ["--model.init_args.channels=8", "--model.init_args.buffer_size=100",
             "--model.init_args.langevin_steps=3", "--model.init_args.val_langevin_steps=2"]),
}
