"""Reading saved chunks into target tensors: intersect, coalesce byte ranges, verify, copy.

Each copy needs a sub-box of a saved chunk; its bytes span a range of the chunk's data, widened
to whole checksum blocks so every block read can be verified. Ranges of one file that lie close
together are merged into one read; reads of different ranges run in parallel threads.

Errors name the file, tensor and byte range, never the hash of the bytes found (a data file that
is not what the metadata says must not become a way to learn its contents).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from .boxes import ShardBox, intersect, row_major_strides
from .checksums import hash_block
from .dtypes import itemsize, torch_dtype
from .errors import (
    AllocationError,
    ChecksumMismatchError,
    CorruptCheckpointError,
    MetadataError,
    MissingDataFileError,
    TruncatedDataError,
    UnsafeFileError,
)
from .metadata import ChunkLocation, SavedChunk, TensorEntry
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
        return first * size // block_size, -(-end * size // block_size)


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
            items.append(CopyItem(entry, chunk, overlap, piece.target[overlap.relative_to(piece.box)]))
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
        and not item.dest.is_conj()
        and not item.dest.is_neg()
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
    buffer = _read_and_verify(storage, rng, block_size)
    if not rng.direct:
        with torch.no_grad():
            for item, _, _ in rng.items:
                item.dest.copy_(source_view(buffer, rng.start, item))
    return len(buffer)


def read_range_into(storage: Storage, file: str, offset: int, buffer: torch.Tensor, needed_by: str) -> int:
    """Read the bytes of ``file`` from ``offset`` into the uint8 ``buffer``; the count read (short at the
    file's end). A missing or unsafe file is an error naming it and ``needed_by``."""
    try:
        return storage.read_into(file, offset, memoryview(buffer.numpy()))
    except FileNotFoundError:
        raise MissingDataFileError(f"{storage.describe(file)}: data file is missing (needed by {needed_by})") from None
    except UnsafeFileError as exc:
        raise UnsafeFileError(f"{exc} (needed by {needed_by})") from None


def read_verified(storage: Storage, chunk: ChunkLocation, items: Sequence[CopyItem], block_size: int) -> torch.Tensor:
    """The whole saved ``chunk`` (which ``items`` copy from), every block verified, in a new buffer."""
    nblocks = len(items[0].chunk.block_hashes)
    rng = _Range(chunk.file, chunk.offset, chunk.offset + chunk.length, [(item, 0, nblocks) for item in items])
    return _read_and_verify(storage, rng, block_size)


def _read_and_verify(storage: Storage, rng: _Range, block_size: int) -> torch.Tensor:
    """Read ``rng`` (into the direct item's destination, or a new buffer) and verify its items' blocks."""
    where = storage.describe(rng.file)
    names = sorted({item.entry.fqn for item, _, _ in rng.items})
    if rng.direct:
        buffer = rng.items[0][0].dest.reshape(-1).view(torch.uint8)
    else:
        buffer = allocate(rng.end - rng.start, torch.uint8, f"a read buffer of {where} for tensor(s) {names}")
    got = read_range_into(storage, rng.file, rng.start, buffer, f"tensor(s) {names}")
    if got < len(buffer):
        short = sorted({item.entry.fqn for item, _, _ in rng.items
                        if item.chunk.location.offset + item.chunk.location.length > rng.start + got})
        raise truncation_error(storage, rng.file, rng.start, rng.end, short)
    raw = memoryview(buffer.numpy())
    verified: set[tuple[int, int, int]] = set()
    with torch.no_grad():
        for item, lo, hi in rng.items:
            loc = item.chunk.location
            for block in range(lo, hi):
                if (loc.offset, loc.length, block) in verified:
                    continue
                a = loc.offset + block * block_size - rng.start
                b = min(a + block_size, loc.offset + loc.length - rng.start)
                if hash_block(raw[a:b]) != item.chunk.block_hashes[block]:
                    raise ChecksumMismatchError(
                        f"{where}: checksum mismatch in tensor {item.entry.fqn!r} (chunk offsets="
                        f"{list(item.chunk.box.offsets)}, bytes {a + rng.start}-{b + rng.start}): the bytes "
                        "differ from the ones saved"
                    )
                verified.add((loc.offset, loc.length, block))
    return buffer


def source_view(buffer: torch.Tensor, range_start: int, item: CopyItem) -> torch.Tensor:
    size = itemsize(item.entry.dtype)
    first, end = item.element_span()
    a = item.chunk.location.offset + first * size - range_start
    raw = buffer[a : a + (end - first) * size]
    if a % size:  # the format does not promise aligned chunks: a typed view needs an aligned copy
        raw = raw.clone()
    typed = raw.view(torch_dtype(item.entry.dtype))
    strides = row_major_strides(item.chunk.box.lengths)
    return typed.as_strided(item.overlap.lengths, strides, typed.storage_offset())


def check_chunk_bytes(storage: Storage, tensors: Sequence[TensorEntry]) -> None:
    """Before anything is allocated: every chunk's bytes lie inside its data file (a regular file),
    and no two chunks share bytes, so whole tensors take no more memory than the data files hold."""
    sizes: dict[str, int] = {}
    spans: dict[str, list[tuple[int, int, str]]] = {}
    for entry in tensors:
        for chunk in entry.chunks:
            loc = chunk.location
            if not loc.length:
                continue
            if loc.file not in sizes:
                try:
                    sizes[loc.file] = storage.size(loc.file)
                except FileNotFoundError:
                    raise MissingDataFileError(
                        f"{storage.describe(loc.file)}: data file is missing (needed by tensor {entry.fqn!r})"
                    ) from None
                except UnsafeFileError as exc:
                    raise UnsafeFileError(f"{exc} (needed by tensor {entry.fqn!r})") from None
            if loc.offset + loc.length > sizes[loc.file]:
                raise truncation_error(storage, loc.file, loc.offset, loc.offset + loc.length, [entry.fqn],
                                       sizes[loc.file])
            spans.setdefault(loc.file, []).append((loc.offset, loc.offset + loc.length, entry.fqn))
    for file, ranges in spans.items():
        ranges.sort()
        for (_, end, first), (start, _, second) in itertools.pairwise(ranges):
            if start < end:
                raise MetadataError(
                    f"{storage.describe(file)}: tensors {first!r} and {second!r} point at the same bytes "
                    f"(from {start} to {end}); writers never share bytes between chunks"
                )


def truncation_error(storage: Storage, file: str, start: int, end: int, tensors: Sequence[str],
                     size: int | None = None) -> TruncatedDataError:
    """The error for a data file too short for the bytes ``start``-``end`` that ``tensors`` need:
    it names the file's actual size (asked of the storage unless given), not where the read began."""
    if size is None:
        try:
            size = storage.size(file)
        except OSError:  # gone or unreadable meanwhile: say what is known
            size = None
    actual = f"is {size} bytes long" if size is not None else "could not be measured"
    return TruncatedDataError(
        f"{storage.describe(file)}: truncated: the data file {actual}, but tensor(s) {sorted(tensors)} need "
        f"bytes {start}-{end}"
    )


def allocate(shape: int | tuple[int, ...], dtype: torch.dtype, what: str) -> torch.Tensor:
    """``torch.empty``, with a failure (out of memory, a size torch refuses) an AllocationError naming ``what``."""
    try:
        return torch.empty(shape, dtype=dtype)
    except (RuntimeError, MemoryError, ValueError, OverflowError) as exc:
        raise AllocationError(f"cannot allocate {what} (shape {shape}, {dtype}): {str(exc).splitlines()[0][:200]}") from None
