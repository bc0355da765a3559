"""Ranks' event loops on a machine's CPUs (netsim.packet.event_loops) and a replay that shares CPUs."""

from __future__ import annotations

import pytest

from netsim.errors import PacketParamsError
from netsim.packet import PacketParams, replay
from netsim.packet.event_loops import EventLoops
from netsim.packet.links import Clock
from netsim.topology import LeafSpine
from netsim.traffic import FlowSet


def _run(cpus: int | None, tasks: list[tuple[int, float, bool]]) -> dict[str, float]:
    """Queue ``tasks`` (rank, cost, at_start) at time 0; return when each took effect."""
    clock = Clock()
    loops = EventLoops(clock, cpus)
    done: dict[str, float] = {}
    for i, (rank, cost, at_start) in enumerate(tasks):
        loops.run(rank, cost, lambda name=f"r{rank}t{i}": done.setdefault(name, clock.now), at_start=at_start)
    clock.run(lambda: len(done) == len(tasks), 10.0)
    return done


def test_a_ranks_tasks_run_one_at_a_time_in_order_and_ranks_overlap_with_a_cpu_each() -> None:
    done = _run(None, [(0, 1.0, False), (0, 2.0, False), (1, 1.0, False), (0, 0.5, True)])
    assert done == {"r0t0": 1.0, "r0t1": 3.0, "r1t2": 1.0, "r0t3": 3.0}  # a write takes effect as it begins


def test_ranks_sharing_cpus_wait_for_one_first_come_first_served() -> None:
    # two CPUs, three ranks: rank 2 waits until rank 0 (the first to finish) frees a CPU
    done = _run(2, [(0, 1.0, False), (1, 3.0, False), (2, 1.0, False)])
    assert done == {"r0t0": 1.0, "r1t1": 3.0, "r2t2": 2.0}
    # a running rank keeps its CPU while it has work: rank 0's second task runs before rank 1's first
    done = _run(1, [(0, 1.0, False), (1, 1.0, False)] + [(0, 1.0, False)])
    assert done["r0t0"] == 1.0 and done["r1t1"] == 3.0 and done["r0t2"] == 2.0


def test_ranks_sharing_cpus_wait_for_each_others_work() -> None:
    """Four ranks swap one byte with every other (an all-to-all): with 1 ms a write and a CPU each, a
    rank's 3 pieces and 3 statuses take 6 ms; with one CPU for all, the four ranks' 24 ms of writes run
    one after another (a rank is timed from its own exit from the barrier, which the shared CPU staggers
    too: 12-21 ms); with two CPUs, in between."""
    topology = LeafSpine(2, 2, 1, 0.1)
    src = [s for s in range(4) for d in range(4) if s != d]
    dst = [d for s in range(4) for d in range(4) if s != d]
    step = FlowSet.build(src, dst, 1, list(range(len(src))))
    params = PacketParams(step_s=0.0, send_s=1e-3, receive_s=0.0, message_s=0.0)

    def median(cpus: int | None) -> float:
        return replay(topology, [step], {}, iters=2, warmup=1, params=PacketParams(**{
            **params.__dict__, "cpus": cpus})).median_s

    own, shared_by_two, shared_by_all = median(None), median(2), median(1)
    assert own == pytest.approx(6e-3, rel=0.05) and median(4) == own
    assert 2.5 * own < shared_by_all < 4 * own
    assert 1.4 * own < shared_by_two < shared_by_all


@pytest.mark.parametrize(("field", "value", "message"), [
    ("cpus", 0, "cpus (--cpus) must be a whole number >= 1"),
    ("cpus", 1.5, "cpus (--cpus) must be a whole number >= 1"),
    ("small_queue_units", 0.0, "small queues (--small-queues) must be > 0"),
    ("send_s", -1e-6, "send_s is a time: 0 s or more"),
    ("queue_s", 0.0, "queue_s must be > 0 s"),
])
def test_packet_params_refuse_what_no_replay_can_mean(field: str, value: float, message: str) -> None:
    with pytest.raises(PacketParamsError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PacketParams(**{field: value})
