"""Offline resharding: rewrite a checkpoint so each rank of a target layout reads one contiguous file.

A load-time reshard reads, on every rank, the byte ranges of the saved chunks its boxes overlap
(often parts of many files). ``reshard_checkpoint`` does that work once, offline: target rank
``r``'s boxes become the chunks of one data file ``data/<id>/rank<r>.bin``, written in the order a
load reads them (tensor by tensor, boxes by offset), each chunk 64-byte aligned as the saver writes
them. A load with exactly that layout then reads each of its boxes whole from that one file (one
read per box, no partial chunks). Source bytes are verified against their checksums as they are
read; the new chunks get checksums of their own. Plain values are copied as saved.

A layout is a :class:`TargetLayout`: the boxes of each tensor that each target rank reads. The
boxes of all ranks must tile each tensor (every element in exactly one box): a checkpoint stores
each element once, so a box that several ranks read is stored in one rank's file. Layouts come
from:

- :func:`dim0_layout` (``--world-size M``): every tensor split along dimension 0 as
  ``torch.chunk`` and FSDP2's ``Shard(0)`` split it (ceil(n/M) rows a rank, trailing ranks may get
  none); 0-d tensors go whole to rank 0. ``M = 1`` consolidates everything into one file.
- :func:`layout_from_json` (``--layout FILE``): the JSON document described in docs/cli.md.
- a framework's own builder (the extension point for Megatron ``--tp/--pp/--dp``): any function
  ``(CheckpointMetadata) -> TargetLayout``, e.g. one that maps each tensor's tensor- and
  pipeline-parallel boxes to ranks the way Megatron's ``sharded_state_dict`` does.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from . import __version__
from .boxes import ShardBox, check_tiling
from .checksums import block_hashes
from .commit import abandon_save, begin_save, commit_save
from .errors import CheckpointError, CheckpointExistsError
from .events import OperationEvents
from .loader import read_box, read_metadata
from .metadata import METADATA_FILE, CheckpointMetadata, ChunkLocation, SavedChunk, TensorEntry, WriterInfo
from .reader import check_chunk_bytes
from .storage import Storage
from .writer import ALIGNMENT, data_file_name

log = logging.getLogger(__name__)

LAYOUT_FORMAT = "bytecheckpoint-layout"
LAYOUT_VERSION = 1
COMMIT_TIMEOUT_S = 600.0
_PADDING = bytes(ALIGNMENT)

#: called with the number of bytes just read from the source or written to the destination
Progress = Callable[[int], None]


class LayoutError(CheckpointError, ValueError):
    """A target layout is malformed or does not fit the checkpoint (unknown tensor, boxes that do not tile)."""


@dataclass(frozen=True)
class TargetLayout:
    """The boxes each target rank reads: ``ranks[r][fqn]`` lists rank ``r``'s boxes of tensor ``fqn``.

    ``name`` says where the layout came from (``dim0``, a file name, a framework builder).
    """

    name: str
    ranks: tuple[Mapping[str, tuple[ShardBox, ...]], ...]

    @property
    def world_size(self) -> int:
        return len(self.ranks)


LayoutBuilder = Callable[[CheckpointMetadata], TargetLayout]


@dataclass(frozen=True)
class ReshardSummary:
    """What ``reshard_checkpoint`` wrote."""

    source: str
    destination: str
    world_size: int
    data_files: list[str]
    bytes_per_rank: list[int]
    seconds: float


def dim0_boxes(shape: tuple[int, ...], world_size: int) -> list[ShardBox | None]:
    """Rank r's box of a tensor of ``shape`` split along dimension 0 like ``torch.chunk`` (None: no rows)."""
    if not shape or shape[0] == 0:  # 0-d or empty: whole, on rank 0
        return [ShardBox.whole(shape), *([None] * (world_size - 1))]
    rows = -(-shape[0] // world_size)
    out: list[ShardBox | None] = []
    for r in range(world_size):
        lo, hi = min(r * rows, shape[0]), min((r + 1) * rows, shape[0])
        out.append(ShardBox((lo, *[0] * (len(shape) - 1)), (hi - lo, *shape[1:])) if hi > lo else None)
    return out


def dim0_layout(metadata: CheckpointMetadata, world_size: int) -> TargetLayout:
    """Every tensor split along dimension 0 over ``world_size`` ranks (see :func:`dim0_boxes`)."""
    if world_size < 1:
        raise LayoutError(f"the target world size must be at least 1, got {world_size}")
    ranks: list[dict[str, tuple[ShardBox, ...]]] = [{} for _ in range(world_size)]
    for entry in metadata.tensors:
        for rank, box in enumerate(dim0_boxes(entry.shape, world_size)):
            if box is not None:
                ranks[rank][entry.fqn] = (box,)
    return TargetLayout(f"dim0 over {world_size} rank(s)", tuple(ranks))


def layout_from_json(doc: Any, metadata: CheckpointMetadata, where: str) -> TargetLayout:
    """Parse a layout document (docs/cli.md, "Layout files") against ``metadata``.

    ``{"format": "bytecheckpoint-layout", "version": 1, "ranks": [{fqn: [{"offsets": [...],
    "lengths": [...]}, ...]}, ...]}``; tensors that no rank names are split along dimension 0.
    Raises LayoutError naming ``where`` and the offending rank or tensor.
    """
    if not isinstance(doc, dict):
        raise LayoutError(f"{where}: expected a JSON object, found {type(doc).__name__}")
    if doc.get("format") != LAYOUT_FORMAT or doc.get("version") != LAYOUT_VERSION:
        raise LayoutError(f"{where}: expected \"format\": {LAYOUT_FORMAT!r} and \"version\": {LAYOUT_VERSION}, "
                          f"found {doc.get('format')!r} and {doc.get('version')!r}")
    raw_ranks = doc.get("ranks")
    if not isinstance(raw_ranks, list) or not raw_ranks:
        raise LayoutError(f"{where}: \"ranks\" must be a non-empty list (one object per target rank)")
    tensors = metadata.tensor_by_fqn()
    ranks: list[dict[str, tuple[ShardBox, ...]]] = []
    for r, raw in enumerate(raw_ranks):
        if not isinstance(raw, dict):
            raise LayoutError(f"{where}: ranks[{r}]: expected an object of tensor name -> boxes")
        boxes: dict[str, tuple[ShardBox, ...]] = {}
        for fqn, raw_boxes in raw.items():
            if fqn not in tensors:
                raise LayoutError(f"{where}: ranks[{r}]: the checkpoint has no tensor {fqn!r}")
            boxes[fqn] = tuple(_parse_box(b, tensors[fqn], f"{where}: ranks[{r}][{fqn!r}][{i}]")
                               for i, b in enumerate(_expect_list(raw_boxes, f"{where}: ranks[{r}][{fqn!r}]")))
        ranks.append(boxes)
    named = {fqn for rank in ranks for fqn in rank}
    for entry in metadata.tensors:
        if entry.fqn in named:
            problem = check_tiling(entry.shape, [b for rank in ranks for b in rank.get(entry.fqn, ())])
            if problem:
                raise LayoutError(f"{where}: the boxes of tensor {entry.fqn!r} (shape {list(entry.shape)}) do not "
                                  f"tile it: {problem}")
            continue
        for rank, box in enumerate(dim0_boxes(entry.shape, len(ranks))):
            if box is not None:
                ranks[rank][entry.fqn] = (box,)
    return TargetLayout(where, tuple(ranks))


def read_layout_file(text: str, metadata: CheckpointMetadata, where: str) -> TargetLayout:
    """A layout from the text of a layout file (see :func:`layout_from_json`)."""
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise LayoutError(f"{where}: not valid JSON ({exc})") from None
    return layout_from_json(doc, metadata, where)


def _expect_list(raw: Any, where: str) -> list:
    if not isinstance(raw, list):
        raise LayoutError(f"{where}: expected a list of boxes, found {type(raw).__name__}")
    return raw


def _parse_box(raw: Any, entry: TensorEntry, where: str) -> ShardBox:
    if not isinstance(raw, dict) or not isinstance(raw.get("offsets"), list) or not isinstance(raw.get("lengths"), list):
        raise LayoutError(f"{where}: expected {{\"offsets\": [...], \"lengths\": [...]}}, found {raw!r:.80}")
    offsets, lengths = raw["offsets"], raw["lengths"]
    if not all(type(n) is int and n >= 0 for n in (*offsets, *lengths)):
        raise LayoutError(f"{where}: offsets and lengths must be non-negative integers, found {raw!r:.80}")
    try:
        box = ShardBox(tuple(offsets), tuple(lengths))
    except ValueError as exc:
        raise LayoutError(f"{where}: {exc}") from None
    if not box.fits_in(entry.shape):
        raise LayoutError(f"{where}: box offsets={offsets} lengths={lengths} lies outside shape {list(entry.shape)}")
    return box


def reshard_checkpoint(source: Storage, destination: Storage, layout: TargetLayout | LayoutBuilder,
                       progress: Progress | None = None) -> ReshardSummary:
    """Rewrite ``source`` at ``destination`` with one data file per rank of ``layout``; commit last.

    Refuses (before writing anything) a destination that already holds a committed checkpoint, and a
    layout that does not fit. Memory: one target box at a time. Emits the ``reshard`` operation's
    events (phases ``reshard`` and ``commit``) for metrics and the event log.
    """
    with OperationEvents("reshard", destination.url, 0) as events:
        return _reshard(source, destination, layout, progress, events)


def _reshard(source: Storage, destination: Storage, layout: TargetLayout | LayoutBuilder,
             progress: Progress | None, events: OperationEvents) -> ReshardSummary:
    started = time.perf_counter()
    metadata = read_metadata(source)
    target = layout(metadata) if callable(layout) else layout
    _check_layout(target, metadata)
    if destination.url.rstrip("/") == source.url.rstrip("/"):
        raise LayoutError(f"{destination.url}: the destination must differ from the source")
    if destination.exists(METADATA_FILE):
        raise CheckpointExistsError(f"{destination.describe(METADATA_FILE)} exists: {destination.url} already holds "
                                    "a checkpoint; choose a new destination or delete it first")
    check_chunk_bytes(source, metadata.tensors)  # every chunk's bytes are there before anything is written
    save_id = f"reshard-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
    begin_save(destination, save_id)
    written: list[str] = []
    chunks: dict[str, list[SavedChunk]] = {e.fqn: [] for e in metadata.tensors}
    bytes_per_rank = []
    try:
        with events.timed("reshard") as rewrite:
            for rank, boxes in enumerate(target.ranks):
                name = data_file_name(save_id, rank)
                work = [(e, box) for e in metadata.tensors
                        for box in sorted(boxes.get(e.fqn, ()), key=lambda b: b.offsets)]
                if not work:
                    bytes_per_rank.append(0)
                    continue
                written.append(name)
                rank_chunks = _write_rank_file(source, destination, name, metadata, work, progress)
                for fqn, chunk in rank_chunks:
                    chunks[fqn].append(chunk)
                bytes_per_rank.append(sum(c.location.length for _, c in rank_chunks))
                rewrite.bytes = sum(bytes_per_rank)
        new = _new_metadata(metadata, chunks, target, bytes_per_rank)
        with events.timed("commit"):
            commit_save(destination, save_id, new.to_json(), new.data_files, COMMIT_TIMEOUT_S)
    except BaseException:
        abandon_save(destination, written, save_id)
        raise
    seconds = time.perf_counter() - started
    log.info("resharded %s into %s: %d rank(s), %d bytes in %.2fs", source.url, destination.url,
             target.world_size, sum(bytes_per_rank), seconds)
    return ReshardSummary(source.url, destination.url, target.world_size, written, bytes_per_rank, seconds)


def _check_layout(layout: TargetLayout, metadata: CheckpointMetadata) -> None:
    """Every tensor is tiled by the boxes of all ranks; every box names a tensor of the checkpoint."""
    if layout.world_size < 1:
        raise LayoutError(f"layout {layout.name}: no target ranks")
    tensors = metadata.tensor_by_fqn()
    for r, rank in enumerate(layout.ranks):
        unknown = sorted(set(rank) - set(tensors))
        if unknown:
            raise LayoutError(f"layout {layout.name}: rank {r} names tensor(s) {unknown[:5]} the checkpoint lacks")
    for entry in metadata.tensors:
        boxes = [b for rank in layout.ranks for b in rank.get(entry.fqn, ())]
        problem = check_tiling(entry.shape, boxes) if boxes else "no rank reads it"
        if problem:
            raise LayoutError(f"layout {layout.name}: tensor {entry.fqn!r} (shape {list(entry.shape)}): {problem}")


def _write_rank_file(source: Storage, destination: Storage, name: str, metadata: CheckpointMetadata,
                     work: list[tuple[TensorEntry, ShardBox]], progress: Progress | None) -> list[tuple[str, SavedChunk]]:
    """Read each (tensor, box) from ``source`` (verified) and append it to the data file ``name``."""
    out: list[tuple[str, SavedChunk]] = []
    writer = destination.open_writer(name)
    offset = 0
    try:
        for entry, box in work:
            data, got = read_box(source, metadata, entry, box)
            if progress is not None:
                progress(got)
            raw = memoryview(data.reshape(-1).view(torch.uint8).numpy())
            pad = -offset % ALIGNMENT
            if pad:
                writer.write(memoryview(_PADDING)[:pad])
                offset += pad
            writer.write(raw)
            hashes = block_hashes(raw, metadata.block_size)
            out.append((entry.fqn, SavedChunk(box, ChunkLocation(name, offset, len(raw)), hashes)))
            offset += len(raw)
            if progress is not None:
                progress(len(raw))
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return out


def _new_metadata(old: CheckpointMetadata, chunks: dict[str, list[SavedChunk]], layout: TargetLayout,
                  bytes_per_rank: list[int]) -> CheckpointMetadata:
    tensors = tuple(
        TensorEntry(e.path, e.dtype, e.shape, tuple(sorted(chunks[e.fqn], key=lambda c: c.box.offsets)))
        for e in old.tensors
    )
    kept = {k: v for k, v in old.writer.layout.items() if k != "bytes_per_rank"}
    writer = WriterInfo(
        library="bytecheckpoint",
        library_version=__version__,
        framework=old.writer.framework,
        world_size=layout.world_size,
        layout={**kept, "bytes_per_rank": bytes_per_rank,
                "resharded": {"from_world_size": old.writer.world_size, "layout": layout.name}},
    )
    return CheckpointMetadata(writer=writer, block_size=old.block_size, tensors=tensors, values=old.values)
