"""The packet-level peer: tbf links, TCP recovery, and collective replays against first principles."""

from __future__ import annotations

import numpy as np
import pytest

from netsim.packet import PacketParams, replay
from netsim.packet.links import Clock, Packet, TbfLink
from netsim.packet.tcp import HEADER, MSS
from netsim.topology import LeafSpine
from netsim.traffic import FlowSet

RATE = 12.5e6  # 100 Mbit/s in bytes/s
GOODPUT = RATE * MSS / (MSS + HEADER)


def test_tbf_passes_its_burst_at_once_then_the_rate_and_drops_beyond_its_limit() -> None:
    clock = Clock()
    link = TbfLink(clock, "l", rate=1500.0, burst=1500.0, limit=3000.0, prop_s=0.001)
    arrived: list[float] = []
    for _ in range(4):
        link.send(Packet(1500, [link], lambda p: arrived.append(clock.now)))
    clock.run(lambda: len(arrived) == 3, horizon_s=10)
    # the first leaves on the bucket's tokens, the next two wait for tokens (1 s each), the fourth
    # found 3000 bytes queued and was dropped
    assert arrived == pytest.approx([0.001, 1.001, 2.001]) and link.drops == 1


def _one_way(size: int, queue_s: float = 0.010, senders: tuple[int, ...] = (0,), k: int = 1):
    topology = LeafSpine(2, 2, 1, 0.1)  # hosts 0,1 on leaf 0; 2,3 on leaf 1
    flows = FlowSet.build(list(senders), [2] * len(senders), size, list(range(len(senders))))
    paths = {(s, 2): (0,) * k for s in senders}
    return replay(topology, [flows], paths, iters=2, warmup=1, params=PacketParams(queue_s=queue_s))


def test_one_flow_moves_at_tcp_goodput_of_the_link() -> None:
    size = 1 << 20
    result = _one_way(size)
    burst = RATE / 250  # tbf's bucket passes at once
    expected = (size - burst * MSS / (MSS + HEADER)) / GOODPUT
    assert result.median_s == pytest.approx(expected, rel=0.05)
    assert result.timeouts == 0


def test_two_senders_into_one_host_share_its_port() -> None:
    single, double = _one_way(256 << 10), _one_way(256 << 10, senders=(0, 1))
    assert double.median_s == pytest.approx(2 * single.median_s, rel=0.15)


def test_losses_in_a_shallow_queue_are_recovered_without_timeouts() -> None:
    result = _one_way(512 << 10, queue_s=0.002)
    assert result.drops > 0 and result.retransmits >= result.drops * 0.5
    assert result.timeouts == 0  # SACK recovery and tail loss probes, not the 200 ms RTO
    assert result.median_s < 0.2


def test_many_subflows_into_one_port_lose_packets_and_still_finish_near_the_port_rate() -> None:
    """Three senders with 16 subflows each into one 2 ms queue: drops on every burst, recovered by SACK,
    RACK and tail loss probes at close to the receiving port's rate."""
    size = 1 << 20
    result = _one_way(size, queue_s=0.002, senders=(0, 1, 3), k=16)
    assert result.drops > 100
    bound = 3 * size / GOODPUT
    assert bound * 0.95 < result.median_s < bound * 1.25


def test_ring_allreduce_on_a_leaf_spine_matches_the_rate_bound() -> None:
    from netsim.collectives import collective_job

    topology = LeafSpine(4, 2, 2, 0.1)
    hosts = np.array([0, 2, 4, 6, 1, 3, 5, 7])  # every ring hop crosses leaves
    job = collective_job("j", "ring-allreduce", hosts, 512 << 10)
    # a leaf's two crossing flows (one from its even host, one from its odd host) on different spines
    paths = {(int(hosts[i]), int(hosts[(i + 1) % 8])): (int(hosts[i]) % 2,) for i in range(8)}
    result = replay(topology, job.steps, paths, iters=2, warmup=1)
    steps = 2 * 7
    wire = (512 << 10) / 8 * (MSS + HEADER) / MSS
    bound = steps * max(wire - RATE / 250 / steps, 0) / RATE
    assert bound < result.median_s < 1.15 * bound + steps * 0.0005
