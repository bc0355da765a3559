"""Writing one rank's share of a save plan into its data file, hashing as it goes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .boxes import ShardBox
from .checksums import block_hashes
from .metadata import ChunkLocation, Path
from .planner import BoxKey
from .staging import STAGING_SLICE_BYTES, staged_slices
from .storage import Storage

DATA_DIR = "data"
ALIGNMENT = 64  # chunk byte offsets are multiples of this, so any dtype can view them in place
_PADDING = bytes(ALIGNMENT)


def data_file_name(save_id: str, rank: int) -> str:
    """Each save writes under its own id, so a committed checkpoint at the same path stays intact
    until the new metadata replaces it."""
    return f"{DATA_DIR}/{save_id}/rank{rank:05d}.bin"


@dataclass(frozen=True)
class WrittenChunk:
    path: Path
    box: ShardBox
    location: ChunkLocation
    hashes: tuple[str, ...]


def write_rank_data(
    storage: Storage,
    name: str,
    keys: list[BoxKey],
    data: dict[BoxKey, torch.Tensor],
    block_size: int,
) -> list[WrittenChunk]:
    """Write the boxes ``keys`` (tensors from ``data``, on any device) into the file ``name``,
    hashing each slice as it is written; return their locations."""
    if not keys:
        return []
    slice_bytes = max(block_size, STAGING_SLICE_BYTES // block_size * block_size)  # whole blocks per slice
    writer = storage.open_writer(name)
    written: list[WrittenChunk] = []
    offset = 0
    start = got = 0
    hashes: list[str] = []
    try:
        for piece in staged_slices([(key, data[key]) for key in keys], slice_bytes):
            if got == 0:  # the first slice of a chunk
                pad = -offset % ALIGNMENT
                if pad:
                    writer.write(memoryview(_PADDING)[:pad])
                    offset += pad
                start, hashes = offset, []
            raw = memoryview(piece.data.numpy())
            hashes += block_hashes(raw, block_size)
            writer.write(raw)
            piece.release()
            got += len(raw)
            offset += len(raw)
            if got == piece.chunk_bytes:
                written.append(WrittenChunk(piece.key[0], piece.key[1], ChunkLocation(name, start, got), tuple(hashes)))
                got = 0
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return written
