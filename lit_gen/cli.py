"""The ``lit-gen`` command: LightningCLI with lit-gen's defaults, data->model links and short errors.

    lit-gen fit      --config configs/quickstart.yaml
    lit-gen test     --config configs/quickstart.yaml --ckpt_path last
    lit-gen predict  --config configs/quickstart.yaml --ckpt_path best

Model and datamodule are chosen by ``class_path`` (any family with any datamodule). The data's shape,
levels and classes are linked into the model, so they are never typed twice.
"""

from __future__ import annotations

import importlib
import os
import pickle
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from lit_gen.callbacks import InterruptCheckpoint
from lit_gen.datamodules.base import GenerativeDataModule
from lit_gen.errors import CheckpointError, LitGenError
from lit_gen.evaluation.callback import GenerativeEvaluation
from lit_gen.evaluation.writer import SampleWriter
from lit_gen.models import import_families
from lit_gen.models.base import GenerativeModule, qualified_name

CHECKPOINT_ALIASES = ("last", "best")


def find_run_checkpoint(run_root: Path, alias: str) -> Path:
    """``last`` / ``best`` checkpoint of the newest run under ``run_root`` (``<save_dir>/<name>``).

    Runs are the logger's ``version_*`` folders; the newest one that holds a ``last.ckpt`` wins. ``best``
    is read from that run's ModelCheckpoint state (the best model path it recorded).
    """
    candidates = sorted(run_root.glob("version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)
    if not candidates:
        raise CheckpointError(
            f"--ckpt_path {alias}: no run with a last.ckpt under {run_root}/version_*/checkpoints "
            "(train first with 'lit-gen fit' using the same config, or pass a checkpoint file)"
        )
    last = candidates[-1]
    if alias == "last":
        return last
    state = load_checkpoint(last)
    for key, value in state.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint") and value.get("best_model_path"):
            best = Path(value["best_model_path"])
            if best.is_file():
                return best
    raise CheckpointError(f"--ckpt_path best: the run {last.parent.parent} recorded no best checkpoint that exists")


def import_class(class_path: str) -> type:
    """The class a config's ``class_path`` names (full dotted path, as jsonargparse normalises it)."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def load_checkpoint(path: str | os.PathLike, weights_only: bool = True) -> dict[str, Any]:
    """Load a checkpoint on the CPU, turning every way it can be broken into one CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as err:
        if weights_only and "weights_only" in str(err):
            raise CheckpointError(
                f"checkpoint {path} holds pickled objects beyond tensors and plain values; refusing to execute "
                "them (if you trust the file, pass --weights_only false)"
            ) from None
        raise CheckpointError(f"checkpoint {path} is corrupt: {str(err).splitlines()[0]}") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({first})") from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    return state


NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value",
         "Expected a <class 'NoneType'>")


def compact_parser_message(message: str) -> str:
    """jsonargparse's diagnosis without the Union bookkeeping, on one line."""
    lines = [ln.strip().lstrip("- ") for ln in message.splitlines()]
    return " ".join(ln for ln in lines if ln and not any(ln.startswith(n) or n in ln for n in NOISE))


class LitGenArgumentParser(LightningArgumentParser):
    """Parse errors as one short line (plus where to look), not the full usage text."""

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG") or os.environ.get("LIT_GEN_DEBUG"):
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        sys.stderr.write(f"lit-gen: error: {compact_parser_message(message)}\n(see: {prog} --help)\n")
        self.exit(2)


def constructor_message(err: BaseException) -> str:
    """The innermost meaningful line of an error raised while instantiating a configured class."""
    text = str(err)
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("- ") and "Expected a <class 'NoneType'>" not in line:
            return line[2:]
    cause = err.__cause__ or err.__context__
    if cause is not None and cause is not err:
        return constructor_message(cause)
    return text.strip().splitlines()[0] if text.strip() else type(err).__name__


class LitGenCLI(LightningCLI):
    """LightningCLI with the defaults a generative-modelling user expects."""

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        import_families()  # so short class names (e.g. ``class_path: VAE``) resolve
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("seed_everything_default", 1234)
        kwargs.setdefault("auto_configure_optimizers", False)
        trainer_defaults = {
            "logger": {
                "class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                "init_args": {"save_dir": "runs", "name": "lit-gen"},
            },
            "max_epochs": 10,
            "default_root_dir": "runs",
        }
        trainer_defaults.update(kwargs.pop("trainer_defaults", {}) or {})
        kwargs.setdefault("parser_class", LitGenArgumentParser)
        super().__init__(
            GenerativeModule,
            GenerativeDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            trainer_defaults=trainer_defaults,
            args=args,
            run=run,
            **kwargs,
        )

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({
            "checkpoint.monitor": "val/loss",
            "checkpoint.mode": "min",
            "checkpoint.save_last": True,
            "checkpoint.save_top_k": 1,
            "checkpoint.filename": "best-{epoch}-{step}",
        })
        parser.add_lightning_class_args(GenerativeEvaluation, "evaluation")
        parser.add_lightning_class_args(SampleWriter, "prediction")
        for attr in ("data_shape", "num_levels", "num_classes"):
            parser.link_arguments(f"data.{attr}", f"model.init_args.{attr}", apply_on="instantiate")

    def _parse_ckpt_path(self) -> None:
        """Resolve ``last``/``best`` and check the checkpoint before anything is built.

        Unlike LightningCLI's default, hyperparameters in the checkpoint never replace the config: the
        config says which model to build, and a checkpoint of another model is an error, not a switch.
        """
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path:
            return
        if ckpt_path in CHECKPOINT_ALIASES:
            logger = config.trainer.logger
            init = getattr(logger, "init_args", None) if logger not in (None, True, False) else None
            save_dir = Path(getattr(init, "save_dir", None) or config.trainer.default_root_dir or "runs")
            name = getattr(init, "name", None) or "lit-gen"
            ckpt_path = str(find_run_checkpoint(save_dir / name, ckpt_path))
            config.ckpt_path = ckpt_path
            print(f"lit-gen: using checkpoint {ckpt_path}", file=sys.stderr)
        weights_only = config.get("weights_only")
        state = load_checkpoint(ckpt_path, weights_only=weights_only is not False)
        saved = state.get("lit_gen")
        if saved is None:
            raise CheckpointError(f"{ckpt_path} is not a lit-gen checkpoint (it has no 'lit_gen' record)")
        wanted = qualified_name(import_class(config.model.class_path))
        if saved.get("model") != wanted:
            raise CheckpointError(
                f"{ckpt_path} holds a {saved.get('model')} checkpoint, but the config builds {wanted}; "
                "use the config the checkpoint was trained with"
            )

    def instantiate_classes(self) -> None:
        # A constructor's own check (e.g. an unknown likelihood name) reaches us wrapped by jsonargparse
        # in a page of Union diagnostics; keep the constructor's message only.
        try:
            super().instantiate_classes()
        except (ValueError, TypeError) as err:
            raise LitGenError(f"invalid configuration: {constructor_message(err)}") from err

    def instantiate_trainer(self, **kwargs: Any):
        # A rich progress bar by default, unless the user disabled bars or brought their own; a checkpoint
        # on SIGTERM / Ctrl-C always.
        trainer_config = self._get(self.config_init, "trainer", default={})
        callbacks = trainer_config.get("callbacks") or []
        callbacks = callbacks if isinstance(callbacks, list) else [callbacks]
        if trainer_config.get("enable_progress_bar") is not False and not any(
            isinstance(c, ProgressBar) for c in callbacks
        ):
            callbacks.append(RichProgressBar())
        if not any(isinstance(c, InterruptCheckpoint) for c in callbacks):
            callbacks.append(InterruptCheckpoint())
        trainer_config["callbacks"] = callbacks
        trainer = super().instantiate_trainer(**kwargs)
        # Evaluation must sample while an EMA / weight-averaging callback has the averaged weights swapped
        # in: hooks run in list order and WeightAveraging swaps back in its on_validation_epoch_end.
        trainer.callbacks.sort(key=lambda c: 0 if isinstance(c, GenerativeEvaluation) else 1)
        return trainer


def main(args: Any = None) -> None:
    """Console entry point: run the CLI; expected failures end in one line on stderr and exit code 1.

    Set ``LIT_GEN_DEBUG=1`` to see the full traceback instead.
    """
    try:
        LitGenCLI(args=args)
    except (LitGenError, MisconfigurationException) as err:  # the latter: Lightning's own config checks
        if os.environ.get("LIT_GEN_DEBUG"):
            raise
        print(f"lit-gen: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except SIGTERMException:
        print("lit-gen: stopped by SIGTERM; a fit saved last.ckpt first: resume with --ckpt_path last",
              file=sys.stderr)
        raise SystemExit(143) from None
    except KeyboardInterrupt:
        print("lit-gen: interrupted", file=sys.stderr)
        raise SystemExit(130) from None


if __name__ == "__main__":
    main()
