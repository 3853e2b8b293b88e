"""Process-level plumbing every floor may need: random state, collectives, names, the cache, safe writes."""

from __future__ import annotations

import functools
import math
import os
import random
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor


def collect_rng_state() -> dict[str, Any]:
    """The global random state of torch (CPU and CUDA), numpy and Python, as tensors and lists."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Inverse of :func:`collect_rng_state`."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])


@contextmanager
def evaluating(module: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """``module`` in eval mode without autograd for the block, then back in the mode it was in."""
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad():
            yield module
    finally:
        module.train(was_training)


def seed_all(seed: int) -> None:
    """Seed torch, numpy and Python's global streams alike."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def gather_from_ranks(obj: Any) -> list[Any]:
    """``[obj of rank 0, obj of rank 1, ...]``; a collective under torch.distributed."""
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_chunks(
    local: dict[int, Tensor],
    sizes: list[int],
    world_size: int,
    all_gather: Callable[[Tensor], Tensor],
    item_shape: tuple[int, ...],
    device: torch.device | None = None,
) -> Tensor:
    """Concatenate every rank's chunks in chunk order, on every rank.

    ``local`` maps the chunk indices this rank drew to tensors of shape ``(size_i, *F)``. Ranks pad to
    the same number of full-size chunks so one ``all_gather`` collects everything (a rank with no chunk
    still takes part). ``item_shape`` is the shape of one row, float32.
    """
    if not sizes:
        return torch.empty((0, *item_shape), device=device)
    if world_size == 1:
        return torch.cat([local[i].float() for i in range(len(sizes))])
    per_rank = math.ceil(len(sizes) / world_size)
    padded = torch.zeros((per_rank, max(sizes), *item_shape), device=device)
    for slot, index in enumerate(sorted(local)):
        padded[slot, : local[index].shape[0]] = local[index]
    gathered = all_gather(padded)  # (W, per_rank, chunk, *F)
    return torch.cat([gathered[i % world_size, i // world_size, : sizes[i]] for i in range(len(sizes))])


def qualified_name(obj: Any) -> str:
    """``module.QualName`` of an object's class (or of a class)."""
    cls = obj if isinstance(obj, type) else type(obj)
    return f"{cls.__module__}.{cls.__qualname__}"


def describe_factory(factory: Any) -> Any:
    """A plain-data record of a network factory for hyperparameters (checkpoints stay weights-only loadable).

    Under the CLI the factory arrives as its config already; built in Python it is a class or a partial.
    """
    if isinstance(factory, type):
        return {"class_path": qualified_name(factory)}
    if isinstance(factory, functools.partial) and isinstance(factory.func, type):
        return {"class_path": qualified_name(factory.func), "init_args": dict(factory.keywords)}
    return factory if isinstance(factory, (dict, str)) else repr(factory)


def cache_dir() -> Path:
    """lit-gen's cache root: ``$LIT_GEN_CACHE`` if set, else ``~/.cache/lit_gen`` (read on every call)."""
    env = os.environ.get("LIT_GEN_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lit_gen"


def atomic_torch_save(obj: Any, dst: Path) -> None:
    """Write via a temp file in the same directory + os.replace, so readers never see a partial file."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dst)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
