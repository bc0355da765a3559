"""Reading saved chunks into target tensors: intersect, coalesce byte ranges, verify, copy.

Each copy needs a sub-box of a saved chunk; its bytes span a range of the chunk's data, widened
to whole checksum blocks so every block read can be verified. Ranges of one file that lie close
together are merged into one read; reads of different ranges run in parallel threads.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from .boxes import ShardBox, intersect, row_major_strides
from .checksums import hash_block
from .dtypes import itemsize, torch_dtype
from .errors import ChecksumMismatchError, CorruptCheckpointError, TruncatedDataError
from .metadata import SavedChunk, TensorEntry
from .state import TensorPiece
from .storage import Storage

MERGE_GAP_BYTES = 1 << 20
MAX_MERGED_BYTES = 64 << 20
READ_THREADS = 4


@dataclass(frozen=True)
class CopyItem:
    """Copy ``overlap`` of a saved chunk into ``dest`` (a view shaped ``overlap.lengths``)."""

    entry: TensorEntry
    chunk: SavedChunk
    overlap: ShardBox
    dest: torch.Tensor

    def element_span(self) -> tuple[int, int]:
        """First and one-past-last element (row-major within the chunk) the overlap touches."""
        strides = row_major_strides(self.chunk.box.lengths)
        rel = [o - co for o, co in zip(self.overlap.offsets, self.chunk.box.offsets)]
        first = sum(r * s for r, s in zip(rel, strides))
        last = first + sum((n - 1) * s for n, s in zip(self.overlap.lengths, strides))
        return first, last + 1

    def block_range(self, block_size: int) -> tuple[int, int]:
        """Indices [lo, hi) of the chunk's checksum blocks that hold the overlap's bytes."""
        size = itemsize(self.entry.dtype)
        first, end = self.element_span()
        return first * size // block_size, math.ceil(end * size / block_size)


def plan_copies(entry: TensorEntry, pieces: Sequence[TensorPiece]) -> list[CopyItem]:
    """Intersect the target pieces with the saved chunks; every target element must be covered."""
    items: list[CopyItem] = []
    for piece in pieces:
        covered = 0
        for chunk in entry.chunks:
            overlap = intersect(piece.box, chunk.box)
            if overlap is None:
                continue
            covered += overlap.numel
            items.append(CopyItem(entry, chunk, overlap, piece.data[overlap.relative_to(piece.box)]))
        if covered != piece.box.numel:
            raise CorruptCheckpointError(
                f"tensor {entry.fqn!r}: saved chunks cover {covered} of the {piece.box.numel} elements of "
                f"box offsets={piece.box.offsets} lengths={piece.box.lengths}"
            )
    return items


@dataclass
class _Range:
    file: str
    start: int
    end: int
    items: list[tuple[CopyItem, int, int]]  # item, first block, end block
    direct: bool = False  # one whole chunk read straight into its (contiguous CPU) destination


def _reads_directly(item: CopyItem) -> bool:
    return (
        item.overlap == item.chunk.box
        and item.dest.is_contiguous()
        and item.dest.device.type == "cpu"
    )


def _merge_ranges(items: Iterable[CopyItem], block_size: int) -> list[_Range]:
    spans = []
    ranges: list[_Range] = []
    for item in items:
        if _reads_directly(item):
            loc = item.chunk.location
            ranges.append(_Range(loc.file, loc.offset, loc.offset + loc.length,
                                 [(item, 0, len(item.chunk.block_hashes))], direct=True))
            continue
        lo, hi = item.block_range(block_size)
        loc = item.chunk.location
        start = loc.offset + lo * block_size
        end = loc.offset + min(hi * block_size, loc.length)
        spans.append((loc.file, start, end, item, lo, hi))
    spans.sort(key=lambda s: (s[0], s[1], s[2]))
    for file, start, end, item, lo, hi in spans:
        last = ranges[-1] if ranges and not ranges[-1].direct else None
        if (
            last is not None
            and last.file == file
            and start - last.end <= MERGE_GAP_BYTES
            and max(end, last.end) - last.start <= MAX_MERGED_BYTES
        ):
            last.end = max(last.end, end)
            last.items.append((item, lo, hi))
        else:
            ranges.append(_Range(file, start, end, [(item, lo, hi)]))
    return ranges


def execute_copies(storage: Storage, items: list[CopyItem], block_size: int, threads: int = READ_THREADS) -> int:
    """Read, verify and copy every item; return the number of bytes read."""
    ranges = _merge_ranges(items, block_size)
    if len(ranges) <= 1 or threads <= 1:
        return sum(_read_range(storage, r, block_size) for r in ranges)
    with ThreadPoolExecutor(max_workers=min(threads, len(ranges)), thread_name_prefix="bcp-read") as pool:
        return sum(pool.map(lambda r: _read_range(storage, r, block_size), ranges))


def _read_range(storage: Storage, rng: _Range, block_size: int) -> int:
    where = storage.describe(rng.file)
    if rng.direct:
        buffer = rng.items[0][0].dest.reshape(-1).view(torch.uint8)
    else:
        buffer = torch.empty(rng.end - rng.start, dtype=torch.uint8)
    try:
        got = storage.read_into(rng.file, rng.start, memoryview(buffer.numpy()))
    except FileNotFoundError:
        names = sorted({item.entry.fqn for item, _, _ in rng.items})
        raise TruncatedDataError(f"{where}: data file is missing (needed by tensor(s) {names})") from None
    if got < len(buffer):
        short = sorted({item.entry.fqn for item, _, _ in rng.items
                        if item.chunk.location.offset + item.chunk.location.length > rng.start + got})
        raise TruncatedDataError(
            f"{where}: truncated: the data file ends at byte {rng.start + got}, but tensor(s) {short} "
            f"need bytes up to {rng.end}"
        )
    raw = memoryview(buffer.numpy())
    verified: set[tuple[int, int]] = set()
    with torch.no_grad():
        for item, lo, hi in rng.items:
            loc = item.chunk.location
            for block in range(lo, hi):
                if (loc.offset, block) in verified:
                    continue
                a = loc.offset + block * block_size - rng.start
                b = min(a + block_size, loc.offset + loc.length - rng.start)
                expected = item.chunk.block_hashes[block]
                actual = hash_block(raw[a:b])
                if actual != expected:
                    raise ChecksumMismatchError(
                        f"{where}: checksum mismatch in tensor {item.entry.fqn!r} (chunk offsets="
                        f"{list(item.chunk.box.offsets)}, bytes {a + rng.start}-{b + rng.start}): "
                        f"xxh3 {actual}, expected {expected}"
                    )
                verified.add((loc.offset, block))
            if not rng.direct:
                item.dest.copy_(_source_view(buffer, rng.start, item))
    return len(buffer)


def _source_view(buffer: torch.Tensor, range_start: int, item: CopyItem) -> torch.Tensor:
    size = itemsize(item.entry.dtype)
    first, end = item.element_span()
    a = item.chunk.location.offset + first * size - range_start
    typed = buffer[a : a + (end - first) * size].view(torch_dtype(item.entry.dtype))
    strides = row_major_strides(item.chunk.box.lengths)
    return typed.as_strided(item.overlap.lengths, strides, typed.storage_offset())
