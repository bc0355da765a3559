"""Split-TCP on loopback: byte-exact reassembly, the collectives, path plans, and failures on every rank."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netsim.colouring import max_degree
from netsim.measure.launch import free_ports
from netsim.transport import (
    MessageLengthError,
    PathPolicyName,
    PeerDisconnected,
    SplitTcpTransport,
    TransportError,
    TransportTimeout,
    allgather,
    allreduce,
    alltoall,
    plan_paths,
    reducescatter,
)
from netsim.transport.collectives import alltoall_pairs, ring_pairs
from netsim.transport.paths import PathPlan
from netsim.transport.split_tcp import piece_bounds


def on_ranks(
    world: int, fn: Callable[[SplitTcpTransport], Any], k: int = 1, timeout: float = 10.0
) -> list[Any]:
    """Run ``fn(transport)`` on ``world`` ranks (threads, real loopback sockets); results or exceptions."""
    addresses = [("127.0.0.1", p) for p in free_ports(world)]
    out: list[Any] = [None] * world

    def body(r: int) -> None:
        with SplitTcpTransport(r, addresses, PathPlan({}, default_k=k), timeout=timeout) as t:
            try:
                out[r] = fn(t)
            except Exception as exc:  # noqa: BLE001 - the test inspects it
                out[r] = exc

    threads = [threading.Thread(target=body, args=(r,)) for r in range(world)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout * 4)
        assert not th.is_alive(), "a rank hung"
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nbytes=st.integers(0, 300_000), k=st.integers(1, 9), seed=st.integers(0, 2**32 - 1))
def test_messages_reassemble_byte_exact(nbytes: int, k: int, seed: int) -> None:
    payload = np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)

    def fn(t: SplitTcpTransport) -> Any:
        if t.rank == 0:
            t.send(1, payload)
            return t.pop_timings()
        got = np.full(nbytes, 7, dtype=np.uint8)
        t.recv(0, got)
        return got

    timings, got = on_ranks(2, fn, k=k)
    assert np.array_equal(got, payload)
    assert sorted(x.subflow for x in timings) == list(range(k))  # one timed piece per subflow
    assert sum(x.nbytes for x in timings) == nbytes


def test_piece_bounds_cover_the_message_once() -> None:
    for total in (0, 1, 7, 1000):
        for k in (1, 3, 8):
            b = piece_bounds(total, k)
            assert b[0][0] == 0 and b[-1][1] == total and all(b[i][1] == b[i + 1][0] for i in range(k - 1))


@pytest.mark.parametrize("world,k", [(2, 1), (3, 2), (4, 3)])
def test_collectives_match_numpy(world: int, k: int) -> None:
    rng = np.random.default_rng(world)
    data = [rng.standard_normal(1001).astype(np.float64) for _ in range(world)]
    blocks = [rng.integers(0, 100, 3 * world).astype(np.int64) for _ in range(world)]

    def fn(t: SplitTcpTransport) -> dict[str, np.ndarray]:
        r = t.rank
        ar = data[r].copy()
        allreduce(t, ar)
        ag = np.empty(world * 5, dtype=np.int32)
        allgather(t, np.full(5, r, dtype=np.int32), ag)
        rs = np.empty(3, dtype=np.int64)
        reducescatter(t, blocks[r], rs)
        a2a = np.empty(3 * world, dtype=np.int64)
        alltoall(t, blocks[r], a2a)
        tensor = torch.full((6,), float(r + 1))
        allreduce(t, tensor)
        return {"ar": ar, "ag": ag, "rs": rs, "a2a": a2a, "torch": tensor.numpy()}

    out = on_ranks(world, fn, k=k)
    for r, res in enumerate(out):
        assert not isinstance(res, Exception), res
        np.testing.assert_allclose(res["ar"], sum(data), rtol=1e-12)
        assert np.array_equal(res["ag"], np.repeat(np.arange(world), 5))
        assert np.array_equal(res["rs"], sum(blocks)[3 * r : 3 * r + 3])
        assert np.array_equal(
            res["a2a"], np.concatenate([blocks[p][3 * r : 3 * r + 3] for p in range(world)])
        )
        assert np.array_equal(res["torch"], np.full(6, world * (world + 1) / 2))


def test_wrong_length_is_an_error_on_every_rank() -> None:
    def fn(t: SplitTcpTransport) -> None:
        allreduce(t, np.ones(1000 if t.rank != 1 else 999, dtype=np.float32))

    out = on_ranks(3, fn, k=2)
    assert all(isinstance(e, TransportError) for e in out), out
    assert any(isinstance(e, MessageLengthError) and "expected" in str(e) for e in out)


def test_peer_disconnect_is_an_error_on_every_other_rank() -> None:
    def fn(t: SplitTcpTransport) -> None:
        if t.rank == 2:  # the first ring step of the all-reduce, then the rank goes away
            t.exchange({0: np.ones(33333, dtype=np.float32)}, {1: np.empty(33333, dtype=np.float32)})
            t.close()
            return
        allreduce(t, np.ones(99_999, dtype=np.float32))

    out = on_ranks(3, fn)
    assert out[2] is None
    assert all(isinstance(e, PeerDisconnected) for e in out[:2]), out
    assert all("closed" in str(e) or "failed" in str(e) for e in out[:2]), out


def test_a_silent_peer_times_out() -> None:
    def fn(t: SplitTcpTransport) -> Any:
        if t.rank == 1:
            time.sleep(2.5)  # never sends
            return None
        start = time.monotonic()
        try:
            t.recv(1, np.empty(4))
        except TransportTimeout as exc:
            return exc, time.monotonic() - start
        return None

    out = on_ranks(2, fn, timeout=1.0)
    exc, waited = out[0]
    assert "rank 1" in str(exc) and 0.9 < waited < 2.0


def test_bad_buffers_are_rejected_with_the_reason() -> None:
    addresses = [("127.0.0.1", p) for p in free_ports(2)]
    with SplitTcpTransport(0, addresses, PathPlan({})) as t:
        with pytest.raises(TransportError, match="not another rank"):
            t.send(0, np.ones(3))
        with pytest.raises(TransportError, match="C-contiguous"):
            allreduce(t, np.ones((4, 4))[:, 1])
        with pytest.raises(TransportError, match="numpy array"):
            t.send(1, [1, 2, 3])
    with pytest.raises(TransportError, match="rank 5"):
        SplitTcpTransport(5, addresses, PathPlan({}))


@settings(max_examples=40, deadline=None)
@given(
    leaves=st.integers(2, 4),
    per_leaf=st.integers(1, 3),
    spines=st.integers(1, 5),
    seed=st.integers(0, 999),
    alltoall_pattern=st.booleans(),
)
def test_minimal_plan_balances_uplinks_like_spraying(
    leaves: int, per_leaf: int, spines: int, seed: int, alltoall_pattern: bool
) -> None:
    world = leaves * per_leaf
    rank_leaf = list(np.random.default_rng(seed).permutation(np.repeat(np.arange(leaves), per_leaf)))
    pairs = alltoall_pairs(world) if alltoall_pattern else ring_pairs(world)
    plan = plan_paths(pairs, rank_leaf, spines, PathPolicyName.minimal)
    cross = [(s, d) for s, d in pairs if rank_leaf[s] != rank_leaf[d]]
    if not cross:
        return
    degree = max_degree(
        np.array([rank_leaf[s] for s, _ in cross]), np.array([rank_leaf[d] for _, d in cross])
    )
    up = np.zeros((leaves, spines))
    down = np.zeros((leaves, spines))
    for s, d in cross:
        subs = plan.subflows(s, d)
        for p in subs:
            up[rank_leaf[s], p.spine] += 1 / len(subs)
            down[rank_leaf[d], p.spine] += 1 / len(subs)
    # spraying's bound: D flows' worth spread over S spines on the busiest leaf
    assert max(up.max(), down.max()) == pytest.approx(degree / spines)


def test_round_robin_and_ecmp_plans() -> None:
    rr = plan_paths(ring_pairs(4), [0, 0, 1, 1], 3, PathPolicyName.round_robin)
    assert [p.spine for p in rr.subflows(1, 2)] == [1, 2, 0]
    ecmp = plan_paths(ring_pairs(4), [0, 0, 1, 1], 2, PathPolicyName.ecmp, splits=4, seed=3)
    ports = [p.port for p in ecmp.subflows(1, 2)]
    assert len(set(ports)) == 4 and all(
        40000 <= p <= 59999 and ecmp.subflows(1, 2)[0].spine is None for p in ports
    )
    assert ports == [
        p.port
        for p in plan_paths(ring_pairs(4), [0, 0, 1, 1], 2, PathPolicyName.ecmp, splits=4, seed=3).subflows(
            1, 2
        )
    ]
