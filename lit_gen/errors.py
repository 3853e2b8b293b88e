"""Errors that the CLI turns into one clear line and a nonzero exit, and the shared argument checks."""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Iterable
from typing import Any


class LitGenError(Exception):
    """Base class: a user-facing problem whose message alone explains it."""


class DataNotFoundError(LitGenError, FileNotFoundError):
    """A dataset's files are missing; the message names what was expected where."""


class CheckpointError(LitGenError):
    """A checkpoint is missing, corrupt, truncated, or belongs to another model."""


class WeightsNotFoundError(LitGenError, FileNotFoundError):
    """Feature-extractor weights (e.g. FID Inception) could not be resolved."""


class ConfigurationError(LitGenError, ValueError):
    """A constructor argument has a value the class cannot work with; the message names the argument."""


class MissingLabelsError(LitGenError, ValueError):
    """A class-conditional model was called without labels."""


def require_labels(owner: str, labels: Any) -> Any:
    """``labels`` unless they are missing: the one check (and message) every conditional piece uses."""
    if labels is None:
        raise MissingLabelsError(f"a conditional {owner} needs labels")
    return labels


def check_sizes(owner: str, minimum: int = 1, **sizes: Any) -> None:
    """Refuse sizes below ``minimum`` (``None`` passes: it means "the default"), one argument per message.

    Run before a network is built from them: otherwise a negative width surfaces as torch's "negative
    dimension" deep inside a layer, naming neither the argument nor the value given.
    """
    for name, value in sizes.items():
        values = value if isinstance(value, (tuple, list)) else (value,)
        if any(v is not None and v < minimum for v in values):
            what = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            if isinstance(value, (tuple, list)):
                what = "positive integers" if minimum == 1 else f"integers >= {minimum}"
            raise ConfigurationError(f"{owner}: {name} must be {what}, got {value!r}")


#: ``sample`` arguments the evaluation itself passes: never knobs of ``sample_kwargs``.
SAMPLE_PROTOCOL_ARGS = ("self", "num_samples", "labels", "generator")


def sample_knobs(model_class: type) -> tuple[str, ...] | None:
    """The keyword knobs of ``model_class.sample``; ``None`` when it takes any (``**kwargs``)."""
    params = inspect.signature(model_class.sample).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return None
    return tuple(p.name for p in params if p.name not in SAMPLE_PROTOCOL_ARGS
                 and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD))


def check_sample_knobs(model_class: type, names: Iterable[str], source: str = "sample_kwargs") -> None:
    """Refuse knob names ``model_class.sample`` does not take, naming the ones it does.

    Called when the model is built: a typo would otherwise pass until the first evaluation samples,
    after a whole epoch of training, as a TypeError deep in the sampling code.
    """
    knobs = sample_knobs(model_class)
    if knobs is None:
        return
    for name in names:
        if name not in knobs:
            close = difflib.get_close_matches(name, knobs, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ConfigurationError(
                f"{source}: {model_class.__name__}.sample has no knob {name!r}{hint}; "
                f"its knobs are: {', '.join(knobs) or 'none'}"
            )
