"""Max-min rates, the event loop, replay and determinism of the fluid engine."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsim import Ecmp, FlowSet, Job, LeafSpine, Spray, place, simulate
from netsim.collectives import collective_job
from netsim.engine import max_min_rates
from netsim.topology import GBPS


def rates(flows_links: list[list[int]], capacity: list[float]) -> np.ndarray:
    sub = np.array([i for i, links in enumerate(flows_links) for _ in links])
    link = np.array([l for links in flows_links for l in links])
    return max_min_rates(len(flows_links), sub, link, np.ones(sub.size), np.array(capacity, dtype=float))


def test_two_flows_share_a_link_equally() -> None:
    assert rates([[0], [0]], [10.0]).tolist() == pytest.approx([5.0, 5.0])


def test_classic_max_min_bottleneck_cascade() -> None:
    # link0 (10) carries f0, f1; link1 (4) carries f1, f2: f1 and f2 are held to 2, f0 takes the rest.
    assert rates([[0], [0, 1], [1]], [10.0, 4.0]).tolist() == pytest.approx([8.0, 2.0, 2.0])


def test_three_level_parking_lot() -> None:
    # f0 crosses links 0,1,2 (caps 3, 6, 9); f1 only link 1; f2 only link 2.
    assert rates([[0, 1, 2], [1], [2]], [3.0, 6.0, 9.0]).tolist() == pytest.approx([3.0, 3.0, 6.0])


def test_weighted_entries_model_a_sprayed_flow() -> None:
    # One flow split half/half over links 1 and 2 (cap 1 each) behind a host link of cap 4: rate 2.
    got = max_min_rates(1, np.array([0, 0, 0]), np.array([0, 1, 2]), np.array([1.0, 0.5, 0.5]),
                        np.array([4.0, 1.0, 1.0]))
    assert got.tolist() == pytest.approx([2.0])


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_incremental_update_equals_full_recompute(data: st.DataObject) -> None:
    n_links = data.draw(st.integers(2, 8))
    n_sub = data.draw(st.integers(2, 12))
    caps = np.array(data.draw(st.lists(st.sampled_from([1.0, 2.0, 3.0, 5.0]), min_size=n_links,
                                       max_size=n_links)))
    paths = [data.draw(st.lists(st.integers(0, n_links - 1), min_size=1, max_size=3, unique=True))
             for _ in range(n_sub)]
    sub = np.array([i for i, p in enumerate(paths) for _ in p])
    link = np.array([l for p in paths for l in p])
    w = np.ones(sub.size)
    before = max_min_rates(n_sub, sub, link, w, caps)
    floor = data.draw(st.sampled_from(sorted(set(before.tolist()))))
    candidates = np.flatnonzero(before >= floor)
    leave = {int(i) for i in candidates if data.draw(st.booleans())} | {int(np.flatnonzero(before == floor)[0])}
    stay = np.array([i for i in range(n_sub) if i not in leave])
    if stay.size == 0:
        return
    remap = -np.ones(n_sub, dtype=np.int64)
    remap[stay] = np.arange(stay.size)
    keep = remap[sub] >= 0
    args = (stay.size, remap[sub[keep]], link[keep], w[keep], caps)
    full = max_min_rates(*args)
    incremental = max_min_rates(*args, previous=before[stay], floor=floor)
    np.testing.assert_allclose(incremental, full, rtol=1e-9)


def one_gbyte_fabric(spines: int = 1) -> LeafSpine:
    return LeafSpine(leaves=2, hosts_per_leaf=2, spines=spines, link_gbps=8.0)  # 1 GB/s everywhere


def test_flows_sharing_an_uplink_finish_in_hand_computed_times() -> None:
    # host0->host2 (1 GB) and host1->host3 (0.5 GB) share leaf0->spine0 at 1 GB/s: the small one ends at
    # 1 s (0.5 GB/s each), then the big one has 0.5 GB left at 1 GB/s: ends at 1.5 s.
    step = FlowSet.build([0, 1], [2, 3], [1e9, 0.5e9])
    result = simulate(one_gbyte_fabric(), [Job("j", (step,))], Ecmp())
    assert result.cct_seconds == pytest.approx(1.5)
    assert result.flow_fct[0].tolist() == pytest.approx([1.5, 1.0])
    assert result.ideal_cct_seconds == pytest.approx(1.5)  # the uplink cut carries 1.5 GB at 1 GB/s
    assert result.max_congestion == pytest.approx(1.5)


def test_steps_are_barriers_and_jobs_can_start_late() -> None:
    a = FlowSet.build([0], [1], 1e9)
    b = FlowSet.build([2], [3], 2e9)
    result = simulate(one_gbyte_fabric(), [Job("j", (a, b), start=0.5)], Ecmp())
    assert [t for s in result.steps for t in (s.start, s.end)] == pytest.approx([0.5, 1.5, 1.5, 3.5])
    assert result.cct_seconds == pytest.approx(3.0)


@pytest.mark.parametrize("placement", ["packed", "random"])
@pytest.mark.parametrize("collective,factor", [
    ("ring-allreduce", 2.0), ("hd-allreduce", 2.0), ("ring-allgather", 1.0), ("ring-reducescatter", 1.0),
    ("alltoall", 1.0),
])
@pytest.mark.parametrize("planes", [1, 2])
def test_bandwidth_optimal_collectives_on_a_non_blocking_fabric(collective: str, factor: float, planes: int,
                                                                placement: str) -> None:
    topology = LeafSpine(4, 4, 4, 100.0, planes=planes)
    n, size = topology.hosts, 1e9
    hosts = place(n, n, placement, np.random.default_rng(3))
    result = simulate(topology, [collective_job("j", collective, hosts, size)], Spray())
    # busbw convention: all-reduce moves 2(n-1)/n * S per rank, the others (n-1)/n * S; P planes = P ports.
    assert result.cct_seconds == pytest.approx(factor * (n - 1) / n * size / (planes * 100 * GBPS), rel=1e-9)
    assert result.gap == pytest.approx(0.0, abs=1e-9)


def test_tree_allreduce_moves_the_whole_buffer_per_level() -> None:
    topology = LeafSpine(2, 4, 2, 100.0)
    result = simulate(topology, [collective_job("j", "tree-allreduce", np.arange(7), 1e9)], Spray())
    # 7 ranks: depth 2, so 2 reduce + 2 broadcast steps; in each, a parent's port carries two children's
    # whole buffers (1 GB at 12.5 GB/s = 0.08 s each).
    assert [s.seconds for s in result.steps] == pytest.approx([0.16] * 4)
    assert [len(step) for step in collective_job("j", "tree-allreduce", np.arange(7), 1.0).steps] == [4, 2, 2, 4]


def test_ring_allreduce_matches_formula_under_ecmp_when_packed() -> None:
    topology = LeafSpine(4, 8, 8, 200.0)
    n, size = topology.hosts, 3e8
    result = simulate(topology, [collective_job("j", "ring-allreduce", np.arange(n), size)], Ecmp(7))
    assert result.cct_seconds == pytest.approx(2 * (n - 1) / n * size / (200 * GBPS), rel=1e-9)


def test_permutation_under_spraying_equals_ideal_and_ecmp_does_not() -> None:
    topology = LeafSpine(8, 8, 8, 100.0)
    rng = np.random.default_rng(11)
    dst = np.roll(rng.permutation(topology.hosts), 1)
    src = np.roll(dst, 1)
    job = [Job("perm", (FlowSet.build(src, dst, 1e8, np.arange(topology.hosts)),))]
    spray = simulate(topology, job, Spray())
    assert spray.cct_seconds == pytest.approx(spray.ideal_cct_seconds, rel=1e-9)
    assert spray.cct_seconds == pytest.approx(1e8 / (100 * GBPS), rel=1e-9)
    assert simulate(topology, job, Ecmp(0)).cct_seconds > spray.cct_seconds * 1.5


def test_oversubscribed_fabric_is_spine_bound() -> None:
    topology = LeafSpine(2, 4, 1, 100.0)  # 4:1; every host sends 1 GB to its peer on the other leaf
    step = FlowSet.build([0, 1, 2, 3, 4, 5, 6, 7], [4, 5, 6, 7, 0, 1, 2, 3], 1e9)
    result = simulate(topology, [Job("x", (step,))], Spray())
    assert result.cct_seconds == pytest.approx(4e9 / (100 * GBPS))
    assert result.max_congestion == pytest.approx(4.0)


@pytest.mark.parametrize("policy", [Ecmp(1), Spray()])
def test_replay_gives_the_same_result_as_full_simulation(policy: Ecmp | Spray) -> None:
    topology = LeafSpine(4, 4, 2, 100.0)
    hosts = place(16, 16, "random", np.random.default_rng(5))
    jobs = [collective_job("a", "ring-allreduce", hosts[:8], 1e8, 0),
            collective_job("b", "ring-allreduce", hosts[8:], 5e7, 1, start=0.0004)]
    fast, slow = simulate(topology, jobs, policy), simulate(topology, jobs, policy, replay=False)
    assert fast.events_replayed > 0 and slow.events_replayed == 0
    assert fast.cct_seconds == pytest.approx(slow.cct_seconds, rel=1e-9)
    assert [s.end for s in fast.steps] == pytest.approx([s.end for s in slow.steps], rel=1e-9)
    for a, b in zip(fast.flow_fct, slow.flow_fct):
        np.testing.assert_allclose(a, b, rtol=1e-9)


def test_concurrent_jobs_slow_each_other_down() -> None:
    topology = LeafSpine(2, 4, 1, 100.0)
    alone = simulate(topology, [collective_job("a", "ring-allreduce", np.array([0, 4]), 1e8)], Spray())
    both = simulate(topology, [collective_job("a", "ring-allreduce", np.array([0, 4]), 1e8, 0),
                               collective_job("b", "ring-allreduce", np.array([1, 5]), 1e8, 1)], Spray())
    assert both.job_cct["a"] == pytest.approx(2 * alone.job_cct["a"])
    assert both.job_cct["b"] == pytest.approx(both.job_cct["a"])


def test_same_seed_same_result_and_seed_matters() -> None:
    topology = LeafSpine(4, 4, 4, 100.0)

    def run(seed: int) -> list[float]:
        hosts = place(16, 16, "random", np.random.default_rng(seed))
        job = collective_job("j", "ring-allreduce", hosts, 1e8)
        result = simulate(topology, [job], Ecmp(seed))
        return [result.cct_seconds] + [s.end for s in result.steps]

    assert run(1) == run(1)
    assert len({tuple(run(s)) for s in range(5)}) > 1
