"""``netsim simulate --engine packet``: a path policy's routing replayed packet by packet.

The fluid engine's policies route each step's flows onto subflows and spines; the packet replay needs
every host pair's subflows pinned to spines, as split-TCP's persistent connections are. A pair takes
the routing of the first step that carries it. Fluid spraying (``spray``: a flow spread over every
path in fractions) has no packet-level counterpart and is refused, as are fabrics the packet fabric
does not model (several planes, failed or degraded cables).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from netsim.busbw import algbw, busbw
from netsim.errors import PolicyError, TopologyError, TrafficError
from netsim.packet.replay import PacketParams, PacketResult, replay
from netsim.packet.tcp import MSS
from netsim.policies import PathPolicy
from netsim.topology import LeafSpine
from netsim.traffic import Job

MAX_SEGMENTS = 5_000_000  # about ten minutes of replay in CPython


def pinned_paths(topology: LeafSpine, policy: PathPolicy, job: Job) -> dict[tuple[int, int], tuple[int, ...]]:
    """Every host pair's subflow spines as ``policy`` routes the first step that carries the pair."""
    hosts, spines = topology.hosts, topology.spines
    first_up, last_up = 2 * hosts, 2 * hosts + topology.leaves * spines  # plane 0's leaf->spine links
    paths: dict[tuple[int, int], tuple[int, ...]] = {}
    for flows in job.steps:
        if not len(flows):
            continue
        routing = policy.route(topology, flows)
        if not np.all(routing.entry_weight == 1.0):
            raise PolicyError(f"policy {policy.name!r} spreads a flow over several paths in fractions (fluid "
                              "spraying); the packet engine needs single-path subflows: use ecmp, split, "
                              "random-split or greedy")
        spine = np.zeros(routing.n_sub, dtype=np.int64)  # same-leaf subflows cross no spine
        up = (routing.entry_link >= first_up) & (routing.entry_link < last_up)
        spine[routing.entry_sub[up]] = (routing.entry_link[up] - first_up) % spines
        src, dst = flows.src[routing.flow], flows.dst[routing.flow]
        per_pair: dict[tuple[int, int], list[int]] = {}
        for s, d, sp in zip(src.tolist(), dst.tolist(), spine.tolist()):
            if (s, d) not in paths:
                per_pair.setdefault((s, d), []).append(sp)
        for pair, spines_of_pair in per_pair.items():
            paths[pair] = tuple(spines_of_pair)
    return paths


@dataclass(frozen=True)
class PacketRun:
    """A packet replay of one collective with nccl-tests' figures of its p50 (median over ranks and
    iterations, as ``netsim measure`` reports)."""

    policy: str
    collective: str | None
    size_bytes: float
    ranks: int
    result: PacketResult
    subflows: int

    def seconds(self) -> dict[str, float]:
        """p50 (the median over ranks and iterations), p95, min and max of the ranks' times."""
        samples = self.result.samples_s
        return {"p50": self.result.median_s, "p95": float(np.quantile(samples, 0.95)), "min": min(samples),
                "max": max(samples)}

    def bandwidths(self) -> dict[str, float]:
        """nccl-tests' algbw and busbw of the p50 in bytes/s (none for a traffic matrix)."""
        p50 = self.result.median_s
        if self.collective is None or p50 <= 0:
            return {}
        return {"algbw": algbw(self.size_bytes, p50), "busbw": busbw(self.collective, self.size_bytes, p50, self.ranks)}

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready values."""
        return {
            "engine": "packet", "policy": self.policy, "collective": self.collective, "size_bytes": self.size_bytes,
            "ranks": self.ranks, "max_subflows_per_pair": self.subflows, "seconds": self.seconds(),
            "iteration_s": list(self.result.iteration_s), "drops": self.result.drops,
            "timeouts": self.result.timeouts, "retransmits": self.result.retransmits, "probes": self.result.probes,
            **self.bandwidths()}


def simulate_packets(topology: LeafSpine, job: Job, policy: PathPolicy, collective: str | None, size_bytes: float,
                     ranks: int, iters: int = 3, warmup: int = 1, params: PacketParams | None = None,
                     seed: int = 0) -> PacketRun:
    """Replay ``job`` packet by packet with the subflows ``policy`` chooses (ECMP hashing with ``seed``)."""
    if topology.planes != 1 or topology.faults:
        raise TopologyError("the packet engine models one plane without failed or degraded cables; drop "
                            "--planes/--fail or use the fluid engine")
    if iters < 1 or warmup < 0:
        raise TrafficError(f"--iters must be >= 1 and --warmup >= 0, found {iters} and {warmup}")
    segments = (iters + warmup) * sum(float(np.ceil(flows.size / MSS).sum()) for flows in job.steps)
    if segments > MAX_SEGMENTS:
        raise TrafficError(f"the packet engine would simulate {segments:.3g} segments (limit {MAX_SEGMENTS:.0e}, "
                           "about ten minutes); use a smaller --size, fewer --iters, or the fluid engine")
    paths = pinned_paths(topology, policy, job)
    result = replay(topology, job.steps, paths, iters=iters, warmup=warmup, params=params or PacketParams(), seed=seed)
    return PacketRun(policy.name, collective, size_bytes, ranks, result, max(map(len, paths.values()), default=0))
