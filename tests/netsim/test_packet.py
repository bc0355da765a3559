"""The packet-level peer: tbf links, TCP recovery, and collective replays against first principles."""

from __future__ import annotations

import numpy as np
import pytest

from netsim.packet import PacketParams, replay
from netsim.packet.links import Clock, Packet, TbfLink
from netsim.packet.tcp import HEADER, MIN_RTO_S, MSS, TcpConnection
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


def test_three_flows_into_one_port_recover_their_losses_at_the_port_rate() -> None:
    """Three senders into one 10 ms queue: HyStart ends slow start early, the few drops are repaired
    by SACK and RACK, and the receiver gets everything at its port's rate."""
    size = 1 << 20
    result = _one_way(size, senders=(0, 1, 3))
    receiver = [ranks[2] for ranks in result.rank_s]  # hosts 0, 1, 2, 3: host 2 receives
    bound = 3 * size / GOODPUT
    assert result.drops > 0 and result.timeouts == 0
    assert all(bound * 0.95 < t < bound * 1.1 for t in receiver)


def test_many_subflows_into_one_port_end_in_incast_timeouts() -> None:
    """48 subflows into one 2 ms queue: more packets than the queue holds even at a window of one, so
    some flows lose their tails and wait out the 200 ms minimum RTO, as Linux does (the measured
    all-to-all with 28 subflows per port shows it; not in every iteration, as there)."""
    size = 1 << 20
    result = _one_way(size, queue_s=0.002, senders=(0, 1, 3), k=16)
    receiver = [ranks[2] for ranks in result.rank_s]
    bound = 3 * size / GOODPUT
    assert result.drops > 100 and result.timeouts > 0
    assert bound + MIN_RTO_S < max(receiver) and all(bound < t < bound + 4 * MIN_RTO_S for t in receiver)


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


class _DropSeq(TbfLink):
    """A fast link that drops the listed transmissions of data segments (by first byte, in order)."""

    def __init__(self, clock: Clock, drop: list[int]) -> None:
        super().__init__(clock, "lossy", rate=1e9, burst=1e9, limit=1e9, prop_s=0.0005)
        self.drop = list(drop)

    def send(self, packet: Packet) -> None:
        if self.drop and packet.payload.get("seq") == self.drop[0] and "ack" not in packet.payload:
            self.drop.pop(0)
            self.drops += 1
            return
        super().send(packet)


def _transfer(drop: list[int], size: int = 40 * MSS) -> tuple[TcpConnection, float]:
    """Send ``size`` bytes twice over a 1 ms RTT path that drops the given segments' transmissions of
    the second message; return the connection and the second message's time to be acknowledged."""
    clock = Clock()
    route, back = [_DropSeq(clock, [])], [_DropSeq(clock, [])]
    connection = TcpConnection(clock, route, back)
    done: list[float] = []
    connection.send(size, lambda: done.append(clock.now), lambda: None)
    clock.run(lambda: len(done) == 1, horizon_s=10)
    route[0].drop = [size + seq for seq in drop]
    start = clock.now
    connection.send(size, lambda: done.append(clock.now), lambda: None)
    clock.run(lambda: len(done) == 2, horizon_s=10)
    return connection, done[1] - start


def test_rto_is_srtt_plus_the_minimum_as_in_linux() -> None:
    connection, _ = _transfer([])
    assert connection.srtt is not None
    assert connection.rto == pytest.approx(connection.srtt + MIN_RTO_S, rel=1e-6)


def test_a_lost_tail_is_repaired_by_one_loss_probe_not_the_rto() -> None:
    connection, took = _transfer([37 * MSS, 38 * MSS, 39 * MSS])  # the last three segments
    assert connection.timeouts == 0 and connection.probes == 1
    assert took < 0.02


def test_a_lone_lost_last_segment_is_probed_only_after_the_minimum_rto() -> None:
    """With one segment out Linux allows for a delayed ACK: the probe waits 2 srtt + 200 ms, capped at
    the RTO, and repairs the loss without a timeout."""
    connection, took = _transfer([39 * MSS])
    assert connection.timeouts == 0 and connection.probes == 1
    assert MIN_RTO_S < took < MIN_RTO_S + 0.01


def test_a_lost_probe_waits_for_the_rto_and_no_second_probe_is_sent() -> None:
    connection, took = _transfer([37 * MSS, 38 * MSS, 39 * MSS, 39 * MSS])  # and the probe resending 39
    assert connection.timeouts == 1 and connection.probes == 1
    assert MIN_RTO_S < took < MIN_RTO_S + 0.02


def test_a_lost_retransmission_in_recovery_waits_for_the_rto() -> None:
    """Linux sends no loss probes in recovery: a retransmission lost with nothing sent after it is
    repaired by the retransmission timer."""
    connection, took = _transfer([20 * MSS, 20 * MSS])
    assert connection.timeouts == 1
    assert took > MIN_RTO_S


def test_hystart_ends_slow_start_before_a_single_flow_overflows_the_queue() -> None:
    topology = LeafSpine(2, 2, 1, 0.1)
    flows = FlowSet.build([0], [2], 4 << 20, [0])
    result = replay(topology, [flows], {(0, 2): (0,)}, iters=1, warmup=0)
    assert result.drops == 0 and result.timeouts == 0


def test_every_rank_finishes_its_own_steps_without_waiting_for_unrelated_ranks() -> None:
    """As split-TCP's exchange: a rank's step ends when its own messages are done, not at a global barrier."""
    topology = LeafSpine(2, 2, 1, 0.1)
    big, small = 1 << 20, 64 << 10
    step = FlowSet.build([0, 2], [1, 3], [big, small], [0, 1])  # within leaf 0 and within leaf 1
    result = replay(topology, [step, step], {}, iters=1, warmup=1)
    slow, fast = result.rank_s[0][0], result.rank_s[0][2]  # hosts 0 and 2
    assert slow > 2 * big / GOODPUT * 0.95  # two steps of 1 MiB each
    assert fast < 2 * (small / GOODPUT + 0.005)  # two steps of 64 KiB, not held back by host 0
    assert result.rank_s[0][1] == pytest.approx(slow, rel=0.05)  # the receiver of the big flow


@pytest.mark.parametrize(("step_s", "send_s", "receive_s", "message_s"),
                         [(3e-3, 0.0, 0.0, 0.0), (0.0, 2e-3, 0.0, 0.0), (0.0, 0.0, 1.5e-3, 0.0), (0.0, 0.0, 0.0, 1e-3),
                          (1e-3, 1e-3, 1e-3, 1e-3)])
def test_a_ranks_event_loop_charges_its_step_messages_writes_and_reads_in_order(step_s, send_s, receive_s,
                                                                                 message_s) -> None:
    """Two ranks swap one byte: each starts its step and sets up its two messages, writes its piece (and
    is busy with it), reads the peer's piece, writes its status (a write like the piece's) and reads the
    peer's status, one task at a time; timed from the end of the barrier to the end of the step, as
    `netsim measure` times it. With costs of milliseconds the network's ~0.1 ms is within the tolerance."""
    topology = LeafSpine(2, 2, 1, 0.1)
    swap = FlowSet.build([0, 1], [1, 0], 1, [0, 1])

    def seconds(params: PacketParams) -> tuple[float, ...]:
        return replay(topology, [swap], {}, iters=2, warmup=1, params=params).rank_s[-1]

    free = seconds(PacketParams(step_s=0.0, send_s=0.0, receive_s=0.0, message_s=0.0))
    costly = seconds(PacketParams(step_s=step_s, send_s=send_s, receive_s=receive_s, message_s=message_s))
    for rank in (0, 1):
        expected = step_s + 2 * message_s + 2 * send_s + 2 * receive_s
        assert costly[rank] - free[rank] == pytest.approx(expected, abs=2e-4)


def test_with_small_queues_a_lone_flow_loses_nothing_at_its_own_egress() -> None:
    """Linux's small queues keep a socket's share of its host's qdisc to a few GSO units, and what the
    qdisc refuses is sent later, so a single flow into a 2 ms queue retransmits nothing (the lossy
    egress does; the test above) and still moves at the link's goodput."""
    size = 512 << 10
    topology = LeafSpine(2, 2, 1, 0.1)
    flows = FlowSet.build([0], [2], size, [0])
    params = PacketParams(queue_s=0.002, small_queue_units=3)
    result = replay(topology, [flows], {(0, 2): (0,)}, iters=2, warmup=1, params=params)
    assert result.retransmits == 0 and result.timeouts == 0
    assert result.median_s == pytest.approx(size / GOODPUT, rel=0.05)


class _RefuseOnce(TbfLink):
    """A sender's egress that refuses its next packet once armed (a full qdisc)."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock, "egress", rate=1e9, burst=1e9, limit=1e9, prop_s=0.0005)
        self.armed = False

    def send(self, packet: Packet) -> bool:
        if self.armed:
            self.armed = False
            self.drops += 1
            return False
        return super().send(packet)


@pytest.mark.parametrize("small_queues", [None, 3.0])
def test_a_refused_send_with_nothing_in_flight_waits_for_the_probe_timer_not_an_rto(small_queues) -> None:
    """With Linux's host egress a failed send with nothing out arms the zero-window probe timer
    (max(RTO, 200 ms)): the ~200 ms stall the kernel shows without counting a timeout. A lossy egress
    instead loses the segment, which its tail loss probe repairs within milliseconds."""
    clock = Clock()
    egress = _RefuseOnce(clock)
    connection = TcpConnection(clock, [egress], [TbfLink(clock, "back", 1e9, 1e9, 1e9, 0.0005)],
                               small_queue_units=small_queues)
    done: list[float] = []
    connection.send(40 * MSS, lambda: done.append(clock.now), lambda: None)
    clock.run(lambda: len(done) == 1, horizon_s=10)
    egress.armed, start = True, clock.now
    connection.send(40 * MSS, lambda: done.append(clock.now), lambda: None)
    clock.run(lambda: len(done) == 2, horizon_s=10)
    assert connection.timeouts == 0
    if small_queues is None:
        assert connection.refusals == 0 and connection.retransmits == 1 and done[1] - start < 0.02
    else:
        assert connection.refusals == 1 and connection.retransmits == 0
        assert MIN_RTO_S < done[1] - start < MIN_RTO_S + 0.02


class _DeepEgress(TbfLink):
    """A 100 Mbit/s egress with room for anything, recording the most bytes it held."""

    def __init__(self, clock: Clock) -> None:
        super().__init__(clock, "egress", rate=RATE, burst=RATE / 250, limit=1e12, prop_s=20e-6)
        self.most = 0

    def send(self, packet: Packet) -> bool:
        taken = super().send(packet)
        self.most = max(self.most, self.queued)
        return taken


@pytest.mark.parametrize("units", [0.5, 1.0])
def test_small_queues_bound_what_a_connection_keeps_in_its_hosts_qdisc(units: float) -> None:
    """Without small queues a flow on a deep egress keeps its whole window there; with them at most
    ``units`` GSO units (of at most 64 KiB each) and one segment more."""
    from netsim.packet.tcp import GSO_MAX_BYTES

    def most_queued(small_queue_units: float | None) -> int:
        clock = Clock()
        egress = _DeepEgress(clock)
        connection = TcpConnection(clock, [egress], [TbfLink(clock, "back", 1e9, 1e9, 1e9, 20e-6)],
                                   small_queue_units=small_queue_units)
        done: list[float] = []
        connection.send(4 << 20, lambda: done.append(clock.now), lambda: None)
        clock.run(lambda: bool(done), horizon_s=60)
        return egress.most

    bound = units * GSO_MAX_BYTES + MSS + HEADER
    assert most_queued(units) <= bound < most_queued(None)


def test_a_rank_outside_the_collective_still_takes_part_in_the_barrier() -> None:
    """``rank_hosts`` names every rank; one that the collective's flows leave out (host 3 here) runs the
    barrier's ring with the others and is timed too (an empty collective: no time)."""
    topology = LeafSpine(2, 2, 1, 0.1)
    swap = FlowSet.build([0, 1], [1, 0], 1, [0, 1])
    result = replay(topology, [swap], {}, iters=2, warmup=1, rank_hosts=[0, 1, 3])
    assert [len(ranks) for ranks in result.rank_s] == [3, 3]
    assert all(ranks[2] < ranks[0] for ranks in result.rank_s)  # host 3 only starts and ends its step
