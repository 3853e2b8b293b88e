"""The ``lit-gen`` entry point: what needs no model answers before torch and Lightning are imported.

``lit-gen``, ``lit-gen --help`` and ``lit-gen configs`` print from here; ``lit-gen evaluate`` goes to the
standalone evaluator; everything else is the Lightning CLI (:mod:`lit_gen.cli`), which builds the full
parser (every option of every class) and so pays for importing torch, Lightning and the families.
"""

from __future__ import annotations

import sys
from pathlib import Path

#: The configs shipped inside the package (``configs/`` of a source checkout links here).
PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"

DESCRIPTION = ("lit-gen: deep generative models (autoregressive, VAE, flow, EBM, GAN, diffusion) behind one "
               "protocol, trained and evaluated by one YAML config.")
SUBCOMMAND_HELP = {
    "fit": "Train a model; checkpoints, sample grids and metrics go to runs/<name>/version_N/.",
    "validate": "Evaluate a checkpoint on the validation split: one table and <run>/eval/<ckpt>/metrics.json.",
    "test": "Evaluate a checkpoint on the test split (NLL, bits/dim, FID, ...): one table and "
            "<run>/eval/<ckpt>/metrics.json.",
    "predict": "Draw seeded samples from a checkpoint: grid, one PNG per sample and samples.npz in "
               "<run>/predict/<ckpt>/.",
}
EXTRA_HELP = {
    "configs": "List the configs shipped with lit-gen (use one by name: --config vae/mnist).",
    "evaluate": "FID, KID, precision/recall of any two image sets (folders, .npz, datasets, statistics).",
}


def packaged_config(name: str) -> Path | None:
    """The shipped config ``name`` names (``quickstart``, ``vae/mnist``, with or without ``.yaml``)."""
    candidate = PACKAGED_CONFIGS / (name if name.endswith((".yaml", ".yml")) else f"{name}.yaml")
    return candidate if candidate.is_file() and PACKAGED_CONFIGS in candidate.resolve().parents else None


def list_packaged_configs() -> list[str]:
    return sorted(str(p.relative_to(PACKAGED_CONFIGS).with_suffix("")) for p in PACKAGED_CONFIGS.rglob("*.yaml"))


def print_help() -> None:
    names = [*SUBCOMMAND_HELP, *EXTRA_HELP]
    print(f"usage: lit-gen [-h] {{{','.join(names)}}} ...\n\n{DESCRIPTION}\n\nsubcommands:")
    for name, text in {**SUBCOMMAND_HELP, **EXTRA_HELP}.items():
        print(f"  {name:<10} {text}")
    print("\nEvery option of a subcommand: lit-gen <subcommand> --help (e.g. lit-gen fit --config quickstart "
          "--help). Start with: lit-gen fit --config quickstart")


def print_configs() -> None:
    """``lit-gen configs``: the shipped configs, each with its model and data."""
    import yaml
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"configs shipped with lit-gen ({PACKAGED_CONFIGS})")
    for column in ("--config", "model", "data"):
        table.add_column(column)
    for name in list_packaged_configs():
        config = yaml.safe_load((PACKAGED_CONFIGS / f"{name}.yaml").read_text()) or {}
        parts = (config.get("model"), config.get("data"))
        table.add_row(name, *(str(p.get("class_path", "")).rsplit(".", 1)[-1] if isinstance(p, dict) else ""
                              for p in parts))
    Console(soft_wrap=True).print(table)
    print("use one with: lit-gen fit --config <name>  (a file of that name in the working directory wins)")


def main(args: list[str] | None = None) -> None:
    argv = sys.argv[1:] if args is None else list(args)
    if not argv or argv[0] in ("-h", "--help"):
        print_help()
        return
    if argv[0] == "configs":
        print_configs()
        return
    from lit_gen.cli import main as cli_main  # torch, Lightning and the families from here on

    cli_main(args)  # None: Lightning reads sys.argv itself (given both, it warns)


if __name__ == "__main__":
    main()
