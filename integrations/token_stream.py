"""A reshardable token-stream dataloader: documents packed into fixed-length sequences per
data-parallel rank, whose position survives a change of the data-parallel degree with every
token seen exactly once.

Documents are addressed by *position* in an endless stream (position p is document
``perm_e[p mod N]`` of epoch ``e = p // N``). The positions not yet taken form a sequence
``S = pending + [frontier, frontier + 1, ...]``; rank r of W takes ``S[r], S[r + W], ...``.
Replicated state: ``pending``, ``frontier``, ``world``. Per-rank state: how many positions the rank
has taken, and its buffer of tokens read but not yet emitted (as document segments). Resuming at
the same world size continues exactly; at another, the taken positions are removed from S, and old
rank r's buffer goes to new rank ``r % world``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class TokenStream:
    """Deterministic synthetic documents of random lengths (nothing downloaded)."""

    num_docs: int = 1000
    vocab_size: int = 256
    min_len: int = 8
    max_len: int = 96
    seed: int = 0

    def length(self, doc: int) -> int:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + doc)
        return int(torch.randint(self.min_len, self.max_len + 1, (1,), generator=g))

    def document_at(self, position: int) -> int:
        epoch, index = divmod(position, self.num_docs)
        perm = torch.randperm(self.num_docs, generator=torch.Generator().manual_seed(self.seed + 7919 * epoch))
        return int(perm[index])

    def tokens(self, doc: int, start: int, end: int) -> torch.Tensor:
        """Tokens ``start:end`` of document ``doc``: a learnable pattern (a noisy arithmetic progression)."""
        g = torch.Generator().manual_seed(self.seed * 7 + doc)
        step = int(torch.randint(1, 7, (1,), generator=g))
        base = int(torch.randint(0, self.vocab_size, (1,), generator=g))
        idx = torch.arange(start, end)
        return (base + step * idx) % self.vocab_size


Segment = tuple[int, int, int]  # (position, start token, end token)


class TokenStreamLoader:
    """Yields ``(tokens, segments)``: tokens is ``(batch_size, seq_len + 1)`` int64 (inputs and
    shifted targets), segments the ``(position, start, end)`` pieces of documents it holds."""

    def __init__(self, stream: TokenStream, batch_size: int, seq_len: int, rank: int = 0, world: int = 1) -> None:
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} outside world of {world}")
        self.stream, self.batch_size, self.seq_len = stream, batch_size, seq_len
        self.rank, self.world = rank, world
        self.pending: list[int] = []
        self.frontier = 0
        self.taken = 0
        self.buffer: list[Segment] = []

    def _position(self, index: int) -> int:
        return self.pending[index] if index < len(self.pending) else self.frontier + index - len(self.pending)

    def _take_document(self) -> None:
        position = self._position(self.rank + self.taken * self.world)
        self.taken += 1
        self.buffer.append((position, 0, self.stream.length(self.stream.document_at(position))))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, list[Segment]]]:
        return self

    def __next__(self) -> tuple[torch.Tensor, list[Segment]]:
        need = self.batch_size * (self.seq_len + 1)
        while sum(e - s for _, s, e in self.buffer) < need:
            self._take_document()
        pieces, segments, got = [], [], 0
        while got < need:
            position, start, end = self.buffer[0]
            n = min(end - start, need - got)
            pieces.append(self.stream.tokens(self.stream.document_at(position), start, start + n))
            segments.append((position, start, start + n))
            got += n
            if start + n == end:
                self.buffer.pop(0)
            else:
                self.buffer[0] = (position, start + n, end)
        return torch.cat(pieces).view(self.batch_size, self.seq_len + 1), segments

    def reshard_state(self) -> tuple[Any, Any]:
        replicated = {"pending": self.pending, "frontier": self.frontier, "world": self.world}
        return replicated, {"taken": self.taken, "buffer": [list(s) for s in self.buffer]}

    def load_reshard_state(self, replicated: Any, per_rank: list[Any], rank: int, world: int) -> None:
        old_world = replicated["world"]
        if len(per_rank) != old_world:
            raise ValueError(f"dataloader state has {len(per_rank)} per-rank parts for a world of {old_world}")
        self.pending, self.frontier = list(replicated["pending"]), replicated["frontier"]
        if world == old_world:  # same layout: continue exactly where this rank stopped
            self.rank, self.world, self.taken = rank, world, per_rank[rank]["taken"]
            self.buffer = [tuple(s) for s in per_rank[rank]["buffer"]]
            return
        taken = {self._position(r + j * old_world) for r, part in enumerate(per_rank) for j in range(part["taken"])}
        new_frontier = max([self.frontier, *(p + 1 for p in taken)])
        remaining = [*self.pending, *range(self.frontier, new_frontier)]
        self.pending = [p for p in remaining if p not in taken]
        self.frontier = new_frontier
        self.rank, self.world, self.taken = rank, world, 0
        self.buffer = [tuple(s) for r, part in enumerate(per_rank) if r % world == rank for s in part["buffer"]]
