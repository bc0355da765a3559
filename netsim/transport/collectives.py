"""Ring all-reduce, all-gather, reduce-scatter and an all-to-all over :class:`SplitTcpTransport`.

Sizes follow nccl-tests: all-gather's output and reduce-scatter's input are ``world`` blocks of the
per-rank block; all-to-all's send and receive buffers hold one block per rank. Reductions are sums.
Every rank must call the same collective with the same shapes; a mismatch becomes a
:class:`~netsim.transport.errors.MessageLengthError` on the ranks involved and closes their transports.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from netsim.transport.buffers import as_array
from netsim.transport.errors import TransportError
from netsim.transport.split_tcp import SplitTcpTransport


def _blocks(arr: np.ndarray, n: int) -> list[np.ndarray]:
    flat = arr.reshape(-1)
    edges = [len(flat) * i // n for i in range(n + 1)]
    return [flat[edges[i] : edges[i + 1]] for i in range(n)]


def ring_pairs(world: int) -> list[tuple[int, int]]:
    """The directed pairs a ring collective uses (rank r -> r+1)."""
    return [(r, (r + 1) % world) for r in range(world)]


def alltoall_pairs(world: int) -> list[tuple[int, int]]:
    """The directed pairs an all-to-all uses (every ordered pair)."""
    return [(s, d) for s in range(world) for d in range(world) if s != d]


def _ring_reduce_scatter(t: SplitTcpTransport, blocks: list[np.ndarray]) -> None:
    """In place: afterwards ``blocks[t.rank]`` holds the sum over ranks of that block."""
    n, r = t.world, t.rank
    nxt, prv = (r + 1) % n, (r - 1) % n
    scratch = np.empty(max(len(b) for b in blocks), dtype=blocks[0].dtype)
    for s in range(n - 1):
        send_i, recv_i = (r - s - 1) % n, (r - s - 2) % n
        tmp = scratch[: len(blocks[recv_i])]
        t.exchange({nxt: blocks[send_i]}, {prv: tmp})
        np.add(blocks[recv_i], tmp, out=blocks[recv_i])


def _ring_allgather(t: SplitTcpTransport, blocks: list[np.ndarray]) -> None:
    """In place: ``blocks[t.rank]`` is circulated so every rank ends with every block."""
    n, r = t.world, t.rank
    nxt, prv = (r + 1) % n, (r - 1) % n
    for s in range(n - 1):
        t.exchange({nxt: blocks[(r - s) % n]}, {prv: blocks[(r - s - 1) % n]})


def allreduce(t: SplitTcpTransport, buf: Any) -> None:
    """Ring all-reduce (sum) of ``buf`` in place: reduce-scatter, then all-gather, 2(n-1) steps."""
    arr = as_array(buf)
    _check_contiguous(arr, "allreduce buffer")
    if t.world == 1:
        return
    blocks = _blocks(arr, t.world)
    _ring_reduce_scatter(t, blocks)
    _ring_allgather(t, blocks)


def allgather(t: SplitTcpTransport, send: Any, out: Any) -> None:
    """Ring all-gather: ``out`` (world x len(send) elements) gets every rank's ``send``, in rank order."""
    src, dst = as_array(send), as_array(out)
    _check_contiguous(dst, "allgather output")
    if dst.size != src.size * t.world:
        raise TransportError(f"allgather output has {dst.size} elements; expected {t.world} x {src.size}")
    blocks = _blocks(dst, t.world)
    blocks[t.rank][:] = src.reshape(-1)
    _ring_allgather(t, blocks)


def reducescatter(t: SplitTcpTransport, send: Any, out: Any) -> None:
    """Ring reduce-scatter (sum): ``out`` gets block ``rank`` of the sum of every rank's ``send``."""
    src, dst = as_array(send), as_array(out)
    if src.size != dst.size * t.world:
        raise TransportError(f"reducescatter input has {src.size} elements; expected {t.world} x {dst.size}")
    work = src.reshape(-1).copy()
    blocks = _blocks(work, t.world)
    _ring_reduce_scatter(t, blocks)
    dst.reshape(-1)[:] = blocks[t.rank]


def alltoall(t: SplitTcpTransport, send: Any, out: Any) -> None:
    """All-to-all: block p of ``send`` goes to rank p, arriving as block ``rank`` of p's ``out``.

    All world-1 messages are in flight at once (as the simulator's one-step all-to-all).
    """
    src, dst = as_array(send), as_array(out)
    _check_contiguous(dst, "alltoall output")
    if src.size != dst.size or src.size % t.world:
        raise TransportError(
            f"alltoall buffers must have equal sizes divisible by {t.world}; found {src.size} and {dst.size}"
        )
    sb, rb = _blocks(np.ascontiguousarray(src), t.world), _blocks(dst, t.world)
    rb[t.rank][:] = sb[t.rank]
    peers = [p for p in range(t.world) if p != t.rank]
    t.exchange({p: sb[p] for p in peers}, {p: rb[p] for p in peers})


def _check_contiguous(arr: np.ndarray, what: str) -> None:
    if not arr.flags.c_contiguous or not arr.flags.writeable:
        raise TransportError(f"{what} must be a C-contiguous writable array, found shape {arr.shape}")
