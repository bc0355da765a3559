"""Replay a collective packet by packet on a leaf-spine of tbf links, as split-TCP runs it.

The fabric mirrors ``netsim fabric up``: every host-leaf and leaf-spine direction is a
:class:`~netsim.packet.links.TbfLink` (bucket = one 4 ms kernel tick of the rate, queue bounded by
``queue_s`` of the rate plus the bucket), each hop adds ``hop_s``. Every (pair, subflow) is a persistent
:class:`~netsim.packet.tcp.TcpConnection` on its pinned spine (or its ECMP-hashed one), kept across
steps and iterations, its status message on a connection of its own back. Every host is one rank and
runs the steps in order, as split-TCP's ``exchange`` does: its step is done when each message it sent
is acknowledged by the receiver's status (a few bytes, sent once all k pieces arrived and the receiver
has reached that step; earlier pieces wait in its socket buffer) and each message to it arrived. A rank
is one event loop: its software work runs one task at a time, in the order it became due: starting a
step costs ``step_s`` plus ``message_s`` for each message it sends or receives in that step before the
step begins, reading an arrived piece or status ``receive_s`` before it counts, and writing a piece or
a status ``send_s`` (the write goes out as the task begins; the cost is the kernel's work of the write,
which on an emulated fabric includes forwarding it through the namespaces); with ``cpus`` the loops
share that many CPUs (:mod:`netsim.packet.event_loops`). ``warmup`` iterations run first, then every
timed iteration after the measurement's barrier (split-TCP's ring all-gather of a byte a rank: ranks
leave it at different times, and the links rest meanwhile); the result is every rank's time in every
timed iteration, from the end of its barrier to the end of its last step, whose median is what
``netsim measure`` reports as p50.

This is the packet-level peer of the fluid engine: it has the losses, timeouts, slow start and queueing
the fluid model leaves out, at the cost of one Python event per packet and hop (a 4 MiB ring
all-reduce on 8 hosts takes seconds).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np

from netsim.errors import PacketParamsError
from netsim.packet.event_loops import EventLoops
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
    # the latency of a hop and the software costs of split-TCP's Python event loop (one per rank), fitted
    # with ``tools/packet_vs_measured.py --fit`` to the 48 pinned 4-32 KiB rows of
    # docs/data/netsim-emulated-rows.json, where they dominate
    hop_s: float = 15e-6
    step_s: float = 95e-6  # starting a step
    send_s: float = 50e-6  # writing one piece or status message
    receive_s: float = 0.0  # reading one arrived piece (hash, reassembly) or status message
    message_s: float = 5e-6  # setting up each message a step sends or receives
    min_rto_s: float = MIN_RTO_S
    # None: a host's own egress drops like any queue; a number: Linux's local qdisc refusals and TCP small
    # queues of that many GSO units per connection (see netsim.packet.tcp)
    small_queue_units: float | None = None
    cpus: int | None = None  # the CPUs the ranks' loops share (None: one per rank; see netsim.packet.event_loops)

    def __post_init__(self) -> None:
        for name in ("queue_s", "min_rto_s"):
            if not getattr(self, name) > 0:
                raise PacketParamsError(f"{name} must be > 0 s, found {getattr(self, name)}")
        for name in ("hop_s", "step_s", "send_s", "receive_s", "message_s"):
            if not getattr(self, name) >= 0:
                raise PacketParamsError(f"{name} is a time: 0 s or more, found {getattr(self, name)}")
        if self.small_queue_units is not None and not self.small_queue_units > 0:
            raise PacketParamsError(f"small queues (--small-queues) must be > 0 GSO units, found {self.small_queue_units}")
        if self.cpus is not None and not (isinstance(self.cpus, int) and self.cpus >= 1):
            raise PacketParamsError(f"cpus (--cpus) must be a whole number >= 1, found {self.cpus}")


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
    """Every rank's time in every timed iteration, and what TCP went through on the way."""

    rank_s: tuple[tuple[float, ...], ...]  # [iteration][rank], ranks in host order
    drops: int
    timeouts: int
    retransmits: int
    probes: int  # tail loss probes sent

    @property
    def iteration_s(self) -> tuple[float, ...]:
        """Each timed iteration's completion time (its slowest rank)."""
        return tuple(max(ranks) for ranks in self.rank_s)

    @property
    def samples_s(self) -> list[float]:
        """Every rank's time in every timed iteration, flat (what ``netsim measure`` takes quantiles of)."""
        return [t for ranks in self.rank_s for t in ranks]

    @property
    def median_s(self) -> float:
        """Median over ranks and iterations: ``netsim measure``'s p50."""
        return float(np.median(self.samples_s))


class _Message:
    """One message of a step: a piece per spine in ``spines`` from ``src`` to ``dst``, then the receiver's
    status back (on the first piece's path)."""

    def __init__(self, step: int, src: int, dst: int, spines: list[int]) -> None:
        self.step, self.src, self.dst, self.spines = step, src, dst, spines
        self.arrived = 0


def replay(topology: LeafSpine, steps: Sequence[FlowSet], paths: dict[tuple[int, int], tuple[int | None, ...]],
           iters: int = 3, warmup: int = 1, params: PacketParams = PacketParams(), seed: int = 0,
           rank_hosts: Sequence[int] | None = None) -> PacketResult:
    """Run the collective's ``steps`` (flows between hosts) ``warmup`` times, then ``iters`` times each after
    the measurement's barrier (split-TCP's ring all-gather of one byte a rank, over ``rank_hosts``: the
    ranks' hosts in rank order; default, the hosts in order), packet by packet; a rank's time in an
    iteration runs from the end of its barrier to the end of its last step, as ``netsim measure`` times it.

    ``paths[(src, dst)]`` are the spines of the pair's subflows (None: hashed by ECMP with ``seed``;
    a pair that is missing gets one hashed subflow)."""
    clock = Clock()
    fabric = PacketFabric(clock, topology, params)
    connections: dict[tuple[int, int, int], TcpConnection] = {}
    status: dict[tuple[int, int], TcpConnection] = {}
    ecmp = Ecmp(seed)
    active = {int(h) for flows in steps for h in (*flows.src.tolist(), *flows.dst.tolist())}
    ring = [int(h) for h in rank_hosts] if rank_hosts is not None else sorted(active)
    hosts = sorted(active | set(ring))  # every rank, also one the collective sends nothing to
    barrier = [FlowSet.build(ring, ring[1:] + ring[:1], 1, list(range(len(ring))))] * (len(ring) - 1)
    collective = len(steps)
    timed = [collective * warmup + (len(barrier) + collective) * i + len(barrier) for i in range(iters)]
    steps = [*steps] * warmup + [*barrier, *steps] * iters
    reached: dict[tuple[int, int], float] = {}  # (host, step index): when it finished the steps before

    def spines_of(src: int, dst: int, port: int) -> list[int]:
        plan = paths.get((src, dst), (None,))
        _, hashed = ecmp.choose(topology, np.full(len(plan), src), np.full(len(plan), dst),
                                np.arange(len(plan)) + port * 64)
        return [int(h) if s is None else int(s) for s, h in zip(plan, hashed)]

    def conn(src: int, dst: int, j: int, spine: int) -> TcpConnection:
        key = (src, dst, j)
        if key not in connections:
            connections[key] = TcpConnection(clock, fabric.route(src, dst, spine), fabric.route(dst, src, spine),
                                             params.min_rto_s, params.small_queue_units)
        return connections[key]

    def status_conn(src: int, dst: int, spine: int) -> TcpConnection:
        if (src, dst) not in status:  # the receiver's answer travels back on the pair's subflow-0 path
            status[(src, dst)] = TcpConnection(clock, fabric.route(dst, src, spine), fabric.route(src, dst, spine),
                                               params.min_rto_s, params.small_queue_units)
        return status[(src, dst)]

    at_step: dict[int, int] = {}  # the step each host is in (len(steps): finished)
    pending: dict[int, int] = {}  # messages of its current step a host still waits for
    waiting: dict[tuple[int, int], list[_Message]] = {}  # (host, step): messages arrived before it got there
    finished: dict[int, float] = {}
    on_loop = EventLoops(clock, params.cpus).run  # each rank's software work, on the machine's CPUs

    def next_step(host: int, index: int) -> None:
        """Queue ``host``'s step ``index``: its start-up and the set-up of each of its messages."""
        reached[(host, index)] = clock.now
        flows = steps[index] if index < len(steps) else None
        messages = 0 if flows is None else int(np.count_nonzero(flows.src == host) + np.count_nonzero(flows.dst == host))
        on_loop(host, params.step_s + messages * params.message_s, start_step, host, index)

    def step_done(host: int) -> None:
        pending[host] -= 1
        if pending[host] == 0:
            next_step(host, at_step[host] + 1)

    def answer(message: _Message) -> None:
        status_conn(message.src, message.dst, message.spines[0]).send(
            STATUS_BYTES, acked=_nothing, received=partial(on_loop, message.src, params.receive_s, step_done, message.src))
        step_done(message.dst)

    def consume(message: _Message) -> None:
        """The receiver has the whole message in its current step: write the status (a send), and count it."""
        on_loop(message.dst, params.send_s, answer, message, at_start=True)

    def piece_received(message: _Message) -> None:
        message.arrived += 1
        if message.arrived == len(message.spines):
            if at_step[message.dst] == message.step:
                consume(message)
            else:
                waiting.setdefault((message.dst, message.step), []).append(message)

    def start_step(host: int, index: int) -> None:
        at_step[host] = index
        if index == len(steps):
            finished[host] = clock.now
            return
        flows = steps[index]
        src, dst = flows.src.tolist(), flows.dst.tolist()
        pending[host] = src.count(host) + dst.count(host)
        for s, d, size, port in zip(src, dst, flows.size.tolist(), flows.port.tolist()):
            if s != host:
                continue
            spines = spines_of(s, d, int(port))
            message, k = _Message(index, s, d, spines), len(spines)
            for j, spine in enumerate(spines):
                piece = int(size) * (j + 1) // k - int(size) * j // k
                arrived = partial(on_loop, d, params.receive_s, piece_received, message)
                on_loop(host, params.send_s, conn(s, d, j, spine).send, max(piece, 1), _nothing, arrived, at_start=True)
        for message in waiting.pop((host, index), []):
            consume(message)
        if pending[host] == 0:
            next_step(host, index + 1)

    for host in hosts:
        at_step[host] = -1
        next_step(host, 0)
    clock.run(lambda: len(finished) == len(hosts), horizon_s=3600.0)
    rank_s = tuple(tuple(reached[(h, t + collective)] - reached[(h, t)] for h in hosts) for t in timed)
    every = list(connections.values()) + list(status.values())
    return PacketResult(rank_s, sum(link.drops for link in fabric.links()),
                        sum(c.timeouts for c in every), sum(c.retransmits for c in every),
                        sum(c.probes for c in every))


def _nothing() -> None:
    return None
