"""Collectives as dependency-ordered steps of flows between ranks.

Sizes follow nccl-tests: ``size`` is the per-rank buffer in bytes (all-reduce input, all-gather output,
reduce-scatter input, all-to-all send buffer). Steps with the same pattern are the same FlowSet object.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from netsim.errors import TrafficError
from netsim.traffic import FlowSet, Job


def _ring_step(n: int, chunk: float) -> FlowSet:
    ranks = np.arange(n)
    return FlowSet.build(ranks, (ranks + 1) % n, chunk)


def ring_allreduce(n: int, size: float) -> tuple[FlowSet, ...]:
    """Reduce-scatter then all-gather around a ring: 2(n-1) steps of size/n per rank."""
    return (_ring_step(n, size / n),) * (2 * (n - 1))


def ring_allgather(n: int, size: float) -> tuple[FlowSet, ...]:
    """All-gather around a ring: n-1 steps of size/n per rank."""
    return (_ring_step(n, size / n),) * (n - 1)


def ring_reducescatter(n: int, size: float) -> tuple[FlowSet, ...]:
    """Reduce-scatter around a ring: n-1 steps of size/n per rank."""
    return (_ring_step(n, size / n),) * (n - 1)


def halving_doubling_allreduce(n: int, size: float) -> tuple[FlowSet, ...]:
    """Recursive-halving reduce-scatter then recursive-doubling all-gather (n a power of two)."""
    if n & (n - 1):
        raise TrafficError(f"halving-doubling needs a power-of-two rank count, found {n}")
    ranks = np.arange(n)
    halving = []
    distance, chunk = n // 2, size / 2
    while distance >= 1:
        halving.append(FlowSet.build(ranks, ranks ^ distance, chunk))
        distance, chunk = distance // 2, chunk / 2
    return tuple(halving) + tuple(reversed(halving))


def tree_allreduce(n: int, size: float) -> tuple[FlowSet, ...]:
    """Binary-tree reduce (deepest level first) then broadcast, whole buffer per edge, no pipelining."""
    ranks = np.arange(1, n)
    depth = np.floor(np.log2(ranks + 1)).astype(np.int64)
    parent = (ranks - 1) // 2
    reduce_steps = [FlowSet.build(ranks[depth == d], parent[depth == d], size)
                    for d in range(int(depth.max()), 0, -1)]
    bcast_steps = [FlowSet.build(parent[depth == d], ranks[depth == d], size)
                   for d in range(1, int(depth.max()) + 1)]
    return tuple(reduce_steps + bcast_steps)


def alltoall(n: int, size: float) -> tuple[FlowSet, ...]:
    """Every rank sends size/n to every other rank, all flows starting together (one step)."""
    src, dst = np.meshgrid(np.arange(n), np.arange(n), indexing="ij")
    keep = src != dst
    return (FlowSet.build(src[keep], dst[keep], size / n),)


COLLECTIVES: dict[str, Callable[[int, float], tuple[FlowSet, ...]]] = {
    "ring-allreduce": ring_allreduce,
    "ring-allgather": ring_allgather,
    "ring-reducescatter": ring_reducescatter,
    "hd-allreduce": halving_doubling_allreduce,
    "tree-allreduce": tree_allreduce,
    "alltoall": alltoall,
}


def collective_steps(name: str, n: int, size: float) -> tuple[FlowSet, ...]:
    """Steps of the named collective for ``n`` ranks and a per-rank buffer of ``size`` bytes."""
    if name not in COLLECTIVES:
        raise TrafficError(f"unknown collective {name!r}; expected one of {', '.join(COLLECTIVES)}")
    if n < 2:
        raise TrafficError(f"a collective needs at least 2 ranks, found {n}")
    if not size > 0:
        raise TrafficError(f"collective size must be > 0 bytes, found {size!r}")
    return COLLECTIVES[name](n, float(size))


def collective_job(name: str, collective: str, hosts: np.ndarray, size: float, job_index: int = 0,
                   start: float = 0.0) -> Job:
    """A job running ``collective`` with rank ``r`` on host ``hosts[r]``."""
    mapped: dict[int, FlowSet] = {}
    steps = []
    for step in collective_steps(collective, len(hosts), size):
        if id(step) not in mapped:
            mapped[id(step)] = step.on_hosts(hosts, job_index)
        steps.append(mapped[id(step)])
    return Job(name, tuple(steps), start)
