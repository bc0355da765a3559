"""Replay a collective packet by packet on a leaf-spine of tbf links, as split-TCP runs it.

The fabric mirrors ``netsim fabric up``: every host-leaf and leaf-spine direction is a
:class:`~netsim.packet.links.TbfLink` (bucket = one 4 ms kernel tick of the rate, queue bounded by
``queue_s`` of the rate plus the bucket), each hop adds ``hop_s``. Every (pair, subflow) is a persistent
:class:`~netsim.packet.tcp.TcpConnection` on its pinned spine (or its ECMP-hashed one), kept across
steps and iterations, its status message on a connection of its own back. A host starts its pieces of
a step ``subflow_startup_s`` apart (the software cost of each, one event loop per rank). A message is done when the
receiver's status (a few bytes, after all k pieces arrived) reaches the sender; a step is done when
all of its messages are, then the next starts after ``step_startup_s`` (software cost of a step), as
the fluid engine's barrier steps do. ``warmup`` iterations run first; the result is each timed
iteration's completion time.

This is the packet-level peer of the fluid engine: it has the losses, timeouts, slow start and queueing
the fluid model leaves out, at the cost of one Python event per packet and hop (a 4 MiB ring
all-reduce on 8 hosts takes seconds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from netsim.packet.links import Clock, TbfLink
from netsim.packet.tcp import MIN_RTO_S, TcpConnection
from netsim.policies import Ecmp
from netsim.topology import LeafSpine
from netsim.traffic import FlowSet

KERNEL_HZ = 250.0
STATUS_BYTES = 5


@dataclass(frozen=True)
class PacketParams:
    """Fabric and software parameters of a packet replay (defaults: ``netsim fabric up``'s)."""

    queue_s: float = 0.010
    hop_s: float = 20e-6
    step_startup_s: float = 30e-6
    subflow_startup_s: float = 80e-6  # a host's i-th piece of a step starts i times this late (software)
    min_rto_s: float = MIN_RTO_S
    iteration_gap_s: float = 1e-3  # the barrier between iterations


class PacketFabric:
    """The tbf links of ``topology`` (plane 0) and the routes between hosts."""

    def __init__(self, clock: Clock, topology: LeafSpine, params: PacketParams) -> None:
        self.topology = topology
        host_rate = topology.link_gbps * 1e9 / 8
        spine_rate = (topology.spine_gbps or topology.link_gbps) * 1e9 / 8

        def link(name: str, rate: float) -> TbfLink:
            burst = rate / KERNEL_HZ
            return TbfLink(clock, name, rate, burst, rate * params.queue_s + burst, params.hop_s)

        self.up = [link(f"h{h}->leaf", host_rate) for h in range(topology.hosts)]
        self.down = [link(f"leaf->h{h}", host_rate) for h in range(topology.hosts)]
        self.leaf_up = {(l, s): link(f"l{l}->s{s}", spine_rate)
                        for l in range(topology.leaves) for s in range(topology.spines)}
        self.spine_down = {(s, l): link(f"s{s}->l{l}", spine_rate)
                           for s in range(topology.spines) for l in range(topology.leaves)}

    def route(self, src: int, dst: int, spine: int) -> list[TbfLink]:
        a, b = int(self.topology.leaf_of(src)), int(self.topology.leaf_of(dst))
        if a == b:
            return [self.up[src], self.down[dst]]
        return [self.up[src], self.leaf_up[(a, spine)], self.spine_down[(spine, b)], self.down[dst]]

    def links(self) -> list[TbfLink]:
        return [*self.up, *self.down, *self.leaf_up.values(), *self.spine_down.values()]


@dataclass(frozen=True)
class PacketResult:
    """Completion time of every timed iteration, and what TCP went through on the way."""

    iteration_s: tuple[float, ...]
    drops: int
    timeouts: int
    retransmits: int

    @property
    def median_s(self) -> float:
        return float(np.median(self.iteration_s))


def replay(topology: LeafSpine, steps: Sequence[FlowSet], paths: dict[tuple[int, int], tuple[int | None, ...]],
           iters: int = 3, warmup: int = 1, params: PacketParams = PacketParams(), seed: int = 0) -> PacketResult:
    """Run the collective's ``steps`` (flows between hosts) ``warmup + iters`` times, packet by packet.

    ``paths[(src, dst)]`` are the spines of the pair's subflows (None: hashed by ECMP with ``seed``;
    a pair that is missing gets one hashed subflow)."""
    clock = Clock()
    fabric = PacketFabric(clock, topology, params)
    connections: dict[tuple[int, int, int], TcpConnection] = {}
    status: dict[tuple[int, int], TcpConnection] = {}
    ecmp = Ecmp(seed)

    def spines_of(src: int, dst: int, port: int) -> list[int]:
        plan = paths.get((src, dst), (None,))
        _, hashed = ecmp.choose(topology, np.full(len(plan), src), np.full(len(plan), dst),
                                np.arange(len(plan)) + port * 64)
        return [int(h) if s is None else int(s) for s, h in zip(plan, hashed)]

    def conn(src: int, dst: int, j: int, spine: int) -> TcpConnection:
        key = (src, dst, j)
        if key not in connections:
            connections[key] = TcpConnection(clock, fabric.route(src, dst, spine), fabric.route(dst, src, spine),
                                             params.min_rto_s)
        return connections[key]

    def status_conn(src: int, dst: int, spine: int) -> TcpConnection:
        if (src, dst) not in status:  # the receiver's answer travels back on the pair's subflow-0 path
            status[(src, dst)] = TcpConnection(clock, fabric.route(dst, src, spine), fabric.route(src, dst, spine),
                                               params.min_rto_s)
        return status[(src, dst)]

    step = {"started": False, "pending": 0}

    def done() -> None:
        step["pending"] -= 1

    def start_step(flows: FlowSet) -> None:
        step["started"] = True
        queued: dict[int, int] = {}  # pieces each host has started this step
        for src, dst, size, port in zip(flows.src.tolist(), flows.dst.tolist(), flows.size.tolist(),
                                        flows.port.tolist()):
            spines = spines_of(src, dst, port)
            k = len(spines)
            bounds = [(int(size) * j // k, int(size) * (j + 1) // k) for j in range(k)]
            arrived = [0]
            step["pending"] += 1

            def piece_received(src: int = src, dst: int = dst, spine: int = spines[0], arrived: list = arrived,
                               k: int = k) -> None:
                arrived[0] += 1
                if arrived[0] == k:
                    status_conn(src, dst, spine).send(STATUS_BYTES, acked=_nothing, received=done)

            for j, (spine, (a, b)) in enumerate(zip(spines, bounds)):
                index = queued[src] = queued.get(src, -1) + 1
                send = partial(conn(src, dst, j, spine).send, max(b - a, 1), _nothing, piece_received)
                clock.at(clock.now + index * params.subflow_startup_s, send)

    times: list[float] = []
    horizon = 3600.0
    for iteration in range(warmup + iters):
        started = clock.now
        for flows in steps:
            step["started"] = False
            clock.at(clock.now + params.step_startup_s, start_step, flows)
            clock.run(lambda: bool(step["started"]) and step["pending"] == 0, horizon)
        if iteration >= warmup:
            times.append(clock.now - started)
        resume = clock.now + params.iteration_gap_s
        clock.at(resume, _nothing)
        clock.run(lambda resume=resume: clock.now >= resume, horizon)
    every = list(connections.values()) + list(status.values())
    return PacketResult(tuple(times), sum(link.drops for link in fabric.links()),
                        sum(c.timeouts for c in every), sum(c.retransmits for c in every))


def _nothing() -> None:
    return None
