"""Run a function on N real torch.distributed ranks (spawned processes, gloo, file store)."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import queue as queue_mod
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch.distributed as dist


class RankFailure(AssertionError):
    """One or more spawned ranks failed; carries each rank's exception type name and traceback."""

    def __init__(self, failures: dict[int, tuple[str, str]]) -> None:
        self.failures = failures
        super().__init__("\n".join(f"rank {r}: {kind}\n{tb}" for r, (kind, tb) in sorted(failures.items())))


def _entry(rank: int, world: int, store: str, fn: Callable, args: tuple, queue: Any) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=60))
        result = fn(rank, world, *args)
        # plain pickle (not torch's shared-memory reduction): the child may exit before the parent reads
        queue.put((rank, True, pickle.dumps(result), ""))
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        queue.put((rank, False, type(exc).__name__, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


_PRELOAD = ["torch", "torch.distributed", "bytecheckpoint"]


def _forkserver(preload: tuple[str, ...]) -> Any:
    """The forkserver context, with ``preload`` imported in the server once (a slow import such as
    megatron.core is then not paid per rank); a running server without them is restarted."""
    from multiprocessing import forkserver

    ctx = mp.get_context("forkserver")
    if not set(preload) <= set(_PRELOAD):
        _PRELOAD.extend(m for m in preload if m not in _PRELOAD)
        forkserver._forkserver._stop()  # the next start imports the longer list
    ctx.set_forkserver_preload(list(_PRELOAD))
    return ctx


def run_ranks(world: int, fn: Callable, *args: Any, timeout: float = 180.0, preload: tuple[str, ...] = ()) -> list[Any]:
    """Run ``fn(rank, world, *args)`` on ``world`` ranks; return their results in rank order.

    Raises RankFailure with every failed rank's traceback; ranks still alive after ``timeout``
    seconds are killed and reported as hung. ``preload`` names modules to import once in the
    forkserver rather than in every rank.
    """
    ctx = _forkserver(preload)
    queue = ctx.Queue()
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        procs = [ctx.Process(target=_entry, args=(r, world, store, fn, args, queue), daemon=True) for r in range(world)]
        for p in procs:
            p.start()
        results: dict[int, tuple[bool, Any, str]] = {}
        deadline = time.monotonic() + timeout
        while len(results) < world and time.monotonic() < deadline:
            try:
                rank, ok, value, tb = queue.get(timeout=0.5)
                results[rank] = (ok, value, tb)
            except queue_mod.Empty:
                if all(not p.is_alive() for p in procs) and queue.empty():
                    break
        for p in procs:
            p.join(timeout=5)
            if p.is_alive():
                p.kill()
                p.join()
    failures = {r: (v, tb) for r, (ok, v, tb) in results.items() if not ok}
    for r in range(world):
        if r not in results:
            failures[r] = ("NoResult", f"rank {r} exited (code {procs[r].exitcode}) or hung without a result")
    if failures:
        raise RankFailure(failures)
    return [pickle.loads(results[r][1]) for r in range(world)]
