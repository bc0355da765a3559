"""Writing one rank's share of a save plan into its data file, hashing as it goes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .boxes import ShardBox
from .checksums import block_hashes
from .metadata import ChunkLocation, Path
from .planner import BoxKey
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


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw little-endian bytes of a contiguous CPU tensor, without copying."""
    return memoryview(tensor.reshape(-1).view(torch.uint8).numpy())


def snapshot(tensor: torch.Tensor, copy: bool) -> torch.Tensor:
    """A contiguous CPU tensor with ``tensor``'s values; a private copy if ``copy``."""
    out = tensor.detach()
    if out.device.type != "cpu":
        return out.to("cpu").contiguous()
    out = out.contiguous()
    return out.clone() if copy and out.data_ptr() == tensor.data_ptr() else out


def write_rank_data(
    storage: Storage,
    name: str,
    keys: list[BoxKey],
    data: dict[BoxKey, torch.Tensor],
    block_size: int,
) -> list[WrittenChunk]:
    """Write the boxes ``keys`` (data from ``data``) into the file ``name``; return their locations."""
    if not keys:
        return []
    writer = storage.open_writer(name)
    written: list[WrittenChunk] = []
    offset = 0
    try:
        for key in keys:
            raw = tensor_bytes(data[key])
            pad = -offset % ALIGNMENT
            if pad:
                writer.write(memoryview(_PADDING)[:pad])
                offset += pad
            hashes = block_hashes(raw, block_size)
            writer.write(raw)
            written.append(WrittenChunk(key[0], key[1], ChunkLocation(name, offset, len(raw)), hashes))
            offset += len(raw)
        writer.close()
    except BaseException:
        writer.abort()
        raise
    return written
