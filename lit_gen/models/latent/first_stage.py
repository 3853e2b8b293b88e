"""Finding, checking and rebuilding the frozen first stage that a second stage names.

A second stage's config says ``first_stage: <checkpoint file>`` or ``first_stage: <run>``, where a run is a
logger folder (``<save_dir>/<name>``, as the first stage's config sets them) whose newest
``version_*/checkpoints/last.ckpt`` is taken, looked up as given and then under the second stage's own
logger ``save_dir``; so ``first_stage: vqvae-digits`` finds what ``lit-gen fit`` of the first stage's config
wrote, wherever both commands put their runs.

The checkpoint is read with ``torch.load(weights_only=True)`` and checked before use: a lit-gen checkpoint
of the first-stage class the second stage takes (a :class:`~lit_gen.models.latent.vqvae.VQVAE` unless told
otherwise; an :class:`~lit_gen.models.latent.autoencoder.Autoencoder` for latent diffusion), of data with the
second stage's shape, levels and classes. What the second stage keeps of it (:class:`FirstStageRecord`: the
constructor arguments, the identity and a digest of the weights) goes into the second stage's own checkpoint
beside the weights, so evaluating that checkpoint needs no other file.

:class:`FrozenFirstStage` is that life cycle as a mixin of a second stage: found when built or at setup,
recorded when saved, rebuilt from the record when a checkpoint is loaded.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn

from lit_gen.core.runtime import qualified_name
from lit_gen.errors import CheckpointError, ConfigurationError
from lit_gen.models.latent.vqvae import VQVAE

STATE_PREFIX = "first_stage."
#: Where a second stage's checkpoint keeps its first stage's record.
FIRST_STAGE_KEY = "lit_gen_first_stage"


def newest_last_checkpoint(run: Path) -> Path | None:
    """``run/version_N/checkpoints/last.ckpt`` with the highest N (the logger's numbering, not file times)."""
    found = [p for p in run.glob("version_*/checkpoints/last.ckpt") if p.parts[-3][len("version_"):].isdigit()]
    return max(found, key=lambda p: int(p.parts[-3][len("version_"):]), default=None)


def locate(first_stage: str, save_dir: str | Path | None = None) -> Path | None:
    """The checkpoint file ``first_stage`` names (see the module docstring), or None if there is none."""
    given = Path(first_stage).expanduser()
    candidates = [given] if given.is_absolute() or save_dir is None else [given, Path(save_dir) / given]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
        if candidate.is_dir() and (last := newest_last_checkpoint(candidate)) is not None:
            return last
    return None


def not_found(first_stage: str, save_dir: str | Path | None) -> CheckpointError:
    where = f"{first_stage}" + (f" or {Path(save_dir) / first_stage}" if save_dir is not None else "")
    return CheckpointError(f"first_stage {first_stage!r}: no checkpoint file, and no run with a last.ckpt "
                           f"under {where}/version_*/checkpoints (fit the first stage's config first)")


def weights_digest(state_dict: dict[str, torch.Tensor]) -> str:
    """SHA-256 of the tensors (names, dtypes, shapes, bytes) in name order: which weights these are."""
    digest = hashlib.sha256()
    for name in sorted(state_dict):
        tensor = state_dict[name].detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{tensor.dtype}:{tuple(state_dict[name].shape)}".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


@dataclass
class FirstStageRecord:
    """What a second stage keeps of its first stage: enough to rebuild it without the file."""

    path: str
    hyper_parameters: dict[str, Any]
    identity: dict[str, Any]
    digest: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> FirstStageRecord:
        return cls(**saved)


def constructor_arguments(hyper_parameters: dict[str, Any], kind: type[nn.Module] = VQVAE) -> dict[str, Any]:
    """The saved hyperparameters that the constructors of ``kind`` take (without the CLI's own entries)."""
    accepted: set[str] = set()
    for cls in kind.__mro__:
        if "__init__" in vars(cls):
            accepted |= set(inspect.signature(cls.__init__).parameters) - {"self", "kwargs"}
    out = {k: v for k, v in hyper_parameters.items() if k in accepted}
    out["compile"] = False  # frozen: it runs a few passes per batch, not worth a compilation
    return out


def read(path: Path, expected: dict[str, Any],
         kind: type[nn.Module] = VQVAE) -> tuple[FirstStageRecord, dict[str, torch.Tensor]]:
    """The record and weights of the first-stage checkpoint at ``path``: a checkpoint of a ``kind``, checked
    against ``expected`` (``data_shape``, ``num_levels``, ``num_classes`` of the data the second stage is
    built for)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 -- any unreadable file is the same one-line error
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"first_stage {path}: not a readable checkpoint ({first})") from None
    saved = state.get("lit_gen") if isinstance(state, dict) else None
    if saved is None or "state_dict" not in state:
        raise CheckpointError(f"first_stage {path} is not a lit-gen checkpoint")
    wanted = qualified_name(kind)
    if saved.get("model") != wanted:
        raise CheckpointError(f"first_stage {path} holds a {saved.get('model')} checkpoint; a first stage is a "
                              f"{wanted}")
    for key, value in expected.items():
        if saved.get(key) != value:
            raise CheckpointError(f"first_stage {path} was trained on data with {key}={saved.get(key)!r}, "
                                  f"but this data has {key}={value!r}")
    weights = state["state_dict"]
    record = FirstStageRecord(str(path), constructor_arguments(dict(state.get("hyper_parameters") or {}), kind),
                              dict(saved), weights_digest(weights))
    return record, weights


def build(record: FirstStageRecord, weights: dict[str, torch.Tensor] | None = None,
          kind: type[nn.Module] = VQVAE) -> nn.Module:
    """The frozen ``kind`` of ``record`` (see :meth:`VQVAE.freeze_first_stage`), with ``weights`` when given.

    A plain function rather than code inside the second stage's ``__init__``: Lightning's
    ``save_hyperparameters`` collects the arguments of every ``__init__`` up the call stack, and would
    otherwise give the first stage the second stage's arguments.
    """
    try:
        model = kind(**record.hyper_parameters)
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"first_stage {record.path}: cannot rebuild its {kind.__name__} ({err})") from None
    if weights is not None:
        try:
            model.load_state_dict(weights)
        except CheckpointError as err:
            raise CheckpointError(f"first_stage {record.path}: {err}") from None
    return model.freeze_first_stage()


class FrozenFirstStage:
    """The frozen first stage of a second stage: a mixin listed before
    :class:`~lit_gen.models.base.GenerativeModule`, with the life cycle of the module docstring.

    The second stage calls :meth:`find_first_stage` in its ``__init__`` (after the base's) and implements
    :meth:`attach`, which builds the first stage (:func:`build`) and what the second stage puts on top of it.
    ``first_stage_class`` is the class a first-stage checkpoint must hold.
    """

    first_stage_class: ClassVar[type[nn.Module]] = VQVAE

    def find_first_stage(self, first_stage: str | None) -> None:
        """Keep the name ``first_stage`` and attach what it names when it resolves from here; otherwise the
        first stage comes at setup (looked up under the logger's ``save_dir``) or from the checkpoint being
        loaded (test / predict / resume need only that one)."""
        if not first_stage:
            raise ConfigurationError(f"{type(self).__name__}: first_stage must name the "
                                     f"{self.first_stage_class.__name__} checkpoint (or its run folder) this "
                                     "model is trained on")
        self.first_stage_spec = str(first_stage)
        self.first_stage: nn.Module | None = None
        self.first_stage_record: FirstStageRecord | None = None
        path = locate(self.first_stage_spec)
        if path is not None:
            self.attach(*read(path, self.expected_data(), self.first_stage_class))

    def attach(self, record: FirstStageRecord, weights: dict[str, torch.Tensor] | None) -> None:
        """Build the frozen first stage of ``record`` (with ``weights`` when given) and the second stage on it."""
        raise NotImplementedError(f"{type(self).__name__} must implement attach()")

    def expected_data(self) -> dict[str, Any]:
        """What a first-stage checkpoint must have been trained on: this model's data."""
        return {"data_shape": list(self.data_shape), "num_levels": self.num_levels, "num_classes": self.num_classes}

    def require_first_stage(self) -> nn.Module:
        if self.first_stage is None:
            raise not_found(self.first_stage_spec, self._save_dir())
        return self.first_stage

    def _save_dir(self) -> str | None:
        if self._trainer is None:
            return None
        return getattr(self.trainer.logger, "save_dir", None) or self.trainer.default_root_dir

    def find_under_save_dir(self) -> None:
        """Attach the first stage the name finds from here or under the logger's ``save_dir``, if none is yet."""
        if self.first_stage is None:
            path = locate(self.first_stage_spec, self._save_dir())
            if path is not None:
                self.attach(*read(path, self.expected_data(), self.first_stage_class))

    def configure_callbacks(self) -> Any:
        """The trainer's first call to the model, before any callback's setup: the first stage is found here,
        so that a callback which copies the model at its setup (weight averaging) copies both stages."""
        self.find_under_save_dir()
        return super().configure_callbacks()

    def setup(self, stage: str) -> None:
        self.find_under_save_dir()
        super().setup(stage)

    def configure_optimizers(self) -> Any:
        self.require_first_stage()
        return super().configure_optimizers()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        checkpoint[FIRST_STAGE_KEY] = self.first_stage_record.as_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Rebuild the first stage the checkpoint was trained with (its weights are in the state dict
        loaded next), whatever ``first_stage`` names now."""
        super().on_load_checkpoint(checkpoint)
        saved = checkpoint.get(FIRST_STAGE_KEY)
        if saved is None:
            raise CheckpointError(f"checkpoint has no record of its first stage ({FIRST_STAGE_KEY})")
        record = FirstStageRecord.from_dict(saved)
        current = self.first_stage_record
        if current is not None and current.digest != record.digest:
            rank_zero_warn(f"first_stage {current.path} is not the first stage this checkpoint was trained on "
                           f"({Path(record.path).name}); using the one inside the checkpoint")
        if current is None or current.hyper_parameters != record.hyper_parameters:
            self.attach(record, None)
        self.first_stage_record = record
