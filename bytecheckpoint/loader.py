"""The load protocol, and whole-checkpoint reads for tools.

1. metadata (coordinator): read the committed metadata and broadcast its bytes; every rank parses it.
2. load (every rank): match the target state against the metadata, intersect target boxes with
   saved chunks, read the needed byte ranges (coalesced, parallel), verify, copy into place.
A failure on any rank raises the same error on every rank.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from .boxes import ShardBox
from .checksums import hash_block
from .collectives import Communicator
from .dtypes import dtype_name, torch_dtype
from .errors import (
    ChecksumMismatchError,
    CorruptCheckpointError,
    DtypeMismatchError,
    IncompleteCheckpointError,
    MissingKeyError,
    ShapeMismatchError,
    TruncatedDataError,
    UnexpectedKeyError,
)
from .frameworks import FrameworkAdapter, SavedCheckpoint
from .metadata import METADATA_FILE, CheckpointMetadata, Path, TensorEntry, fqn_of
from .options import LoadOptions
from .reader import CopyItem, execute_copies, plan_copies
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


def read_metadata(storage: Storage) -> CheckpointMetadata:
    """The committed metadata of a checkpoint; IncompleteCheckpointError if there is none."""
    return CheckpointMetadata.from_json(_read_metadata_bytes(storage), storage.describe(METADATA_FILE))


def _read_metadata_bytes(storage: Storage) -> bytes:
    try:
        return storage.read(METADATA_FILE)
    except FileNotFoundError:
        raise IncompleteCheckpointError(
            f"{storage.describe(METADATA_FILE)} not found: {storage.url} is not a committed checkpoint "
            "(the save never finished, or the path is wrong)"
        ) from None


def run_load(
    storage: Storage, state: dict, strict: bool, opts: LoadOptions, adapter: FrameworkAdapter | None = None
) -> LoadSummary:
    comm = Communicator(opts.process_group, opts.timeout)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    raw = comm.from_coordinator("load metadata", lambda: _read_metadata_bytes(storage))
    metadata = CheckpointMetadata.from_json(raw, storage.describe(METADATA_FILE))
    timings["metadata"] = time.perf_counter() - start

    def load_step() -> int:
        targets = adapter.load_targets(state, SavedCheckpoint(metadata, opts.allow_pickle)) if adapter else state
        items, values = match_state(metadata, targets, strict, opts.allow_pickle)
        nbytes = execute_copies(storage, items, metadata.block_size, opts.read_threads)
        for path, value in values.items():
            _assign(targets, path, value)
        if adapter:
            adapter.finish_load(state, targets)
        return nbytes

    start = time.perf_counter()
    read = comm.phase("load", load_step)
    timings["read"] = time.perf_counter() - start
    return LoadSummary(storage.url, comm.rank, comm.world_size, read[comm.rank], timings)


def match_state(
    metadata: CheckpointMetadata, state: dict, strict: bool, allow_pickle: bool
) -> tuple[list[CopyItem], dict[Path, Any]]:
    """The copies that fill ``state``'s tensors, and the values to put into it; checks keys,
    shapes and dtypes, naming every offending key."""
    tensors, values = flatten_state(state)
    saved = {t.path: t for t in metadata.tensors}
    saved_values = {v.path: v for v in metadata.values}
    per_rank = _rank_local_paths(saved_values, [v.path for v in values if v.rank_local])
    missing = [t.fqn for t in tensors if t.path not in saved]
    missing += [v.fqn for v in values if v.path not in saved_values and v.path not in saved and not per_rank.get(v.path)]
    wanted = {t.path for t in tensors} | {v.path for v in values} | {p for ps in per_rank.values() for p in ps}
    unexpected = [fqn_of(p) for p in (*saved, *saved_values) if p not in wanted]
    if strict and missing:
        raise MissingKeyError(f"checkpoint has no entry for key(s) {_names(missing)} (strict load)")
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
    return items, out


def _rank_local_paths(saved_values: dict[Path, Any], prefixes: list[Path]) -> dict[Path, list[Path]]:
    """For each RankLocal key, the saved paths of its per-rank values (the key plus a rank)."""
    wanted = set(prefixes)
    out: dict[Path, list[Path]] = {p: [] for p in prefixes}
    for path in saved_values:
        if path[:-1] in wanted and isinstance(path[-1], int):
            out[path[:-1]].append(path)
    return {k: sorted(v, key=lambda p: p[-1]) for k, v in out.items()}


def _whole_tensor(entry: TensorEntry) -> tuple[torch.Tensor, list[TensorPiece]]:
    tensor = torch.empty(entry.shape, dtype=torch_dtype(entry.dtype))
    return tensor, [TensorPiece(ShardBox.whole(entry.shape), tensor)]


def _assign(state: dict, path: Path, value: Any) -> None:
    node = state
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value


def _names(names: list[str]) -> str:
    shown = ", ".join(repr(n) for n in names[:_LISTED])
    return shown + (f" and {len(names) - _LISTED} more" if len(names) > _LISTED else "")


def load_full_state(storage: Storage, allow_pickle: bool) -> dict:
    """Every tensor whole and every plain value, nested as saved (one process, no process group)."""
    metadata = read_metadata(storage)
    out: dict = {}
    items: list[CopyItem] = []
    for entry in metadata.tensors:
        whole, pieces = _whole_tensor(entry)
        items += plan_copies(entry, pieces)
        _insert(out, entry.path, whole)
    for v in metadata.values:
        _insert(out, v.path, decode_value(v.encoded, v.fqn, allow_pickle))
    execute_copies(storage, items, metadata.block_size)
    return out


def _insert(root: dict, path: Path, value: Any) -> None:
    node = root
    for key in path[:-1]:
        node = node.setdefault(key, {})
    node[path[-1]] = value


@dataclass(frozen=True)
class VerifyReport:
    path: str
    tensors: int
    chunks: int
    bytes_verified: int
    data_files: list[str]


def verify_checkpoint(storage: Storage) -> VerifyReport:
    """Stream every chunk of every tensor through its block hashes (memory: one block).

    Raises CorruptCheckpointError (a ChecksumMismatchError or TruncatedDataError where all problems
    are of one kind) listing every damaged chunk by file, tensor and byte range.
    """
    metadata = read_metadata(storage)
    problems: list[CorruptCheckpointError] = []
    block = torch.empty(metadata.block_size, dtype=torch.uint8)
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
                    problems.append(TruncatedDataError(f"{where}: data file is missing (tensor {entry.fqn!r})"))
                    break
                nbytes += got
                if got < want:
                    problems.append(TruncatedDataError(
                        f"{where}: truncated at byte {loc.offset + start + got}; tensor {entry.fqn!r} needs "
                        f"bytes up to {loc.offset + loc.length}"
                    ))
                    break
                if hash_block(view[:want]) != expected:
                    problems.append(ChecksumMismatchError(
                        f"{where}: checksum mismatch in tensor {entry.fqn!r} at bytes "
                        f"{loc.offset + start}-{loc.offset + start + want}"
                    ))
    if problems:
        kinds = {type(p) for p in problems}
        cls = kinds.pop() if len(kinds) == 1 else CorruptCheckpointError
        shown = "\n  ".join(str(p) for p in problems[:_LISTED])
        more = f"\n  ... and {len(problems) - _LISTED} more" if len(problems) > _LISTED else ""
        raise cls(f"{storage.url}: {len(problems)} damaged chunk(s):\n  {shown}{more}")
    return VerifyReport(
        storage.url, len(metadata.tensors), sum(len(t.chunks) for t in metadata.tensors), nbytes, metadata.data_files
    )
