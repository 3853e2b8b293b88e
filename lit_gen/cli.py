"""The ``lit-gen`` command: LightningCLI with lit-gen's defaults, data->model links and short errors.

    lit-gen fit      --config configs/quickstart.yaml
    lit-gen test     --config configs/quickstart.yaml --ckpt_path last
    lit-gen predict  --config configs/quickstart.yaml --ckpt_path best

Model and datamodule are chosen by ``class_path`` (any family with any datamodule). The data's shape,
levels and classes are linked into the model, so they are never typed twice.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import json
import logging
import os
import pickle
import re
import shutil
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ProgressBar, RichProgressBar
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from lightning.pytorch.utilities.exceptions import MisconfigurationException, SIGTERMException

from lit_gen.command import DESCRIPTION, SUBCOMMAND_HELP, packaged_config, print_configs
from lit_gen.core.runtime import qualified_name
from lit_gen.datamodules.base import GenerativeDataModule
from lit_gen.distributed import (
    FailureWatch,
    check_launch,
    end_after_lost_rank,
    fail_run,
    lost_another_rank,
    rank_prefix,
)
from lit_gen.errors import (
    CheckpointError,
    LitGenError,
    check_sample_knobs,
    compact_parser_message,
    constructor_message,
)
from lit_gen.evaluation.callback import GenerativeEvaluation
from lit_gen.evaluation.writer import SampleWriter
from lit_gen.lifecycle import BatchNormFromRankZero, InterruptCheckpoint, ModelCheckpoint
from lit_gen.models import import_families
from lit_gen.models.base import GenerativeModule

CHECKPOINT_ALIASES = ("last", "best")
#: Options whose value is a dict of the sampler's knobs: a dict given on the command line is merged into the
#: config's (as the dotted form ``--model.init_args.sample_kwargs.steps=10`` is), not put in its place.
MERGED_DICT_OPTIONS = ("--model.init_args.sample_kwargs", "--model.sample_kwargs")


def _merged_dict_args(option: str, value: str) -> list[str] | None:
    """``--x '{a: 1, b: 2}'`` as ``--x.a=1 --x.b=2`` (None when the value is not a non-empty dict)."""
    import yaml

    try:
        parsed = yaml.safe_load(value)
    except yaml.YAMLError:
        return None
    if not isinstance(parsed, dict) or not parsed:
        return None
    return [f"{option}.{key}={_dotted_value(item)}" for key, item in parsed.items()]


def _dotted_value(item: Any) -> str:
    """A value as the dotted form takes it: strings bare (unless bare they would read as another type)."""
    import yaml

    if isinstance(item, str) and yaml.safe_load(item) == item:
        return item
    return json.dumps(item)


def rewrite_arguments(args: list[str]) -> list[str]:
    """Command-line conveniences, before jsonargparse sees the arguments: ``--config NAME`` of a shipped
    config when no such file exists, and knob dicts merged into the config's."""
    out: list[str] = []
    i = 0
    while i < len(args):
        option, has_value, value = args[i].partition("=")
        if option in ("--config", "-c", *MERGED_DICT_OPTIONS) and (has_value or i + 1 < len(args)):
            if not has_value:
                i, value = i + 1, args[i + 1]
            if option in MERGED_DICT_OPTIONS:
                out += _merged_dict_args(option, value) or [f"{option}={value}"]
            else:
                shipped = None if Path(value).exists() else packaged_config(value)
                out += [option, str(shipped or value)]
        else:
            out.append(args[i])
        i += 1
    return out


# Two Lightning warnings that are false for lit-gen's resumes: the training sampler continues mid-epoch
# from the restored loop state (GenerativeDataModule._resume_position), and a resumed fit writes into its
# own run's checkpoint directory on purpose.
warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
warnings.filterwarnings("ignore", message=r"Checkpoint directory .* exists and is not empty")
# Evaluating a checkpoint of an EMA run needs no averaging state: Lightning's WeightAveraging saves the
# averaged weights as the checkpoint's state_dict, which is what test / validate / predict load.
warnings.filterwarnings("ignore", message="You're using the WeightAveraging callback, but loading a checkpoint")
# Third-party noise: Lightning's own use of a torch API that torch deprecated.
warnings.filterwarnings("ignore", message=r".*LeafSpec.* is deprecated", category=FutureWarning)


def _not_an_advertisement(record: logging.LogRecord) -> bool:
    return "litlogger" not in record.getMessage().lower()


logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_not_an_advertisement)
#: ``--ckpt_path`` value that evaluates the randomly initialised model on purpose; subcommands that need one.
UNTRAINED = "none"
EVALUATING = ("test", "validate")


def run_versions(run_root: Path) -> list[Path]:
    """The runs under ``run_root`` (``<save_dir>/<name>``) that hold a ``last.ckpt``, oldest first.

    Ordered by the logger's version number, never by file times (coarse or equal on some filesystems).
    """
    runs = [p.parent.parent for p in run_root.glob("version_*/checkpoints/last.ckpt")]
    return sorted(runs, key=lambda run: (len(run.name), run.name))


def find_run_checkpoint(run_root: Path, alias: str) -> Path:
    """``last`` / ``best`` checkpoint of the newest run under ``run_root`` (``<save_dir>/<name>``).

    Runs are the logger's ``version_*`` folders; the newest one that holds a ``last.ckpt`` wins (a resumed
    run continues its own version, so the newest is the run trained last). ``best`` is read from that
    run's ModelCheckpoint state (the best model path it recorded over the whole run).
    """
    runs = run_versions(run_root)
    if not runs:
        raise CheckpointError(
            f"--ckpt_path {alias}: no run with a last.ckpt under {run_root}/version_*/checkpoints "
            "(train first with 'lit-gen fit' using the same config, or pass a checkpoint file)"
        )
    last = runs[-1] / "checkpoints" / "last.ckpt"
    if alias == "last":
        return last
    state = load_checkpoint(last)
    for key, value in state.get("callbacks", {}).items():
        if key.startswith("ModelCheckpoint") and value.get("best_model_path"):
            best = Path(value["best_model_path"])
            if best.is_file():
                return best
    raise CheckpointError(f"--ckpt_path best: the run {last.parent.parent} recorded no best checkpoint that exists")


def checkpoint_run_version(ckpt_path: str | os.PathLike, run_root: Path) -> str | None:
    """``version_N`` when the checkpoint lies in ``run_root/version_N/checkpoints/``, else None."""
    path = Path(ckpt_path).resolve()
    if path.parent.name == "checkpoints" and path.parent.parent.parent == run_root.resolve():
        return path.parent.parent.name
    return None


BOOKKEEPING = ("events.out.tfevents.*", "hparams.yaml", "config.yaml")


def remove_if_only_bookkeeping(run: Path) -> None:
    """Delete ``run`` when every file in it is logger bookkeeping (no checkpoint, metric or sample)."""
    if not run.is_dir():
        return
    files = [p for p in run.rglob("*") if p.is_file()]
    if all(any(p.match(pattern) for pattern in BOOKKEEPING) and p.parent == run for p in files):
        shutil.rmtree(run, ignore_errors=True)
        if run.parent.is_dir() and not any(run.parent.iterdir()):
            run.parent.rmdir()


class RunConfigSaver(SaveConfigCallback):
    """``config.yaml`` of the run, written by ``fit`` only: evaluating a checkpoint inside its run (test,
    validate, predict) must not replace the configuration that trained it."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        if stage == "fit":
            super().setup(trainer, pl_module, stage)


def import_class(class_path: str) -> type:
    """The class a config's ``class_path`` names (full dotted path, as jsonargparse normalises it)."""
    module, _, name = class_path.rpartition(".")
    return getattr(importlib.import_module(module), name)


#: How a file of torch.save's legacy (non-zip) format starts: its pickled magic number, without the STOP.
LEGACY_TORCH_HEADER = pickle.dumps(torch.serialization.MAGIC_NUMBER, protocol=2)[:-1]


def written_by_torch_save(path: Path) -> bool:
    """Whether the file has the container torch.save writes (a zip archive, or the legacy header)."""
    with path.open("rb") as f:
        head = f.read(len(LEGACY_TORCH_HEADER))
    return head == LEGACY_TORCH_HEADER or zipfile.is_zipfile(path)


def unpickling_reason(err: BaseException) -> str:
    """The unpickler's own reason, without torch's paragraphs about weights_only."""
    text = str(err)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def load_checkpoint(path: str | os.PathLike, weights_only: bool = True) -> dict[str, Any]:
    """Load a checkpoint on the CPU, turning every way it can be broken into one CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): truncated or corrupt")
    try:
        state = torch.load(path, map_location="cpu", weights_only=weights_only)
    except pickle.UnpicklingError as err:
        # torch says "weights only load failed" for any unreadable pickle, garbage included. Only a file
        # torch.save wrote whose pickle names a class is worth the advice to switch the safety off.
        blocked = re.search(r"GLOBAL (\S+)|allowlisted", str(err))
        if weights_only and blocked and written_by_torch_save(path):
            what = f" ({blocked.group(1)})" if blocked.group(1) else ""
            raise CheckpointError(
                f"checkpoint {path} holds pickled objects beyond tensors and plain values{what}; refusing to "
                "execute them (if you trust the file, pass --weights_only false)"
            ) from None
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a PyTorch checkpoint (unreadable pickle data: "
            f"{unpickling_reason(err)})"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as err:
        first = str(err).split(". ")[0].splitlines()[0] if str(err) else type(err).__name__
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({first})") from None
    if not isinstance(state, dict) or "state_dict" not in state:
        raise CheckpointError(f"{path} is not a Lightning checkpoint (no 'state_dict')")
    return state


def option_suggestion(parser: Any, message: str) -> str:
    """`` (did you mean --x?)`` for an unrecognized option close to one the parser has."""
    match = re.match(r"unrecognized arguments: (--[^\s=]+)", message)
    if not match:
        return ""
    options = [o for o in getattr(parser, "_option_string_actions", {}) if o.startswith("--")]
    close = difflib.get_close_matches(match.group(1), options, n=1, cutoff=0.8)
    return f" (did you mean {close[0]}?)" if close else ""


class LitGenArgumentParser(LightningArgumentParser):
    """Parse errors as one short line (plus where to look), not the full usage text."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # argparse would read `--trainer.max_epoch 2` as `--trainer.max_epochs 2`: a typo must be an error,
        # not a silent expansion. LightningCLI builds every subcommand parser with this class.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str, ex: Exception | None = None):
        if not self.exit_on_error or os.environ.get("JSONARGPARSE_DEBUG") or os.environ.get("LIT_GEN_DEBUG"):
            return super().error(message, ex)
        parser = getattr(ex, "subcommand_parser", None) or self
        prog = parser.prog.replace(" [options]", "")
        line = compact_parser_message(message) + option_suggestion(parser, message)
        sys.stderr.write(f"lit-gen: error: {line}\n(see: {prog} --help)\n")
        self.exit(2)


def _first_line(function: Any) -> str:
    return (inspect.getdoc(function) or "").strip().splitlines()[0] if inspect.getdoc(function) else "\0"


class LitGenCLI(LightningCLI):
    """LightningCLI with the defaults a generative-modelling user expects."""

    def __init__(self, args: Any = None, run: bool = True, **kwargs: Any) -> None:
        import_families()  # so short class names (e.g. ``class_path: VAE``) resolve
        argv = sys.argv[1:] if args is None else args if isinstance(args, list) else []
        # Only the parser of the subcommand asked for is built (each costs the introspection of every
        # class signature); the list of all subcommands is lit_gen.command's.
        self._requested_subcommand = argv[0] if argv and argv[0] in LightningCLI.subcommands() else None
        kwargs.setdefault("save_config_callback", RunConfigSaver)
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
        kwargs["parser_kwargs"] = {"description": DESCRIPTION, **(kwargs.get("parser_kwargs") or {})}
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
        logger = config.trainer.logger
        init = getattr(logger, "init_args", None) if logger not in (None, True, False) else None
        save_dir = Path(getattr(init, "save_dir", None) or config.trainer.default_root_dir or "runs")
        run_root = save_dir / (getattr(init, "name", None) or "lit-gen")
        if ckpt_path in CHECKPOINT_ALIASES:
            ckpt_path = str(find_run_checkpoint(run_root, ckpt_path))
            config.ckpt_path = ckpt_path
            print(f"lit-gen: using checkpoint {ckpt_path}", file=sys.stderr)
        # One run, one directory: a checkpoint of this config's run tree is resumed (fit) or evaluated
        # (test / validate / predict) inside its own version, so the logger's curves continue and
        # ModelCheckpoint keeps its best path and score (it restores them only for the same directory).
        version = checkpoint_run_version(ckpt_path, run_root)
        if version is not None and init is not None and getattr(init, "version", None) is None \
                and "version" in vars(init):
            init.version = version
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
        self.check_sweep_knob()
        # A constructor's own check (e.g. an unknown likelihood name) reaches us wrapped by jsonargparse
        # in a page of Union diagnostics; keep the constructor's message only.
        try:
            super().instantiate_classes()
        except (ValueError, TypeError, ImportError) as err:
            raise LitGenError(f"invalid configuration: {constructor_message(err)}") from err

    def check_sweep_knob(self) -> None:
        """``evaluation.sweep`` varies the model's ``sampling_knob`` (or ``evaluation.sweep_knob``): refuse a
        family whose ``sample`` does not take it before anything is built, not at the end of ``test``."""
        evaluation, model = self._get(self.config, "evaluation"), self._get(self.config, "model")
        if not (evaluation and evaluation.get("sweep") and model and model.get("class_path")):
            return
        model_class = import_class(model.class_path)
        if evaluation.get("sweep_knob"):
            check_sample_knobs(model_class, [evaluation.sweep_knob], "evaluation.sweep_knob")
            return
        knob = getattr(model_class, "sampling_knob", None)
        if knob is None:
            raise LitGenError(f"evaluation.sweep: {model_class.__name__} names no sampling knob to sweep")
        check_sample_knobs(model_class, [knob], f"evaluation.sweep ({model_class.__name__}.sampling_knob)")

    def subcommands(self) -> dict[str, set[str]]:  # type: ignore[override]
        every = LightningCLI.subcommands()
        requested = getattr(self, "_requested_subcommand", None)
        return {requested: every[requested]} if requested in every else every

    def _add_subcommands(self, parser: LightningArgumentParser, **kwargs: Any) -> None:
        # Lightning describes each subcommand by the Trainer method's docstring ("call the model forward
        # function" for predict); say what each does in lit-gen, in its --help and in the main list.
        for name, text in SUBCOMMAND_HELP.items():
            kwargs.setdefault(name, {}).setdefault("description", text)
        super()._add_subcommands(parser, **kwargs)
        action = getattr(parser, "_subcommands_action", None)
        for choice in getattr(action, "_choices_actions", []):
            if choice.dest in SUBCOMMAND_HELP:
                choice.help = SUBCOMMAND_HELP[choice.dest]
        # The group of the Trainer method's own arguments (ckpt_path, ...) carries its whole docstring.
        for name, subparser in self._subcommand_parsers.items():
            for group in subparser._action_groups:
                if (group.title or "").startswith(_first_line(getattr(Trainer, name))):
                    group.title = f"Arguments of Trainer.{name}, which lit-gen {name} calls"

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        if args is None:  # rewritten in place: given a list as well as sys.argv, Lightning warns
            sys.argv[1:] = rewrite_arguments(sys.argv[1:])
        elif isinstance(args, list):
            args = rewrite_arguments(args)
        super().parse_arguments(parser, args)
        # Evaluating without a checkpoint scores random weights: a forgotten --ckpt_path must not pass as
        # a result. Doing it on purpose takes an explicit `--ckpt_path none`.
        subcommand = self.config.get("subcommand")
        if subcommand not in EVALUATING:
            return
        config = self.config[subcommand]
        ckpt_path = config.get("ckpt_path")
        if not ckpt_path:  # None, or an empty string from a shell variable that was not set
            self._subcommand_parsers[subcommand].error(
                f"{subcommand} needs a checkpoint: --ckpt_path last, best or a .ckpt file (to evaluate the "
                f"untrained, randomly initialised model on purpose: --ckpt_path {UNTRAINED})"
            )
        if str(ckpt_path).lower() == UNTRAINED:
            config.ckpt_path = None
            print(f"lit-gen: {subcommand} of the untrained model (--ckpt_path {UNTRAINED})", file=sys.stderr)

    def test(self, **kwargs: Any) -> Any:
        # One table: the evaluation callback prints lit-gen's (kinds, N); Lightning's raw one would repeat it.
        return self.trainer.test(**{**kwargs, "verbose": False})

    def validate(self, **kwargs: Any) -> Any:
        return self.trainer.validate(**{**kwargs, "verbose": False})

    def _run_subcommand(self, subcommand: str) -> None:
        # No command leaves an empty version_* behind: a run directory this command created and that
        # holds nothing but logger bookkeeping (e.g. data missing at setup) is removed when it fails.
        log_dir = getattr(self.trainer.logger, "log_dir", None)  # None without a logger, or fast_dev_run's
        existed = log_dir is None or Path(log_dir).is_dir()
        try:
            super()._run_subcommand(subcommand)
        except BaseException:
            if not existed and self.trainer.is_global_zero:
                remove_if_only_bookkeeping(Path(log_dir))
            raise
        if subcommand == "fit":
            print_fit_summary(self.trainer, self.config[subcommand].get("config"))

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
        callbacks.append(FailureWatch())  # under DDP: a failure on one rank ends every rank in one line
        callbacks.append(BatchNormFromRankZero())  # under DDP: the ranks' running statistics stay rank 0's
        trainer_config["callbacks"] = callbacks
        trainer = super().instantiate_trainer(**kwargs)
        check_launch(trainer, str(trainer_config.get("strategy")))
        # Evaluation must sample while an EMA / weight-averaging callback has the averaged weights swapped
        # in: hooks run in list order and WeightAveraging swaps back in its on_validation_epoch_end.
        # InterruptCheckpoint's end-of-fit save must come before WeightAveraging copies the average into the
        # module at on_train_end; BatchNormFromRankZero's sync before WeightAveraging's update of each batch.
        trainer.callbacks.sort(key=lambda c: 0 if isinstance(c, GenerativeEvaluation)
                               else 1 if isinstance(c, (InterruptCheckpoint, BatchNormFromRankZero)) else 2)
        return trainer


def print_fit_summary(trainer: Any, configs: Any) -> None:
    """Where ``fit`` put its run: directory, best checkpoint with its score, last checkpoint, samples, and
    the command that evaluates it (rank zero only; lines are never wrapped, so paths can be copied)."""
    log_dir = trainer.log_dir  # a collective (a broadcast from rank zero): every rank must ask
    if not trainer.is_global_zero or log_dir is None:
        return
    from rich.console import Console

    run = Path(log_dir)
    callback = trainer.checkpoint_callback
    rows = [("run directory", str(run))]
    best = getattr(callback, "best_model_path", "") if callback is not None else ""
    if best:
        score = callback.best_model_score
        rows.append(("best checkpoint", best + (f" ({callback.monitor} = {float(score):.4g})"
                                               if score is not None else "")))
    last = getattr(callback, "last_model_path", "") if callback is not None else ""
    if last:
        rows.append(("last checkpoint", last))
    if (run / "samples").is_dir():
        rows.append(("samples", str(run / "samples")))
    if best or last:
        config_args = "".join(f" --config {path}" for path in (configs or []))
        rows.append(("evaluate it", f"lit-gen test{config_args} --ckpt_path {'best' if best else 'last'}"))
    console = Console(soft_wrap=True)
    console.print("lit-gen fit: where the run went", style="bold")
    for label, value in rows:
        console.print(f"  {label:<16} {value}", markup=False, highlight=False)


def main(args: Any = None) -> None:
    """Console entry point: run the CLI; expected failures end in one line on stderr and exit code 1.

    ``lit-gen configs`` lists the shipped configs; ``lit-gen evaluate`` scores any two image sets. Set
    ``LIT_GEN_DEBUG=1`` to see the full traceback instead of one line.
    """
    argv = sys.argv[1:] if args is None else list(args)
    try:
        if argv[:1] == ["configs"]:
            print_configs()
            return
        if argv[:1] == ["evaluate"]:
            from lit_gen.evaluation.standalone import main as evaluate

            evaluate(argv[1:])
            return
        LitGenCLI(args=args)
    except (LitGenError, MisconfigurationException) as err:  # the latter: Lightning's own config checks
        if os.environ.get("LIT_GEN_DEBUG"):
            raise
        print(f"lit-gen: error: {rank_prefix()}{err}", file=sys.stderr)
        fail_run(str(err))  # under DDP: the other ranks name this error and stop, instead of hanging
        raise SystemExit(1) from None
    except SIGTERMException:
        if InterruptCheckpoint.last_stop_was_ctrl_c():
            print("lit-gen: interrupted; last.ckpt saved at a batch boundary: resume with --ckpt_path last",
                  file=sys.stderr)
            raise SystemExit(130) from None
        print("lit-gen: stopped by SIGTERM; a fit saved last.ckpt first: resume with --ckpt_path last",
              file=sys.stderr)
        raise SystemExit(143) from None
    except KeyboardInterrupt:
        print("lit-gen: interrupted", file=sys.stderr)
        raise SystemExit(130) from None
    except Exception as err:
        if lost_another_rank(err) and not os.environ.get("LIT_GEN_DEBUG"):
            # Not this rank's error: the backend's traceback would only say that another rank is gone.
            end_after_lost_rank()
            raise SystemExit(1) from None
        fail_run(f"{type(err).__name__}: {err}")  # a bug: its traceback follows, the other ranks stop
        raise


if __name__ == "__main__":
    main()
