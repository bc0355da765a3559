"""nccl-tests' bandwidth definitions: algorithm bandwidth and bus bandwidth of a collective.

``size_bytes`` is nccl-tests' size: the per-rank buffer (all-reduce input, all-gather output,
reduce-scatter input, all-to-all send buffer). ``algbw = size / seconds``; ``busbw`` multiplies it by a
collective's factor so that it is comparable with the hardware's link bandwidth:

==========================================  ==============
collective                                  factor
==========================================  ==============
all-reduce                                  2 (n - 1) / n
all-gather, reduce-scatter, all-to-all      (n - 1) / n
broadcast, reduce, send-recv                1
==========================================  ==============

Both are in bytes per second (nccl-tests prints GB/s = 1e9 bytes/s).
"""

from __future__ import annotations

from netsim.errors import TrafficError

_ALLREDUCE = frozenset({"allreduce", "ring-allreduce", "hd-allreduce", "tree-allreduce"})
_N_MINUS_1 = frozenset({"allgather", "ring-allgather", "reducescatter", "ring-reducescatter", "alltoall"})
_ONE = frozenset({"broadcast", "reduce", "sendrecv"})
COLLECTIVE_NAMES = tuple(sorted(_ALLREDUCE | _N_MINUS_1 | _ONE))


def bus_factor(collective: str, ranks: int) -> float:
    """nccl-tests' busbw / algbw factor of ``collective`` on ``ranks`` ranks."""
    if not isinstance(ranks, int) or ranks < 1:
        raise TrafficError(f"ranks must be a positive integer, found {ranks!r}")
    if collective in _ALLREDUCE:
        return 2 * (ranks - 1) / ranks
    if collective in _N_MINUS_1:
        return (ranks - 1) / ranks
    if collective in _ONE:
        return 1.0
    raise TrafficError(f"no bus bandwidth factor for collective {collective!r}; expected one of "
                       f"{', '.join(COLLECTIVE_NAMES)}")


def algbw(size_bytes: float, seconds: float) -> float:
    """Algorithm bandwidth in bytes/s: ``size_bytes / seconds``."""
    if not size_bytes >= 0:
        raise TrafficError(f"size_bytes must be >= 0, found {size_bytes!r}")
    if not seconds > 0:
        raise TrafficError(f"seconds must be > 0 to compute a bandwidth, found {seconds!r}")
    return size_bytes / seconds


def busbw(collective: str, size_bytes: float, seconds: float, ranks: int) -> float:
    """Bus bandwidth in bytes/s: ``algbw * bus_factor(collective, ranks)`` (nccl-tests' definition)."""
    return algbw(size_bytes, seconds) * bus_factor(collective, ranks)
