"""The save protocol.

1. plan (every rank): flatten the state into boxes and plain values; the coordinator also picks
   a fresh save id. Local plans are all-gathered and merged into the global plan on every rank.
2. write (every rank): write the boxes this rank was assigned into ``data/<save_id>/rank<r>.bin``.
3. commit (coordinator): build the metadata from all ranks' written chunks, commit it atomically,
   then delete data files that the new metadata does not reference.
A failure in any phase on any rank raises the same error on every rank; nothing is committed.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from . import __version__
from .collectives import Communicator
from .frameworks import FrameworkAdapter
from .metadata import METADATA_FILE, CheckpointMetadata, SavedChunk, TensorEntry, ValueEntry, WriterInfo
from .options import SaveOptions
from .planner import GlobalSavePlan, LocalSavePlan, global_save_plan, local_save_plan
from .state import flatten_state
from .storage import Storage
from .writer import DATA_DIR, WrittenChunk, data_file_name, write_rank_data

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SaveSummary:
    """What a save did, as seen from this rank."""

    path: str
    rank: int
    world_size: int
    bytes_written: int
    total_bytes: int
    phase_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return sum(self.phase_seconds.values())


def run_save(
    storage: Storage,
    state: dict,
    framework: str | None,
    opts: SaveOptions,
    adapter: FrameworkAdapter | None = None,
) -> SaveSummary:
    comm = Communicator(opts.process_group, opts.timeout)
    timings: dict[str, float] = {}
    local: dict[str, Any] = {}

    def plan_step() -> tuple[LocalSavePlan, str | None]:
        tensors, values = flatten_state(adapter.save_state(state) if adapter else state)
        local["pieces"] = {(t.path, p.box): p.data for t in tensors for p in t.pieces}
        save_id = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}" if comm.is_coordinator else None
        return local_save_plan(tensors, values, opts.allow_pickle, comm.rank), save_id

    start = time.perf_counter()
    gathered = comm.phase("save planning", plan_step)
    save_id = gathered[0][1]
    plan = global_save_plan([p for p, _ in gathered])
    timings["plan"] = time.perf_counter() - start

    def write_step() -> list[WrittenChunk]:
        keys = plan.writes[comm.rank]
        return write_rank_data(storage, data_file_name(save_id, comm.rank), keys, local["pieces"], opts.block_size)

    start = time.perf_counter()
    try:
        written = comm.phase("save write", write_step)
    except BaseException:  # another rank (or this one) failed: remove this rank's file of this save
        _discard(storage, [data_file_name(save_id, comm.rank)])
        raise
    timings["write"] = time.perf_counter() - start

    def commit_step() -> None:
        if not comm.is_coordinator:
            return
        metadata = build_metadata(plan, written, framework, comm.world_size, opts.block_size, opts.layout)
        encoded = metadata.to_json()
        try:
            storage.commit(METADATA_FILE, encoded)
        except BaseException:
            # the data files are garbage unless the metadata did get published (e.g. only the
            # directory fsync failed): then they are a committed checkpoint's and must stay
            if not _is_committed(storage, encoded):
                _discard(storage, metadata.data_files)
            raise
        keep = set(metadata.data_files)
        for name in storage.list(DATA_DIR):
            if name not in keep:
                storage.delete(name)

    start = time.perf_counter()
    comm.phase("save commit", commit_step)
    timings["commit"] = time.perf_counter() - start
    mine = sum(c.location.length for c in written[comm.rank])
    total = sum(c.location.length for chunks in written for c in chunks)
    log.info("saved %s: %d bytes (%d by rank %d) in %.3fs", storage.url, total, mine, comm.rank, sum(timings.values()))
    return SaveSummary(storage.url, comm.rank, comm.world_size, mine, total, timings)


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


def _is_committed(storage: Storage, encoded: bytes) -> bool:
    """Whether the metadata now stored is ``encoded``; True when that cannot be told (keep data)."""
    try:
        return storage.read(METADATA_FILE) == encoded
    except FileNotFoundError:
        return False
    except Exception:  # noqa: BLE001 - unknown: err on the side of keeping the files
        return True


def _discard(storage: Storage, names: list[str]) -> None:
    """Best-effort removal of a failed save's data files (what remains is unreferenced garbage)."""
    for name in names:
        try:
            storage.delete(name)
        except Exception as exc:  # noqa: BLE001 - the save already failed; don't mask its error
            log.warning("could not remove %s after a failed save: %s", storage.describe(name), exc)
