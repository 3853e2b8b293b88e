"""Errors that the CLI turns into one clear line and a nonzero exit, and the shared argument checks."""

from __future__ import annotations

import difflib
import inspect
import re
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


# -- one-line messages from jsonargparse's diagnostics ---------------------------------------------------
NOISE = ("Does not validate against any of the Union subtypes", "Subtypes:", "Errors:", "Given value type:",
         "Expected a <class 'NoneType'>")
CLASS_PATH_PROBLEM = "Problem with given class_path"


def compact_parser_message(message: str) -> str:
    """jsonargparse's diagnosis on one line: without the Union bookkeeping, with the value that was given."""
    rows = []
    for raw in message.splitlines():
        text = raw.strip()
        item = text.startswith("- ")
        rows.append((len(raw) - len(raw.lstrip()), item, text[2:].strip() if item else text))
    # Beside a class_path problem (the diagnosis), a Union's other alternatives ("Expected a <class 'bool'>")
    # always fail too: they are noise at that level.
    diagnosed = {indent for indent, item, text in rows if item and text.startswith(CLASS_PATH_PROBLEM)}
    given: list[str] = []
    kept: list[str] = []
    for indent, item, text in rows:
        if text.startswith("Given value:"):
            given.append(text.split(":", 1)[1].strip())
        elif not text or text.startswith(NOISE) or text in kept or (
                item and indent in diagnosed and text.startswith("Expected a ") and "Got value" not in text):
            continue
        elif kept and text.startswith("Expected a ") and kept[-1].startswith("Expected a "):
            kept[-1] += " or " + text[len("Expected a "):]
        else:
            kept.append(text)
    line = " ".join(kept)
    # The innermost plain value (outer ones are jsonargparse's wrappers of the nested option).
    value = next((v for v in given if not v.startswith(("NestedArg(", "Namespace("))), None)
    if value is not None and "Got value" not in line:
        line += f". Got value: {value}"
    return line


def constructor_message(err: BaseException) -> str:
    """Why a configured class could not be built: the innermost cause's message (the constructor's own
    check, or e.g. the import error of a missing package), after the class_path jsonargparse names.

    jsonargparse wraps that cause (``raise ... from``) in Union diagnostics whose error lists keep only the
    first line of each alternative, which for a class_path is "Problem with given class_path 'X':".
    """
    chain = [err]
    while chain[-1].__cause__ is not None and chain[-1].__cause__ not in chain:
        chain.append(chain[-1].__cause__)
    root = chain[-1]
    text = compact_parser_message(str(root)) or type(root).__name__
    paths = re.findall(rf"{CLASS_PATH_PROBLEM} '([^']+)'", "\n".join(str(e) for e in chain))
    if paths and paths[-1] not in text:  # the innermost class that failed
        text = f"{paths[-1]}: {text}"
    return text
