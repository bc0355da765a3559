"""nccl-tests' algbw and busbw definitions (src/*.cu, doc/PERFORMANCE.md)."""

from __future__ import annotations

import pytest

from netsim.busbw import algbw, bus_factor, busbw
from netsim.errors import TrafficError


def test_algbw_is_size_over_time() -> None:
    assert algbw(1e9, 0.5) == pytest.approx(2e9)


@pytest.mark.parametrize("collective,ranks,factor", [
    ("allreduce", 8, 2 * 7 / 8), ("ring-allreduce", 2, 1.0), ("hd-allreduce", 4, 1.5),
    ("allgather", 8, 7 / 8), ("ring-reducescatter", 4, 3 / 4), ("alltoall", 16, 15 / 16),
    ("broadcast", 8, 1.0), ("reduce", 3, 1.0), ("allreduce", 1, 0.0),
])
def test_bus_factor_matches_nccl_tests(collective: str, ranks: int, factor: float) -> None:
    assert bus_factor(collective, ranks) == pytest.approx(factor)


def test_busbw_example_from_nccl_tests_docs() -> None:
    # 8 ranks, 1 GB all-reduce in 10 ms: algbw 100 GB/s, busbw 175 GB/s.
    assert busbw("allreduce", 1e9, 0.01, 8) == pytest.approx(175e9)
    assert busbw("alltoall", 1e9, 0.01, 8) == pytest.approx(87.5e9)


@pytest.mark.parametrize("call,message", [
    (lambda: busbw("gossip", 1, 1, 2), "no bus bandwidth factor for collective 'gossip'"),
    (lambda: busbw("allreduce", 1, 0.0, 2), "seconds must be > 0"),
    (lambda: busbw("allreduce", -1, 1.0, 2), "size_bytes must be >= 0"),
    (lambda: bus_factor("allreduce", 0), "ranks must be a positive integer"),
])
def test_bad_input_is_a_traffic_error(call, message: str) -> None:
    with pytest.raises(TrafficError, match=message):
        call()
