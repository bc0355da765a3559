"""Writing one rank's share of a save plan into its data file, hashing as it goes."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from .boxes import ShardBox
from .checksums import block_hashes
from .commit import save_folder
from .metadata import ChunkLocation, Path
from .planner import BoxKey
from .staging import STAGING_SLICE_BYTES, staged_slices
from .storage import DataWriter, Storage

ALIGNMENT = 64  # chunk byte offsets are multiples of this, so any dtype can view them in place
_PADDING = bytes(ALIGNMENT)


def data_file_name(save_id: str, rank: int) -> str:
    """Each save writes under its own id, so a committed checkpoint at the same path stays intact
    until the new metadata replaces it."""
    return f"{save_folder(save_id)}/rank{rank:05d}.bin"


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
    hashing each slice while the previous one is being written; return their locations."""
    if not keys:
        return []
    slice_bytes = max(block_size, STAGING_SLICE_BYTES // block_size * block_size)  # whole blocks per slice
    writer = storage.open_writer(name)
    sink = _WriteBehind(writer)
    written: list[WrittenChunk] = []
    offset = 0
    start = got = 0
    hashes: list[str] = []
    try:
        for piece in staged_slices([(key, data[key]) for key in keys], slice_bytes):
            if got == 0:  # the first slice of a chunk
                pad = -offset % ALIGNMENT
                if pad:
                    sink.put(memoryview(_PADDING)[:pad])
                    offset += pad
                start, hashes = offset, []
            raw = memoryview(piece.data.numpy())
            hashes += block_hashes(raw, block_size)
            sink.put(raw, piece.release)
            got += len(raw)
            offset += len(raw)
            if got == piece.chunk_bytes:
                written.append(WrittenChunk(piece.key[0], piece.key[1], ChunkLocation(name, start, got), tuple(hashes)))
                got = 0
        sink.finish()
        writer.close()
    except BaseException:
        sink.cancel()
        writer.abort()
        raise
    return written


class _WriteBehind:
    """Writes slices in a thread of its own, so hashing the next slice overlaps writing this one
    (file writes release the GIL). At most ``depth`` slices wait; ``release`` runs once written."""

    def __init__(self, writer: DataWriter, depth: int = 2) -> None:
        self.writer = writer
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="bcp-write", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            data, release = item
            try:
                if self.error is None:
                    self.writer.write(data)
            except BaseException as exc:  # noqa: BLE001 - raised in the producer
                self.error = exc
            finally:
                release()

    def put(self, data: memoryview, release: Callable[[], None] = lambda: None) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((data, release))

    def finish(self) -> None:
        """Wait until every slice is written; raise the first write error."""
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error

    def cancel(self) -> None:
        if self.thread.is_alive():
            self.error = self.error or RuntimeError("cancelled")
            self.queue.put(None)
            self.thread.join()
