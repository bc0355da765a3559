"""The load protocol, and whole-checkpoint reads for tools.

1. metadata (coordinator): read the committed metadata and broadcast its bytes; every rank parses it.
2. load (every rank): match the target state against the metadata, intersect target boxes with
   saved chunks, read the needed byte ranges (coalesced, parallel), verify, copy into place.
A failure on any rank raises the same error on every rank.
"""

from __future__ import annotations

import difflib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .async_save import wait_for_pending_save
from .boxes import ShardBox
from .checksums import hash_block
from .collectives import Communicator
from .dcp_format import (
    DCP_METADATA_FILE,
    NO_CHECKSUMS_NOTE,
    check_dcp_chunks,
    is_dcp,
    read_dcp_chunks,
    read_dcp_metadata,
)
from .dtypes import dtype_name, torch_dtype
from .errors import (
    CheckpointChangedError,
    ChecksumMismatchError,
    CorruptCheckpointError,
    DtypeMismatchError,
    IncompleteCheckpointError,
    MetadataError,
    MissingDataFileError,
    MissingKeyError,
    ShapeMismatchError,
    UnexpectedKeyError,
    UnsafeFileError,
)
from .events import OperationEvents
from .frameworks import FrameworkAdapter, SavedCheckpoint
from .metadata import METADATA_FILE, CheckpointMetadata, Path, TensorEntry, fqn_of
from .options import LoadOptions
from .reader import (
    READ_THREADS,
    CopyItem,
    allocate,
    check_chunk_bytes,
    execute_copies,
    plan_copies,
    truncation_error,
)
from .shared_reads import SharePlan, chunk_needs, exchange_shared, plan_sharing
from .state import TensorPiece, flatten_state
from .storage import Storage
from .values import decode_value

log = logging.getLogger(__name__)
_LISTED = 10


@dataclass(frozen=True)
class LoadSummary:
    """What a load did, as seen from this rank."""

    path: str
    rank: int
    world_size: int
    bytes_read: int
    phase_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return sum(self.phase_seconds.values())


def read_metadata(storage: Storage, allow_pickle: bool = False) -> CheckpointMetadata:
    """The committed metadata of a checkpoint, ours or a PyTorch DCP one (see dcp_format.py);
    IncompleteCheckpointError if there is none. ``allow_pickle`` unpickles DCP metadata fully."""
    return _parse_metadata(storage, _read_metadata_bytes(storage), allow_pickle)


def _read_metadata_bytes(storage: Storage) -> tuple[str, bytes]:
    """The name and bytes of the committed metadata file: ours, else DCP's ``.metadata``."""
    committed = _read_if_committed(storage)
    if committed is None:
        raise IncompleteCheckpointError(
            f"{storage.describe(METADATA_FILE)} not found: {storage.url} is not a committed checkpoint "
            f"(the save never finished, or the path is wrong; a DCP checkpoint has {DCP_METADATA_FILE})"
        )
    return committed


def _parse_metadata(storage: Storage, committed: tuple[str, bytes], allow_pickle: bool) -> CheckpointMetadata:
    name, raw = committed
    if name == DCP_METADATA_FILE:
        return read_dcp_metadata(storage, raw, allow_pickle)
    return CheckpointMetadata.from_json(raw, storage.describe(name))


def run_load(
    storage: Storage, state: dict, strict: bool, opts: LoadOptions, adapter: FrameworkAdapter | None = None
) -> LoadSummary:
    """Load on every rank. If a data file is missing and the metadata has changed meanwhile (another
    save replaced the checkpoint, or it was deleted), the load is retried once against the new
    metadata, or fails with CheckpointChangedError; a file missing from an unchanged checkpoint is
    MissingDataFileError (corruption)."""
    wait_for_pending_save()
    comm = Communicator(opts.process_group, opts.timeout)
    with OperationEvents("load", storage.url, comm.rank, opts.step) as events:
        return _run_load(storage, state, strict, opts, adapter, comm, events)


def _run_load(storage: Storage, state: dict, strict: bool, opts: LoadOptions,
              adapter: FrameworkAdapter | None, comm: Communicator, events: OperationEvents) -> LoadSummary:
    timings: dict[str, float] = {}
    with events.timed("metadata", timings):
        raw = comm.from_coordinator("load metadata", lambda: _read_metadata_bytes(storage))
    start = time.perf_counter()
    for attempt in range(2):
        metadata = _parse_metadata(storage, raw, opts.allow_pickle)
        work = _LoadWork(storage, state, strict, opts, adapter, metadata, comm)
        try:
            needs = comm.phase("load planning", work.plan)
            sharing = comm.distributed and opts.share_reads and not is_dcp(metadata)  # DCP chunks are blobs
            share = plan_sharing(needs) if sharing else SharePlan({})
            read = comm.phase("load", lambda w=work, s=share: w.read(s))
            break
        except MissingDataFileError as exc:
            now = comm.from_coordinator("load metadata (again)", lambda: _read_if_committed(storage))
            if now == raw:
                raise
            what = "deleted" if now is None else "replaced by another save"
            if now is None or attempt == 1:
                raise CheckpointChangedError(
                    f"{storage.url} was {what} while it was being loaded{' (twice)' if attempt else ''}; "
                    f"nothing is damaged: load it again ({exc})"
                ) from exc
            log.warning("%s was replaced by another save while it was being loaded; loading the new one", storage.url)
            raw = now
    timings["read"] = time.perf_counter() - start
    events.phase("read", timings["read"], read[comm.rank])
    return LoadSummary(storage.url, comm.rank, comm.world_size, read[comm.rank], timings)


class _LoadWork:
    """One rank's part of a load: plan (match the state, say which saved chunks it needs), then
    read its own chunks and take part in the exchange of the chunks several ranks need."""

    def __init__(self, storage: Storage, state: dict, strict: bool, opts: LoadOptions,
                 adapter: FrameworkAdapter | None, metadata: CheckpointMetadata, comm: Communicator) -> None:
        self.storage, self.state, self.strict, self.opts = storage, state, strict, opts
        self.adapter, self.metadata, self.comm = adapter, metadata, comm
        self.targets: dict = {}
        self.items: list[CopyItem] = []
        self.values: dict[Path, Any] = {}

    def plan(self) -> tuple:
        saved = SavedCheckpoint(self.metadata, self.opts.allow_pickle)
        self.targets = self.adapter.load_targets(self.state, saved) if self.adapter else self.state
        self.items, self.values = match_state(self.metadata, self.targets, self.strict, self.opts.allow_pickle)
        return chunk_needs(self.items) if self.comm.distributed else ()

    def read(self, share: SharePlan) -> int:
        own = [i for i in self.items if not share.is_shared(i)]
        shared = [i for i in self.items if share.is_shared(i)]
        nbytes, failure = 0, None
        try:
            nbytes = _execute(self.storage, self.metadata, own, self.opts.read_threads)
        except Exception as exc:  # noqa: BLE001 - the exchange below must still run on every rank
            failure = exc
        if share.readers:
            try:
                nbytes += exchange_shared(self.comm, self.storage, share, shared, self.metadata.block_size)
            except Exception as exc:  # noqa: BLE001 - this rank's first error is the one raised
                failure = failure or exc
        if failure is not None:
            raise failure
        for path, value in self.values.items():
            _assign(self.targets, path, value)
        if self.adapter:
            self.adapter.finish_load(self.state, self.targets)
        return nbytes


def _read_if_committed(storage: Storage) -> tuple[str, bytes] | None:
    for name in (METADATA_FILE, DCP_METADATA_FILE):
        try:
            return name, storage.read(name)
        except FileNotFoundError:
            continue
    return None


def _execute(storage: Storage, metadata: CheckpointMetadata, items: list[CopyItem], threads: int) -> int:
    """Read, check and copy ``items`` from the checkpoint's data files; the bytes read."""
    if is_dcp(metadata):
        return read_dcp_chunks(storage, items, threads)
    return execute_copies(storage, items, metadata.block_size, threads)


def match_state(
    metadata: CheckpointMetadata, state: dict, strict: bool, allow_pickle: bool
) -> tuple[list[CopyItem], dict[Path, Any]]:
    """The copies that fill ``state``'s tensors, and the values to put into it; checks keys,
    shapes and dtypes, naming every offending key."""
    tensors, values = flatten_state(state)
    saved = {t.path: t for t in metadata.tensors}
    saved_values = {v.path: v for v in metadata.values}
    per_rank = _rank_local_paths(saved_values, [v.path for v in values if v.rank_local])
    nested = _values_under(saved_values, [v.path for v in values if not v.rank_local and v.path not in saved_values
                                          and v.path not in saved])
    missing = [t.fqn for t in tensors if t.path not in saved]
    missing += [v.fqn for v in values if v.path not in saved_values and v.path not in saved
                and not per_rank.get(v.path) and not nested.get(v.path)]
    wanted = {t.path for t in tensors} | {v.path for v in values} | {p for ps in per_rank.values() for p in ps}
    wanted |= {p for ps in nested.values() for p in ps}
    unexpected = [fqn_of(p) for p in (*saved, *saved_values) if p not in wanted]
    if strict and missing:
        raise MissingKeyError(
            f"checkpoint has no entry for key(s) {_names(missing)} (strict load); "
            + _nearest(missing[0], [fqn_of(p) for p in (*saved, *saved_values)])
        )
    if strict and unexpected:
        raise UnexpectedKeyError(
            f"checkpoint has key(s) {_names(unexpected)} that the target state does not ask for "
            "(strict load; pass strict=False to ignore them)"
        )
    shape_errors = [
        f"{t.fqn!r}: checkpoint {list(saved[t.path].shape)}, target {list(t.global_shape)}"
        for t in tensors if t.path in saved and tuple(saved[t.path].shape) != t.global_shape
    ]
    if shape_errors:
        raise ShapeMismatchError(f"global shape mismatch for {len(shape_errors)} tensor(s): " + "; ".join(shape_errors[:_LISTED]))
    dtype_errors = [
        f"{t.fqn!r}: checkpoint {saved[t.path].dtype}, target {dtype_name(t.dtype, t.fqn)}"
        for t in tensors if t.path in saved and saved[t.path].dtype != dtype_name(t.dtype, t.fqn)
    ]
    if dtype_errors:
        raise DtypeMismatchError(f"dtype mismatch for {len(dtype_errors)} tensor(s): " + "; ".join(dtype_errors[:_LISTED]))

    items = [item for t in tensors if t.path in saved for item in plan_copies(saved[t.path], t.pieces)]
    out: dict[Path, Any] = {}
    for v in values:
        if v.rank_local:
            if per_rank.get(v.path):
                out[v.path] = {p[-1]: decode_value(saved_values[p].encoded, fqn_of(p), allow_pickle) for p in per_rank[v.path]}
        elif v.path in saved_values:
            out[v.path] = decode_value(saved_values[v.path].encoded, v.fqn, allow_pickle)
        elif v.path in saved:  # a placeholder where a tensor was saved: load it whole
            whole, pieces = _whole_tensor(saved[v.path])
            items += plan_copies(saved[v.path], pieces)
            out[v.path] = whole
        elif nested.get(v.path):  # a placeholder above values saved one by one (as DCP saves dicts)
            out[v.path] = {}
            for p in nested[v.path]:
                _insert(out[v.path], p[len(v.path):], decode_value(saved_values[p].encoded, fqn_of(p), allow_pickle))
    return items, out


def _rank_local_paths(saved_values: dict[Path, Any], prefixes: list[Path]) -> dict[Path, list[Path]]:
    """For each RankLocal key, the saved paths of its per-rank values (the key plus a rank)."""
    wanted = set(prefixes)
    out: dict[Path, list[Path]] = {p: [] for p in prefixes}
    for path in saved_values:
        if path[:-1] in wanted and isinstance(path[-1], int):
            out[path[:-1]].append(path)
    return {k: sorted(v, key=lambda p: p[-1]) for k, v in out.items()}


def _values_under(saved_values: dict[Path, Any], prefixes: list[Path]) -> dict[Path, list[Path]]:
    """For each placeholder path that was not saved, the saved plain values below it."""
    if not prefixes:
        return {}
    wanted = set(prefixes)
    out: dict[Path, list[Path]] = {p: [] for p in prefixes}
    for path in saved_values:
        for i in range(1, len(path)):
            if path[:i] in wanted:
                out[path[:i]].append(path)
                break
    return out


def _whole_tensor(entry: TensorEntry) -> tuple[torch.Tensor, list[TensorPiece]]:
    """A fresh tensor of the entry's shape (bounded by the metadata parser); AllocationError if it cannot be had."""
    tensor = allocate(entry.shape, torch_dtype(entry.dtype), f"tensor {entry.fqn!r}")
    return tensor, [TensorPiece(ShardBox.whole(entry.shape), tensor)]


def _assign(state: dict, path: Path, value: Any) -> None:
    node = state
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _nearest(name: str, saved: list[str]) -> str:
    """The saved keys most like ``name`` (or the first few), for a missing-key error."""
    close = difflib.get_close_matches(name, saved, n=5, cutoff=0.5)
    if close:
        return f"nearest saved key(s) to {name!r}: {_names(close)}"
    return f"saved keys: {_names(sorted(saved))}" if saved else "the checkpoint holds no keys"


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def load_full_state(storage: Storage, allow_pickle: bool) -> dict:
    """Every tensor whole and every plain value, nested as saved (one process, no process group).

    Nothing is allocated before everything was checked: the metadata (the chunks tile each tensor,
    sizes are bounded), the values, and the data files (each is a regular file holding every byte
    range the metadata points into, and no two chunks share bytes), so the memory taken is at most
    the size of the data files. Emits operation ``load_full`` (phases ``metadata``, ``read``)."""
    with OperationEvents("load_full", storage.url, 0) as events:
        with events.timed("metadata"):
            metadata = read_metadata(storage, allow_pickle)
        with events.timed("read") as read:
            values = [(v.path, decode_value(v.encoded, v.fqn, allow_pickle)) for v in metadata.values]
            check_chunk_bytes(storage, metadata.tensors)
            out: dict = {}
            items: list[CopyItem] = []
            for entry in metadata.tensors:
                whole, pieces = _whole_tensor(entry)
                items += plan_copies(entry, pieces)
                _insert(out, entry.path, whole)
            for path, value in values:
                _insert(out, path, value)
            read.bytes = _execute(storage, metadata, items, READ_THREADS)
    return out


def read_box(storage: Storage, metadata: CheckpointMetadata, entry: TensorEntry, box: ShardBox | None = None
             ) -> tuple[torch.Tensor, int]:
    """The ``box`` (default: all) of one tensor of the checkpoint, read and checked as a load does, and
    the bytes read. For tools that go tensor by tensor (diff, offline reshard)."""
    box = box or ShardBox.whole(entry.shape)
    out = allocate(box.lengths, torch_dtype(entry.dtype), f"box {box} of tensor {entry.fqn!r}")
    nbytes = _execute(storage, metadata, plan_copies(entry, [TensorPiece(box, out)]), READ_THREADS)
    return out, nbytes


def _insert(root: dict, path: Path, value: Any) -> None:
    node = root
    for i, key in enumerate(path[:-1]):
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise MetadataError(f"{fqn_of(path)!r} lies inside {fqn_of(path[: i + 1])!r}, which is not a dict")
    if path[-1] in node:
        raise MetadataError(f"{fqn_of(path)!r} is both a leaf and the parent of other entries")
    node[path[-1]] = value


@dataclass(frozen=True)
class VerifyReport:
    """What verify checked; ``note`` says what it could not (a DCP checkpoint has no checksums)."""

    path: str
    tensors: int
    chunks: int
    bytes_verified: int
    data_files: list[str]
    note: str = ""


def verify_checkpoint(storage: Storage) -> VerifyReport:
    """Stream every chunk of every tensor through its block hashes (memory: one block).

    Raises CorruptCheckpointError (a ChecksumMismatchError or TruncatedDataError where all problems
    are of one kind) listing every damaged chunk by file, tensor and byte range.
    """
    report, problems = find_damage(storage)
    if problems:  # the most specific error class that all problems share
        cls = next(c for c in type(problems[0]).__mro__ if all(isinstance(p, c) for p in problems))
        shown = "\n  ".join(str(p) for p in problems[:_LISTED])
        more = f"\n  ... and {len(problems) - _LISTED} more" if len(problems) > _LISTED else ""
        raise cls(f"{storage.url}: {len(problems)} damaged chunk(s):\n  {shown}{more}")
    return report


def find_damage(storage: Storage) -> tuple[VerifyReport, list[CorruptCheckpointError]]:
    """What ``verify_checkpoint`` checks, returned instead of raised: the report (bytes that could be
    read) and one error per damaged chunk. Errors reading the metadata are raised. Emits operation
    ``verify`` (phases ``metadata``, ``read``), failed with the first problem's class if any."""
    with OperationEvents("verify", storage.url, 0) as events:
        with events.timed("metadata"):
            metadata = read_metadata(storage)
        with events.timed("read") as read:
            report, problems = _check_chunks(storage, metadata)
            read.bytes = report.bytes_verified
        events.failure = problems[0] if problems else None
    return report, problems


def _check_chunks(storage: Storage, metadata: CheckpointMetadata) -> tuple[VerifyReport, list[CorruptCheckpointError]]:
    chunks = sum(len(t.chunks) for t in metadata.tensors)
    if is_dcp(metadata):
        nbytes, damaged = check_dcp_chunks(storage, metadata)
        report = VerifyReport(storage.url, len(metadata.tensors), chunks, nbytes, metadata.data_files, NO_CHECKSUMS_NOTE)
        return report, damaged
    problems: list[CorruptCheckpointError] = []
    largest = max((c.location.length for t in metadata.tensors for c in t.chunks), default=0)
    block = allocate(min(metadata.block_size, largest), torch.uint8, "a checksum block buffer")
    view = memoryview(block.numpy())
    nbytes = 0
    for entry in metadata.tensors:
        for chunk in entry.chunks:
            loc = chunk.location
            where = storage.describe(loc.file)
            for index, expected in enumerate(chunk.block_hashes):
                start = index * metadata.block_size
                want = min(metadata.block_size, loc.length - start)
                try:
                    got = storage.read_into(loc.file, loc.offset + start, view[:want])
                except FileNotFoundError:
                    problems.append(MissingDataFileError(f"{where}: data file is missing (tensor {entry.fqn!r})"))
                    break
                except UnsafeFileError as exc:
                    problems.append(UnsafeFileError(f"{exc} (tensor {entry.fqn!r})"))
                    break
                nbytes += got
                if got < want:
                    problems.append(truncation_error(storage, loc.file, loc.offset, loc.offset + loc.length,
                                                     [entry.fqn]))
                    break
                if hash_block(view[:want]) != expected:
                    problems.append(ChecksumMismatchError(
                        f"{where}: checksum mismatch in tensor {entry.fqn!r} at bytes "
                        f"{loc.offset + start}-{loc.offset + start + want}"
                    ))
    return VerifyReport(
        storage.url, len(metadata.tensors), sum(len(t.chunks) for t in metadata.tensors), nbytes, metadata.data_files
    ), problems
