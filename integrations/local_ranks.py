"""Run a function on N real torch.distributed ranks on this machine (forkserver processes, gloo, a
file store): what the demos, the Megatron benchmark and the multi-process tests launch."""

from __future__ import annotations

import importlib.util
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


class RankFailure(RuntimeError):
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


def _preload() -> list[str]:
    modules = ["torch", "torch.distributed", "bytecheckpoint"]
    if importlib.util.find_spec("megatron") is not None and importlib.util.find_spec("megatron.core") is not None:
        modules += ["megatron.core", "megatron.core.models.gpt", "megatron.core.optimizer",
                    "integrations.megatron.tiny_gpt"]
    return modules


def forkserver_context() -> mp.context.ForkServerContext:
    """The forkserver context every multi-process test uses.

    The server imports torch, bytecheckpoint (and Megatron-Core with the tiny GPT, where installed)
    once, so a rank does not pay those imports. The list is the same for the whole session: the
    server is never restarted, because stopping it waits for every process it ever forked (they
    hold its "alive" pipe), and a process another test left behind would block that forever.
    """
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_preload())
    return ctx


def run_ranks(world: int, fn: Callable, *args: Any, timeout: float = 180.0) -> list[Any]:
    """Run ``fn(rank, world, *args)`` on ``world`` ranks; return their results in rank order.

    Raises RankFailure with every failed rank's traceback; ranks still alive after ``timeout``
    seconds are killed and reported as hung.
    """
    ctx = forkserver_context()
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
