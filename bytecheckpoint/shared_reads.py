"""Read once, share: a saved chunk that several ranks need is read by one of them and broadcast.

Replicated tensors (DDP, TP replicas, a resharded load where target boxes straddle one saved
chunk) would otherwise be read from storage by every rank that needs them. The plan is a pure
function of every rank's needs, so all ranks compute the same one: each shared chunk goes to the
needing rank that has the fewest bytes to read so far (largest chunks first). The exchange then
runs chunk by chunk in that order on the checkpoint's own group: the reader reads and verifies the
whole chunk (the next one is read ahead while this one is broadcast), broadcasts a status word and
then the bytes; every needing rank copies its parts into place. A failed read is broadcast as a
status, so the other ranks never wait for bytes that will not come; the reader raises its error
after the exchange, which fails the load phase on every rank.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .collectives import Communicator
from .metadata import ChunkLocation
from .reader import CopyItem, allocate, read_verified, source_view
from .storage import Storage


@dataclass(frozen=True)
class SharePlan:
    """``readers[chunk]``: who reads each chunk needed by two or more ranks, in exchange order."""

    readers: dict[ChunkLocation, int]

    def is_shared(self, item: CopyItem) -> bool:
        return item.chunk.location in self.readers


def chunk_needs(items: Sequence[CopyItem]) -> tuple[ChunkLocation, ...]:
    """The saved chunks this rank's copies touch (what it tells the other ranks)."""
    return tuple(dict.fromkeys(item.chunk.location for item in items))


def plan_sharing(needs: Sequence[Sequence[ChunkLocation]]) -> SharePlan:
    """Assign each chunk that several ranks need to one of them (index = rank), balancing bytes."""
    holders: dict[ChunkLocation, list[int]] = {}
    for rank, chunks in enumerate(needs):
        for chunk in chunks:
            holders.setdefault(chunk, []).append(rank)
    load = [sum(c.length for c in chunks if len(holders[c]) == 1) for chunks in needs]
    readers: dict[ChunkLocation, int] = {}
    shared = sorted((c for c, ranks in holders.items() if len(ranks) > 1),
                    key=lambda c: (-c.length, c.file, c.offset))
    for chunk in shared:
        reader = min(holders[chunk], key=lambda r: (load[r], r))
        readers[chunk] = reader
        load[reader] += chunk.length
    return SharePlan(readers)


def exchange_shared(
    comm: Communicator, storage: Storage, plan: SharePlan, items: Sequence[CopyItem], block_size: int
) -> int:
    """Run the exchange of every shared chunk (all ranks, same order); copy this rank's parts into
    place. Returns the bytes this rank read from storage; raises this rank's read error at the end."""
    mine: dict[ChunkLocation, list[CopyItem]] = {}
    for item in items:
        mine.setdefault(item.chunk.location, []).append(item)
    order = list(plan.readers)
    to_read = [c for c in order if plan.readers[c] == comm.rank]
    nbytes = 0
    failure: BaseException | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="bcp-share-read") as pool:
        ahead: dict[ChunkLocation, Future] = {}

        def read_ahead(index: int) -> None:
            if index < len(to_read) and to_read[index] not in ahead:
                chunk = to_read[index]
                ahead[chunk] = pool.submit(read_verified, storage, chunk, mine[chunk], block_size)

        read_ahead(0)
        next_read = 0
        for chunk in order:
            reader = plan.readers[chunk]
            status = torch.zeros(1, dtype=torch.int64)
            buffer: torch.Tensor | None = None
            if reader == comm.rank:
                next_read += 1
                read_ahead(next_read)  # overlaps this chunk's broadcast
                try:
                    buffer = ahead.pop(chunk).result()
                    nbytes += chunk.length
                except Exception as exc:  # noqa: BLE001 - raised after the exchange
                    failure = failure or exc
                    status[0] = 1
            src = dist.get_global_rank(comm.group, reader)
            dist.broadcast(status, src=src, group=comm.group)
            if status[0]:
                continue
            if buffer is None:
                buffer = allocate(chunk.length, torch.uint8, f"the shared chunk {chunk.file}@{chunk.offset}")
            dist.broadcast(buffer, src=src, group=comm.group)
            if failure is None:
                with torch.no_grad():
                    for item in mine.get(chunk, ()):
                        item.dest.copy_(source_view(buffer, chunk.offset, item))
    if failure is not None:
        raise failure
    return nbytes
