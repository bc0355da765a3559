"""The save protocol.

1. plan (every rank): flatten the state into boxes and plain values. The coordinator picks a fresh
   save id and takes the save's lease. Ranks all-gather a digest of their boxes and their plain
   values; when every digest matches the previous save's, the cached global plan is reused,
   otherwise the boxes are all-gathered and merged into a new global plan (the same on every rank).
2. snapshot (async saves only, every rank): copy the boxes this rank writes into the reusable host
   buffer (device-to-host for CUDA tensors); the call returns here, and 3-4 run in a background thread.
3. write (every rank): write the boxes this rank was assigned into ``data/<save_id>/rank<r>.bin``.
4. commit (coordinator): build the metadata from all ranks' written chunks and commit it under the
   path's commit lock, then remove what it made garbage (see commit.py).
A failure in any phase on any rank raises the same error on every rank; nothing is committed.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import xxhash

from . import __version__
from .async_save import AsyncSave, wait_for_pending_save
from .collectives import Communicator
from .commit import abandon_save, begin_save, commit_save
from .events import STALL, OperationEvents
from .frameworks import FrameworkAdapter
from .metadata import CheckpointMetadata, SavedChunk, TensorEntry, ValueEntry, WriterInfo
from .options import SaveOptions
from .planner import (
    BoxKey,
    GlobalSavePlan,
    LocalSavePlan,
    LocalTensorPlan,
    local_save_plan,
    merge_values,
    plan_tensors,
)
from .snapshot import Snapshot, take_snapshot
from .state import flatten_state
from .storage import Storage
from .writer import WrittenChunk, data_file_name, write_rank_data

log = logging.getLogger(__name__)

#: per process group: the digests of every rank's boxes at the last save, and the plan they gave
_plan_cache: dict[tuple[int, int], tuple[list[str], GlobalSavePlan]] = {}


@dataclass(frozen=True)
class SaveSummary:
    """What a save did, as seen from this rank.

    ``phase_seconds``: ``plan``, ``snapshot`` (async only), ``write``, ``commit``.
    ``stall_seconds``: how long the ``save`` call blocked the caller.
    """

    path: str
    rank: int
    world_size: int
    bytes_written: int
    total_bytes: int
    phase_seconds: dict[str, float] = field(default_factory=dict)
    stall_seconds: float = 0.0
    plan_cached: bool = False

    @property
    def seconds(self) -> float:
        return sum(self.phase_seconds.values())


OnFinish = Callable[[BaseException | None], None]


def run_save(
    storage: Storage,
    state: dict,
    framework: str | None,
    opts: SaveOptions,
    adapter: FrameworkAdapter | None = None,
    on_finish: OnFinish | None = None,
) -> SaveSummary | AsyncSave:
    """Run the protocol; with ``opts.async_save`` return an AsyncSave after the snapshot.

    ``on_finish(error)`` runs on every rank when the save is over (committed: None).
    """
    wait_for_pending_save()
    called = time.perf_counter()
    comm = Communicator(opts.process_group, opts.timeout)
    events = OperationEvents("save", storage.url, comm.rank, opts.step)
    try:
        return _start_save(storage, state, framework, opts, adapter, on_finish, called, comm, events)
    finally:
        events.phase(STALL, time.perf_counter() - called)


def _start_save(storage: Storage, state: dict, framework: str | None, opts: SaveOptions,
                adapter: FrameworkAdapter | None, on_finish: OnFinish | None, called: float,
                comm: Communicator, events: OperationEvents) -> SaveSummary | AsyncSave:
    """Plan; then write and commit, or snapshot and hand writing and committing to a background thread."""
    timings: dict[str, float] = {}
    pieces: dict[BoxKey, torch.Tensor] = {}

    def local_plan() -> LocalSavePlan:
        tensors, values = flatten_state(adapter.save_state(state) if adapter else state)
        pieces.update({(t.path, p.box): p.data for t in tensors for p in t.pieces})
        return local_save_plan(tensors, values, opts.allow_pickle, comm.rank)

    try:
        with events.timed("plan", timings):
            plan, save_id, cached = _global_plan(comm, storage, local_plan)
    except BaseException as exc:
        events.finish(exc)
        if on_finish is not None:
            on_finish(exc)
        raise
    keys = plan.writes[comm.rank]
    protocol = _Protocol(storage, comm, plan, save_id, framework, opts, timings, on_finish, called, cached,
                         events)

    if not opts.async_save:
        return protocol.write_and_commit(pieces, keys)

    start = time.perf_counter()
    snapshot: Snapshot | None = None
    failure: BaseException | None = None
    try:
        snapshot = take_snapshot([(k, pieces[k]) for k in keys], opts.host_buffer_bytes)
    except Exception as exc:  # noqa: BLE001 - reported through the write phase, on every rank
        failure = exc
    timings["snapshot"] = time.perf_counter() - start
    events.phase("snapshot", timings["snapshot"], snapshot.nbytes if snapshot is not None else 0, failure)
    data = dict(pieces)
    order = keys
    if snapshot is not None:
        data.update(snapshot.copies)
        order = [k for k in keys if k in snapshot.copies] + snapshot.live
    live_written = protocol.live_written
    if snapshot is None or not snapshot.live:
        live_written.set()

    def work() -> SaveSummary:
        try:
            return protocol.write_and_commit(data, order, failure)
        finally:
            live_written.set()
            if snapshot is not None:
                snapshot.release()

    handle = AsyncSave(storage.url, work)
    handle._start()
    live_written.wait()  # boxes that did not fit the host buffer are read from the live tensors
    protocol.stall = time.perf_counter() - called
    return handle


class _Protocol:
    """Phases 3-4 of one save (write, commit), run in the caller's thread or in the background."""

    def __init__(self, storage: Storage, comm: Communicator, plan: GlobalSavePlan, save_id: str,
                 framework: str | None, opts: SaveOptions, timings: dict[str, float],
                 on_finish: OnFinish | None, called: float, cached: bool, events: OperationEvents) -> None:
        self.storage, self.comm, self.plan, self.save_id = storage, comm, plan, save_id
        self.framework, self.opts, self.timings, self.on_finish = framework, opts, timings, on_finish
        self.called, self.cached, self.events = called, cached, events
        self.stall: float | None = None
        self.live_written = threading.Event()

    def write_and_commit(self, data: dict[BoxKey, torch.Tensor], keys: list[BoxKey],
                         failure: BaseException | None = None) -> SaveSummary:
        """Write ``keys`` from ``data`` (or fail with ``failure`` in the write phase), then commit."""
        try:
            summary = self._write_and_commit(data, keys, failure)
        except BaseException as exc:
            self.events.finish(exc)
            if self.on_finish is not None:
                self.on_finish(exc)
            raise
        self.events.finish()
        if self.on_finish is not None:
            self.on_finish(None)
        return summary

    def _write_and_commit(self, data: dict[BoxKey, torch.Tensor], keys: list[BoxKey],
                          failure: BaseException | None) -> SaveSummary:
        storage, comm, plan, opts = self.storage, self.comm, self.plan, self.opts
        own_file = data_file_name(self.save_id, comm.rank)

        def write_step() -> list[WrittenChunk]:
            if failure is not None:
                raise failure
            try:
                return write_rank_data(storage, own_file, keys, data, opts.block_size)
            finally:
                self.live_written.set()

        try:
            with self.events.timed("write", self.timings) as phase:
                written = comm.phase("save write", write_step)
                phase.bytes = sum(c.location.length for c in written[comm.rank])
        except BaseException:  # another rank (or this one) failed: remove this rank's file of this save
            abandon_save(storage, [own_file], self.save_id if comm.is_coordinator else None)
            raise

        def commit_step() -> None:
            if not comm.is_coordinator:
                return
            metadata = build_metadata(plan, written, self.framework, comm.world_size, opts.block_size, opts.layout)
            commit_save(storage, self.save_id, metadata.to_json(), metadata.data_files, opts.timeout)

        with self.events.timed("commit", self.timings):
            comm.phase("save commit", commit_step)
        mine = sum(c.location.length for c in written[comm.rank])
        total = sum(c.location.length for chunks in written for c in chunks)
        stall = self.stall if self.stall is not None else time.perf_counter() - self.called
        log.info("saved %s: %d bytes (%d by rank %d) in %.3fs, stall %.3fs", storage.url, total, mine, comm.rank,
                 sum(self.timings.values()), stall)
        return SaveSummary(storage.url, comm.rank, comm.world_size, mine, total, dict(self.timings), stall,
                           self.cached)


def _plan_digest(tensors: tuple[LocalTensorPlan, ...]) -> str:
    return xxhash.xxh3_128_hexdigest(repr(tensors).encode())


def _global_plan(
    comm: Communicator, storage: Storage, local_plan: Callable[[], LocalSavePlan]
) -> tuple[GlobalSavePlan, str, bool]:
    """The global plan (cached when no rank's boxes changed), the save id, and whether it was cached."""
    key = (id(comm.group), comm.world_size)
    cached = _plan_cache.get(key)
    mine: list[str] = []  # the save id, once the coordinator has taken its lease
    local: list[LocalSavePlan] = []

    def step() -> tuple[str, tuple, str | None, tuple | None]:
        local.append(local_plan())
        tensors = local[0].tensors
        if comm.is_coordinator:
            save_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
            begin_save(storage, save_id)
            mine.append(save_id)
        return _plan_digest(tensors), local[0].values, mine[0] if mine else None, None if cached else tensors

    try:
        gathered = comm.phase("save planning", step)
        return _merge_plans(comm, key, cached, gathered, local[0].tensors)
    except BaseException:
        if mine:
            abandon_save(storage, [], mine[0])
        raise


def _merge_plans(
    comm: Communicator, key: tuple[int, int], cached: tuple[list[str], GlobalSavePlan] | None, gathered: list,
    tensors: tuple[LocalTensorPlan, ...],
) -> tuple[GlobalSavePlan, str, bool]:
    save_id = gathered[0][2]
    digests = [g[0] for g in gathered]
    if cached is not None and cached[0] == digests:
        reused = cached[1]
        plan = GlobalSavePlan(reused.tensors, reused.writes, merge_values(reused.tensors, [g[1] for g in gathered]),
                              reused.bytes_per_rank)
        return plan, save_id, True
    if cached is not None:  # some rank's boxes changed: gather them all
        all_tensors = comm.phase("save planning (layout changed)", lambda: tensors)
    else:
        all_tensors = [g[3] for g in gathered]
    specs, writes, load = plan_tensors(all_tensors)
    plan = GlobalSavePlan(specs, writes, merge_values(specs, [g[1] for g in gathered]), load)
    _plan_cache[key] = (digests, plan)
    return plan, save_id, False


def build_metadata(
    plan: GlobalSavePlan,
    written: list[list[WrittenChunk]],
    framework: str | None,
    world_size: int,
    block_size: int,
    layout: dict[str, Any],
) -> CheckpointMetadata:
    chunks: dict[tuple, list[SavedChunk]] = {path: [] for path in plan.tensors}
    for rank_chunks in written:
        for c in rank_chunks:
            chunks[c.path].append(SavedChunk(c.box, c.location, c.hashes))
    tensors = tuple(
        TensorEntry(path, spec.dtype, spec.shape, tuple(sorted(chunks[path], key=lambda c: c.box.offsets)))
        for path, spec in plan.tensors.items()
    )
    values = tuple(ValueEntry(path, encoded) for path, encoded in plan.values.items())
    writer = WriterInfo(
        library="bytecheckpoint",
        library_version=__version__,
        framework=framework,
        world_size=world_size,
        layout={**layout, "bytes_per_rank": [plan.bytes_per_rank[r] for r in range(world_size)]},
    )
    return CheckpointMetadata(writer=writer, block_size=block_size, tensors=tensors, values=values)

