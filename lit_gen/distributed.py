"""How a multi-process run ends when one process fails, and which launches cannot carry the trainer.

Under DDP a rank that raises (a corrupt file on one node, a NaN on one rank) leaves the others inside a
collective: they wait for it until it exits and then fail with the backend's own traceback ("Connection
closed by peer"). Here every rank ends with one line instead. The failed rank publishes its message in the
process group's key-value store (the TCPStore every rank is connected to); a watcher thread on every other
rank, which can read the store while its main thread is blocked in the collective, prints that rank's line
("rank 0: stopped because rank 1 failed: ...") and counts it as stopped; the failed rank leaves once all
have printed, which fails the collectives the others are blocked in, and they exit quietly. A rank that
fails before the watchers start (in data setup) leaves at once; the others then print their line when
the backend reports it gone.
"""

from __future__ import annotations

import atexit
import json
import pickle
import sys
import threading
import time
from datetime import timedelta
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from lit_gen.errors import LitGenError

FAILURE_KEY = "lit_gen/failure"
STOPPED_KEY = "lit_gen/stopped"
WATCHERS_KEY = "lit_gen/watchers"
#: How long ranks wait for each other at the end of a failed run before leaving regardless.
END_TIMEOUT_S = 30.0
#: What gloo and NCCL say when the process at the other end of a collective is gone.
LOST_PEER_MESSAGES = ("Connection closed by peer", "Connection reset by peer", "Broken pipe",
                      "remote worker crashing", "Connection refused", "NCCL communicator was aborted")


def world() -> tuple[int, int] | None:
    """``(rank, world size)`` of an initialised process group of more than one process, else None."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        return dist.get_rank(), dist.get_world_size()
    return None


def rank_prefix() -> str:
    """``"rank N: "`` in a multi-process run (every rank prints its own line), ``""`` otherwise."""
    place = world()
    return f"rank {place[0]}: " if place else ""


def lost_another_rank(err: BaseException) -> bool:
    """Whether ``err`` is the backend reporting that another process of the run is gone."""
    if world() is None:
        return False
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, torch.distributed.DistError):
            return True
        if isinstance(current, RuntimeError) and any(m in str(current) for m in LOST_PEER_MESSAGES):
            return True
        current = current.__cause__ or current.__context__
    return False


def _store() -> Any:
    try:
        return torch.distributed.distributed_c10d._get_default_store()
    except (RuntimeError, ValueError, AttributeError):
        return None


def every_rank_reaches(key: str, timeout_s: float = 10.0) -> bool:
    """Whether every rank calls this with the same ``key`` within ``timeout_s``; True in one process.

    A count in the store, not a collective: a rank that never gets here (it is waiting inside another
    collective) makes this return False instead of hanging the ones that did.
    """
    place, store = world(), _store()
    if place is None:
        return True
    if store is None:
        return False
    try:
        count = store.add(f"lit_gen/reached/{key}", 1)
        deadline = time.monotonic() + timeout_s
        while count < place[1] and time.monotonic() < deadline:
            time.sleep(0.05)
            count = store.add(f"lit_gen/reached/{key}", 0)
    except (RuntimeError, ValueError):
        return False
    return count >= place[1]


class _Ending:
    """This process's part in ending a failed run: it announces once, and counts itself stopped once."""

    lock = threading.Lock()
    stopped = False
    announced = False
    watching = False
    quit = threading.Event()  # set at interpreter exit: the watcher leaves before the store is destroyed


def _mark_stopped(store: Any) -> None:
    if _Ending.stopped or store is None:
        return
    _Ending.stopped = True
    try:
        store.add(STOPPED_KEY, 1)
    except (RuntimeError, ValueError):
        pass


def _announce(store: Any, line: str) -> None:
    """Print this rank's one line (the first caller only), then count this rank as stopped."""
    with _Ending.lock:
        if _Ending.announced:
            return
        _Ending.announced = True
        print(f"lit-gen: error: {line}", file=sys.stderr, flush=True)
        _mark_stopped(store)


def watch_for_failures(poll_s: float = 0.25) -> None:
    """Start this process's watcher (once): a thread that reads the store while the main thread may be
    blocked inside a collective, and prints this rank's line as soon as another rank has failed."""
    place, store = world(), _store()
    if place is None or store is None or _Ending.watching:
        return
    _Ending.watching = True
    rank = place[0]
    try:
        store.add(WATCHERS_KEY, 1)
    except (RuntimeError, ValueError):
        return

    def watch() -> None:
        while not _Ending.quit.wait(poll_s):
            try:
                if not store.check([FAILURE_KEY]):
                    continue
                failure = json.loads(store.get(FAILURE_KEY))
            except (RuntimeError, ValueError):
                return  # the store's host has left: the run is over
            if failure["rank"] != rank and not _Ending.stopped:
                reason = f"rank {failure['rank']} failed: {failure['message']}"
                _announce(store, f"rank {rank}: stopped because {reason}")
            return

    thread = threading.Thread(target=watch, name="lit-gen-failure-watch", daemon=True)
    thread.start()

    def stop_watching() -> None:
        # Before the process group's own exit handler (registered earlier, so run later) destroys the
        # store: a thread still inside a store call then would abort the process at exit.
        _Ending.quit.set()
        thread.join(timeout=5)

    atexit.register(stop_watching)


class FailureWatch(Callback):
    """Starts :func:`watch_for_failures` on every rank once the process group is up (no-op in one process)."""

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        watch_for_failures()


def fail_run(message: str) -> None:
    """This rank failed with ``message`` (its line is printed already): publish it for the other ranks,
    and wait until they have printed theirs, so that rank 0's store, and its terminal, outlive them."""
    place, store = world(), _store()
    if place is None or store is None:
        return
    with _Ending.lock:
        _Ending.announced = True  # its own line is its announcement
        try:  # the first failure is the one the others name
            store.compare_set(FAILURE_KEY, "", json.dumps({"rank": place[0], "message": message}))
        except (RuntimeError, ValueError):
            return
        _mark_stopped(store)
    try:
        # Ranks that watch answer within a poll; the others (failed before their watcher started) never do.
        everyone_watches = int(store.add(WATCHERS_KEY, 0)) >= place[1]
        deadline = time.monotonic() + (END_TIMEOUT_S if everyone_watches else 1.0)
        while store.add(STOPPED_KEY, 0) < place[1] and time.monotonic() < deadline:
            time.sleep(0.05)
    except (RuntimeError, ValueError):
        pass


def end_after_lost_rank() -> None:
    """This rank's collective failed because another rank is gone: print its one line (unless its watcher
    did already), naming the failed rank's error when that rank could publish it."""
    place, store = world(), _store()
    assert place is not None, "only for a lost peer of a multi-process run"
    if _Ending.announced:
        return
    reason = "another process of the run ended (its own output says why)"
    if store is not None:
        try:
            store.set_timeout(timedelta(seconds=5))
            failure = json.loads(store.get(FAILURE_KEY))
            reason = f"rank {failure['rank']} failed: {failure['message']}"
        except (RuntimeError, ValueError):
            store = None  # rank 0, the store's host, is gone and said nothing (killed, out of memory)
    _announce(store, f"rank {place[0]}: stopped because {reason}")


def check_launch(trainer: Any, strategy: str) -> None:
    """What would stop the launch inside ``fit`` with a traceback, as one-line errors before it starts."""
    check_cluster_settings(trainer)
    check_picklable_for_spawn(trainer, strategy)


def check_cluster_settings(trainer: Any) -> None:
    """The devices and nodes of the trainer against what the cluster started (SLURM's tasks per node and
    nodes, torchrun's processes per node), with Lightning's own check, which names both."""
    environment = trainer._accelerator_connector.cluster_environment
    if not environment.creates_processes_externally:
        return
    try:
        environment.validate_settings(num_devices=trainer.num_devices, num_nodes=trainer.num_nodes)
    except ValueError as err:
        raise LitGenError(str(err)) from None


def check_picklable_for_spawn(trainer: Any, strategy: str) -> None:
    """``ddp_spawn`` (and the other strategies that start processes with ``spawn`` / ``forkserver``)
    pickle the trainer, callbacks included, into every new process. Lightning's ``EMAWeightAveraging``
    holds a local function and cannot be pickled: refuse before any process starts, in one line."""
    from lightning.pytorch.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    launcher = getattr(trainer.strategy, "launcher", None)
    if not isinstance(launcher, _MultiProcessingLauncher) or launcher._start_method == "fork":
        return
    for callback in trainer.callbacks:
        try:
            pickle.dumps(callback)
        except (pickle.PicklingError, AttributeError, TypeError) as err:
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise LitGenError(
                f"strategy {strategy} pickles the trainer into the processes it starts "
                f"({launcher._start_method!r} start method), and the callback {type(callback).__name__} "
                f"cannot be pickled ({reason}); use --trainer.strategy=ddp, which starts one process per "
                "device without pickling"
            ) from None
