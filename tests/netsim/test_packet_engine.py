"""`netsim simulate --engine packet`: a policy's routing pinned per host pair and replayed packet by packet."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from typer.testing import CliRunner

from netsim.cli import app
from netsim.collectives import collective_job
from netsim.packet.engine import pinned_paths
from netsim.policies import make_policy
from netsim.topology import LeafSpine

runner = CliRunner()
SMALL = ["--leaves", "4", "--hosts-per-leaf", "2", "--spines", "2", "--link-gbps", "0.1"]
RING_A = np.array([0, 2, 4, 6, 1, 3, 5, 7])  # every ring hop crosses leaves, two flows leave each leaf


def test_split_pins_a_leafs_crossing_flows_on_different_spines_and_ecmp_may_not() -> None:
    topology = LeafSpine(4, 2, 2, 0.1)
    job = collective_job("j", "ring-allreduce", RING_A, 1e6)
    split = pinned_paths(topology, make_policy("split"), job)
    assert set(split) == {(int(RING_A[i]), int(RING_A[(i + 1) % 8])) for i in range(8)}
    per_uplink = Counter((topology.leaf_of(src), spine) for (src, _), spines in split.items() for spine in spines)
    assert sorted(per_uplink.values()) == [1] * 8  # each of the 8 leaf uplinks carries one subflow
    collisions = []
    for seed in range(8):
        ecmp = pinned_paths(topology, make_policy("ecmp", None, seed), job)
        assert all(len(spines) == 1 for spines in ecmp.values())
        collisions.append(max(Counter((topology.leaf_of(s), sp[0]) for (s, _), sp in ecmp.items()).values()))
    assert max(collisions) == 2  # some hash seed puts a leaf's two flows on one spine


def test_k_way_split_gives_every_pair_k_subflows() -> None:
    topology = LeafSpine(4, 2, 2, 0.1)
    job = collective_job("j", "alltoall", np.arange(8), 1e5)
    paths = pinned_paths(topology, make_policy("split", 4), job)
    assert len(paths) == 56 and all(len(spines) == 4 for spines in paths.values())


def _packet_json(*args: str) -> dict:
    result = runner.invoke(app, ["simulate", *SMALL, "--engine", "packet", "--json", *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_packet_engine_agrees_with_the_fluid_engine_without_collisions_and_shows_ecmps() -> None:
    common = ["--collective", "ring-allreduce", "--size", "5e5", "--placement", "random", "--seed", "3"]
    split = _packet_json(*common, "--policy", "split", "--iters", "2")
    fluid = runner.invoke(app, ["simulate", *SMALL, *common, "--policy", "split", "--json"])
    assert fluid.exit_code == 0, fluid.output
    assert split["engine"] == "packet" and split["timeouts"] == 0
    assert split["seconds"]["p50"] == pytest.approx(json.loads(fluid.stdout)["cct_seconds"], rel=0.1)
    assert split["busbw"] == pytest.approx(2 * 7 / 8 * 5e5 / split["seconds"]["p50"])
    ecmp = _packet_json(*common, "--policy", "ecmp", "--iters", "2")
    assert ecmp["seconds"]["max"] > 1.5 * split["seconds"]["max"]  # this seed's hash collides on a spine


def test_linux_host_egress_stalls_the_incast_all_to_all_on_the_probe_timer_not_on_timeouts() -> None:
    """All-to-all with 4 subflows a pair (28 per port) at 512 KiB on the measured 4x2x2 fabric: the
    lossy egress repairs most losses fast (p50 ~50 ms, dozens of RTOs); Linux's egress stalls every rank
    about 200 ms on refused sends with nothing in flight, with few RTOs, as measured (210-216 ms)."""
    common = ["--collective", "alltoall", "--size", "524288", "--placement", "packed", "--policy", "split",
              "--splits", "4", "--iters", "4"]
    lossy = _packet_json(*common)
    linux = _packet_json(*common, "--small-queues", "3")
    assert lossy["seconds"]["p50"] < 0.1 and lossy["timeouts"] > 20
    assert linux["seconds"]["min"] > 0.2 and linux["timeouts"] < lossy["timeouts"] / 5


@pytest.mark.parametrize("args,message", [
    (["--policy", "spray"], "fluid spraying"),
    (["--size", "1e9"], "smaller --size"),
    (["--jobs", "2"], "replays one job"),
    (["--planes", "2"], "one plane"),
    (["--iters", "0"], "--iters must be >= 1"),
    (["--queue-ms", "0"], "--queue-ms must be > 0"),
    (["--small-queues", "0"], "small queues (--small-queues) must be > 0"),
    (["--cpus", "0"], "cpus (--cpus) must be a whole number >= 1"),
])
def test_packet_engine_refuses_what_it_cannot_replay(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["simulate", *SMALL, "--engine", "packet", "--size", "1e5", *args])
    assert result.exit_code == 2
    assert message in result.output
