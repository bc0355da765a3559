"""Path policies: colouring properties, ECMP hashing and polarization, spraying weights, faults."""

from __future__ import annotations

from math import ceil

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from netsim import (
    ColouredSplit,
    Ecmp,
    FlowSet,
    GreedyLeastLoaded,
    LeafSpine,
    LinkFault,
    PolicyError,
    RandomSplit,
    Spray,
    make_policy,
)
from netsim.colouring import edge_colouring, max_degree
from netsim.metrics import link_congestion
from netsim.policies import Routing, minimal_splits
from netsim.topology import LEAF_UP, SPINE_DOWN


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=60))
def test_edge_colouring_is_proper_with_max_degree_colours(edges: list[tuple[int, int]]) -> None:
    left = np.array([e[0] for e in edges], dtype=np.int64)
    right = np.array([e[1] for e in edges], dtype=np.int64)
    colour = edge_colouring(left, right)
    degree = max_degree(left, right)
    assert colour.shape == left.shape
    assert ((colour >= 0) & (colour < max(degree, 1))).all()
    assert len(set(zip(left.tolist(), colour.tolist()))) == len(edges)
    assert len(set(zip(right.tolist(), colour.tolist()))) == len(edges)


def spine_link_counts(topology: LeafSpine, routing: Routing) -> np.ndarray:
    """Subflows on every leaf-spine link."""
    kinds = topology.link_kind()
    on_fabric = np.isin(kinds[routing.entry_link], [LEAF_UP, SPINE_DOWN])
    return np.bincount(routing.entry_link[on_fabric], minlength=topology.num_links)


step_strategy = st.integers(2, 6).flatmap(lambda leaves: st.tuples(
    st.just(leaves), st.integers(1, 5), st.integers(1, 7),
    st.lists(st.tuples(st.integers(0, 1000), st.integers(1, 1000)), min_size=1, max_size=40)))


@settings(max_examples=80, deadline=None)
@given(step_strategy)
def test_coloured_split_assigns_every_flow_and_bounds_spine_links(case: tuple) -> None:
    leaves, hosts_per_leaf, spines, pairs = case
    topology = LeafSpine(leaves, hosts_per_leaf, spines, 100.0)
    n = topology.hosts
    if n < 2:
        return
    src = np.array([a % n for a, _ in pairs])
    dst = (src + np.array([b % (n - 1) + 1 for _, b in pairs])) % n
    flows = FlowSet.build(src, dst, 1e6)
    src_leaf, dst_leaf = topology.leaf_of(src), topology.leaf_of(dst)
    cross = src_leaf != dst_leaf
    degree = max_degree(src_leaf[cross], dst_leaf[cross])

    one = ColouredSplit(1).route(topology, flows)
    assert sorted(one.flow.tolist()) == list(range(len(flows)))  # every flow assigned exactly once
    assert spine_link_counts(topology, one).max(initial=0) <= ceil(degree / spines)

    k = minimal_splits(degree, spines)
    split = ColouredSplit().route(topology, flows)
    assert split.splits == k
    np.testing.assert_allclose(np.bincount(split.flow, split.size, minlength=len(flows)), flows.size)
    assert spine_link_counts(topology, split).max(initial=0) <= k * degree // spines
    fabric = topology.link_kind() >= LEAF_UP
    spray = link_congestion(topology, flows, Spray().route(topology, flows))[fabric].max()
    assert link_congestion(topology, flows, split)[fabric].max() == pytest.approx(spray, rel=1e-12, abs=1e-12)


def test_minimal_splits_formula() -> None:
    assert [minimal_splits(d, 8) for d in (0, 1, 2, 4, 6, 8, 12)] == [1, 8, 4, 2, 4, 1, 2]


def test_ecmp_keeps_a_connection_on_one_path_and_spreads_connections() -> None:
    topology = LeafSpine(2, 64, 8, 100.0)
    src = np.arange(64)
    flows = FlowSet.build(src, src + 64, 1e6, 49152 + src)
    a, b = Ecmp(3).route(topology, flows), Ecmp(3).route(topology, flows)
    np.testing.assert_array_equal(a.entry_link, b.entry_link)
    used = np.unique(a.entry_link[topology.link_kind()[a.entry_link] == LEAF_UP])
    assert used.size == 8  # 64 connections over 8 spines: every spine gets some
    assert not np.array_equal(Ecmp(4).route(topology, flows).entry_link, a.entry_link)


def test_shared_hash_seed_polarizes_planes_and_spines() -> None:
    topology = LeafSpine(2, 64, 4, 100.0, planes=2)
    src = np.arange(64)
    flows = FlowSet.build(src, src + 64, 1e6, 49152 + src)

    def used_paths(policy: Ecmp) -> set[tuple[int, int]]:
        plane, spine = policy.choose(topology, flows.src, flows.dst, flows.port)
        return set(zip(plane.tolist(), spine.tolist()))

    assert len(used_paths(Ecmp(9, per_switch_seed=True))) == 8
    polarized = used_paths(Ecmp(9, per_switch_seed=False))
    assert len(polarized) == 4 and all(p == s % 2 for p, s in polarized)


def test_spray_spreads_each_flow_evenly_over_alive_paths() -> None:
    topology = LeafSpine(2, 2, 4, 100.0, faults=(LinkFault(1, 3),))
    routing = Spray().route(topology, FlowSet.build([0, 0], [2, 1], 1e6))
    kinds = topology.link_kind()[routing.entry_link]
    up = (routing.entry_sub == 0) & (kinds == LEAF_UP)
    assert routing.entry_weight[up].tolist() == pytest.approx([1 / 3] * 3)  # spine 3 is dead to leaf 1
    assert not ((routing.entry_sub == 1) & (kinds == LEAF_UP)).any()  # same-leaf flow stays on the leaf


@pytest.mark.parametrize("policy", [Ecmp(0), RandomSplit(3, 0), Spray(), ColouredSplit(), GreedyLeastLoaded(2)])
def test_no_policy_uses_a_failed_link(policy: object) -> None:
    faults = (LinkFault(0, 1), LinkFault(2, 0, factor=0.0))
    topology = LeafSpine(3, 4, 3, 100.0, faults=faults)
    src = np.arange(12)
    flows = FlowSet.build(src, (src + 4) % 12, 1e6, 49152 + src)
    routing = policy.route(topology, flows)  # type: ignore[attr-defined]
    assert (topology.capacity[routing.entry_link] > 0).all()
    np.testing.assert_allclose(np.bincount(routing.flow, routing.size, minlength=12), flows.size)


def test_degraded_link_keeps_a_reduced_capacity() -> None:
    topology = LeafSpine(2, 2, 2, 100.0, faults=(LinkFault(0, 1, factor=0.25),))
    assert topology.capacity[topology.leaf_up(0, 0, 1)] == pytest.approx(0.25 * topology.host_capacity)
    assert topology.capacity[topology.spine_down(0, 1, 0)] == pytest.approx(0.25 * topology.host_capacity)


def test_greedy_balances_a_step_ecmp_collides_on() -> None:
    topology = LeafSpine(2, 8, 8, 100.0)
    src = np.arange(8)
    flows = FlowSet.build(src, src + 8, 1e6, 49152 + src)
    greedy = link_congestion(topology, flows, GreedyLeastLoaded().route(topology, flows))
    assert greedy.max() == pytest.approx(1.0)
    assert link_congestion(topology, flows, Ecmp(0).route(topology, flows)).max() > 1.0


def test_unroutable_pair_and_unknown_policy_raise_policy_errors() -> None:
    topology = LeafSpine(2, 1, 2, 100.0, faults=(LinkFault(0, 0), LinkFault(0, 1)))
    flows = FlowSet.build([0], [1], 1e6)
    for policy in (Ecmp(), Spray(), ColouredSplit(), GreedyLeastLoaded()):
        with pytest.raises(PolicyError, match="leaf 0 to leaf 1|every leaf"):
            policy.route(topology, flows)
    with pytest.raises(PolicyError, match="unknown policy 'wcmp'"):
        make_policy("wcmp")
    with pytest.raises(PolicyError, match="k >= 1"):
        make_policy("random-split", splits=0)
