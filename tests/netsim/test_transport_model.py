"""The transport model: header bytes, rate efficiency, sharing loss and per-step latency in the engine."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from netsim import ColouredSplit, Ecmp, FlowSet, Job, LeafSpine, Spray, place, simulate
from netsim.collectives import collective_job
from netsim.transport_model import (
    IDEAL,
    TCP_DEFAULT,
    TransportModel,
    TransportModelError,
    load_transport_model,
)

FABRIC = LeafSpine(leaves=2, hosts_per_leaf=2, spines=1, link_gbps=8.0)  # 1 GB/s on every link
ZERO = replace(IDEAL, l3l4_header_bytes=52, l2_header_bytes=14)  # headers only


def test_wire_bytes_count_one_header_per_started_packet() -> None:
    assert ZERO.wire_bytes(np.array([1.0, 1448.0, 1449.0, 0.25])).tolist() == [67.0, 1514.0, 1581.0, 66.25]
    assert ZERO.header_efficiency == pytest.approx(1448 / 1514)


def test_headers_and_rate_efficiency_slow_a_single_flow_by_hand_computed_factors() -> None:
    step = FlowSet.build([0], [2], 1448e6)  # 1e6 full packets
    model = replace(ZERO, rate_efficiency=0.8)
    result = simulate(FABRIC, [Job("j", (step,))], Ecmp(), transport=model)
    assert result.cct_seconds == pytest.approx(1514e6 / 1e9 / 0.8)


def test_sharing_loss_shrinks_a_shared_link_by_its_formula() -> None:
    step = FlowSet.build([0, 1], [2, 3], 1e9)  # both cross leaf0->spine0
    model = replace(IDEAL, sharing_loss=0.2)
    result = simulate(FABRIC, [Job("j", (step,))], Ecmp(), transport=model)
    assert result.cct_seconds == pytest.approx(2e9 / (1e9 * (1 - 0.2 * (1 - 1 / 2))))
    alone = simulate(FABRIC, [Job("j", (FlowSet.build([0], [2], 1e9),))], Ecmp(), transport=model)
    assert alone.cct_seconds == pytest.approx(1.0)


def test_every_step_pays_startup_and_propagation() -> None:
    model = replace(IDEAL, message_startup_s=1e-4, hop_latency_s=2e-6)
    a, b = FlowSet.build([0], [1], 1e6), FlowSet.build([0], [2], 1e6)  # within a leaf (2 hops), across (4)
    result = simulate(FABRIC, [Job("j", (a, b), start=0.5)], Ecmp(), transport=model)
    assert [s.seconds for s in result.steps] == pytest.approx([1e-4 + 2 * 2e-6 + 1e-3, 1e-4 + 4 * 2e-6 + 1e-3])
    assert result.steps[0].start == pytest.approx(0.5)
    assert result.flow_fct[0].tolist() == pytest.approx([result.steps[0].seconds])  # FCT counts the latency


def test_a_one_byte_allreduce_takes_its_latency_not_picoseconds() -> None:
    topology = LeafSpine(4, 4, 4, 100.0)
    job = collective_job("j", "ring-allreduce", np.arange(16), 1.0)
    assert simulate(topology, [job], Ecmp()).cct_seconds < 1e-9  # the pure fluid model's answer
    result = simulate(topology, [job], Ecmp(), transport=TCP_DEFAULT)
    wire = max(TCP_DEFAULT.wire_bytes(np.array([1 / 16]))[0] - TCP_DEFAULT.burst_bytes / 30, 0.0)
    per_step = TCP_DEFAULT.step_latency(4) + wire / (12.5e9 * TCP_DEFAULT.rate_efficiency)
    assert result.cct_seconds == pytest.approx(30 * per_step)
    assert result.cct_seconds > 1e-3


def test_subflow_startup_overlaps_the_transfer_and_burst_skips_the_rate() -> None:
    many = FlowSet.build([0], [2], 1e6)
    model = replace(IDEAL, subflow_startup_s=1e-3)
    split4 = simulate(FABRIC, [Job("j", (many,))], ColouredSplit(4), transport=model)
    assert split4.cct_seconds == pytest.approx(3e-3)  # 3 extra subflows' start-up outlast 1 ms of bytes
    big = simulate(FABRIC, [Job("j", (FlowSet.build([0], [2], 1e7),))], ColouredSplit(4), transport=model)
    assert big.cct_seconds == pytest.approx(1e-2)  # 10 ms of bytes hide the 3 ms start-up
    burst = simulate(FABRIC, [Job("j", (many, many))], Ecmp(), transport=replace(IDEAL, burst_bytes=5e5))
    assert burst.cct_seconds == pytest.approx(2 * (1e6 - 2.5e5) / 1e9)  # the burst is spread over 2 steps


@pytest.mark.parametrize("policy", [Ecmp(1), Spray()])
def test_replay_agrees_with_full_simulation_under_latency_and_concurrent_jobs(policy: Ecmp | Spray) -> None:
    topology = LeafSpine(4, 4, 2, 100.0)
    hosts = place(16, 16, "random", np.random.default_rng(5))
    jobs = [collective_job("a", "ring-allreduce", hosts[:8], 1e7, 0),
            collective_job("b", "ring-allreduce", hosts[8:], 5e6, 1, start=0.0004)]
    model = replace(TCP_DEFAULT, sharing_loss=0.1)
    fast = simulate(topology, jobs, policy, transport=model)
    slow = simulate(topology, jobs, policy, replay=False, transport=model)
    assert fast.events_replayed > 0 and slow.events_replayed == 0
    assert fast.cct_seconds == pytest.approx(slow.cct_seconds, rel=1e-9)
    assert [s.end for s in fast.steps] == pytest.approx([s.end for s in slow.steps], rel=1e-9)


def test_model_files_round_trip_and_presets_load(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    model = replace(TCP_DEFAULT, sharing_loss=0.125, source="test")
    model.write(path)
    assert load_transport_model(path) == model
    assert load_transport_model("ideal") is IDEAL and load_transport_model("tcp") is TCP_DEFAULT


@pytest.mark.parametrize("change,message", [
    ({"version": 9}, "version must be 1"),
    ({"rate_efficiency": 1.5}, r"rate_efficiency must be in \(0, 1\]"),
    ({"sharing_loss": -0.1}, r"sharing_loss must be in \[0, 1\)"),
    ({"hop_latency_s": "fast"}, "'hop_latency_s' has the wrong type"),
    ({"jitter": 1}, r"unknown field\(s\) \['jitter'\]"),
    ({"message_startup_s": -1}, "message_startup_s must be a finite number >= 0"),
])
def test_bad_model_files_name_the_field(tmp_path: Path, change: dict, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(json.dumps({**TCP_DEFAULT.to_dict(), **change}))
    with pytest.raises(TransportModelError, match=message):
        load_transport_model(path)


def test_missing_model_file_suggests_presets(tmp_path: Path) -> None:
    with pytest.raises(TransportModelError, match="cannot read transport model .* one of ideal, tcp"):
        load_transport_model(tmp_path / "nope.json")
    assert TransportModel().is_ideal is False and IDEAL.is_ideal
