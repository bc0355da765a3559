"""Collectives, placements, traffic matrices and topology validation."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from netsim import (
    Ecmp,
    LeafSpine,
    LinkFault,
    NetsimError,
    TopologyError,
    TrafficError,
    load_matrix,
    place,
    simulate,
)
from netsim.collectives import COLLECTIVES, collective_job, collective_steps


def bytes_sent_per_rank(name: str, n: int, size: float) -> np.ndarray:
    total = np.zeros(n)
    for step in collective_steps(name, n, size):
        np.add.at(total, step.src, step.size)
    return total


@pytest.mark.parametrize("name,expected", [
    ("ring-allreduce", 2 * 7 / 8), ("hd-allreduce", 2 * 7 / 8), ("ring-allgather", 7 / 8),
    ("ring-reducescatter", 7 / 8), ("alltoall", 7 / 8),
])
def test_collectives_send_the_textbook_bytes_per_rank(name: str, expected: float) -> None:
    np.testing.assert_allclose(bytes_sent_per_rank(name, 8, 1e6), expected * 1e6)


def test_collective_step_structure() -> None:
    ring = collective_steps("ring-allreduce", 8, 1e6)
    assert len(ring) == 14 and len({id(s) for s in ring}) == 1  # one pattern, reused
    hd = collective_steps("hd-allreduce", 8, 1e6)
    assert [int(s.dst[0]) for s in hd] == [4, 2, 1, 1, 2, 4]
    tree = collective_steps("tree-allreduce", 7, 1e6)
    assert len(tree) == 4 and [len(s) for s in tree] == [4, 2, 2, 4]
    assert len(collective_steps("alltoall", 5, 1e6)[0]) == 20
    assert set(COLLECTIVES) >= {"ring-allreduce", "tree-allreduce", "alltoall"}


def test_collective_errors() -> None:
    with pytest.raises(TrafficError, match="power-of-two"):
        collective_steps("hd-allreduce", 6, 1e6)
    with pytest.raises(TrafficError, match="unknown collective 'allreduce'"):
        collective_steps("allreduce", 4, 1e6)
    with pytest.raises(TrafficError, match="size must be > 0"):
        collective_steps("ring-allreduce", 4, 0)


def test_placements() -> None:
    assert place(4, 8, "packed").tolist() == [0, 1, 2, 3]
    hosts = place(6, 8, "random", np.random.default_rng(1))
    assert len(set(hosts.tolist())) == 6 and hosts.max() < 8
    assert place(6, 8, "random", np.random.default_rng(1)).tolist() == hosts.tolist()
    assert place(2, 8, "given", given=[7, 3]).tolist() == [7, 3]
    with pytest.raises(TrafficError, match="do not fit"):
        place(9, 8, "packed")
    with pytest.raises(TrafficError, match="distinct hosts"):
        place(2, 8, "given", given=[3, 3])
    with pytest.raises(TrafficError, match="unknown placement 'spread'"):
        place(2, 8, "spread")


def test_job_on_hosts_keeps_repeated_steps_shared() -> None:
    job = collective_job("j", "ring-allreduce", np.array([5, 2, 7, 0]), 4e6)
    assert len({id(s) for s in job.steps}) == 1
    assert job.steps[0].src.tolist() == [5, 2, 7, 0] and job.steps[0].dst.tolist() == [2, 7, 0, 5]


def test_matrix_from_csv_and_json(tmp_path: Path) -> None:
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("src,dst,bytes,step\n0,2,1e9,0\n1,3,5e8,0\n2,0,1e9,1\n")
    job = load_matrix(csv_path)
    assert job.name == "m" and [len(s) for s in job.steps] == [2, 1]
    json_path = tmp_path / "m.json"
    json_path.write_text(json.dumps({"flows": [{"src": 0, "dst": 2, "bytes": 1e9},
                                               {"src": 1, "dst": 3, "bytes": 5e8}]}))
    topology = LeafSpine(2, 2, 1, 8.0)
    assert simulate(topology, [load_matrix(json_path)], Ecmp()).cct_seconds == pytest.approx(1.5)


@pytest.mark.parametrize("text,match", [
    ("src,dst\n0,1\n", r"CSV header lacks \['bytes'\]"),
    ("src,dst,bytes\n0,1,abc\n", "flow 1 has a non-numeric field"),
    ("src,dst,bytes\n0,1,10\n2,2,10\n", "flow 2 is invalid"),
    ("src,dst,bytes\n", "no flows found"),
])
def test_bad_csv_matrices(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(TrafficError, match=match):
        load_matrix(path)


def test_bad_json_and_missing_matrix(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text("{\"flows\": [")
    with pytest.raises(TrafficError, match="invalid JSON"):
        load_matrix(path)
    path.write_text("[{\"src\": 0, \"dst\": 1}]")
    with pytest.raises(TrafficError, match="lacks field 'bytes'"):
        load_matrix(path)
    with pytest.raises(TrafficError, match="cannot read"):
        load_matrix(tmp_path / "nope.csv")


def test_matrix_host_outside_fabric(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("src,dst,bytes\n0,9,100\n")
    with pytest.raises(TrafficError, match="uses host 9 but the fabric has 4 hosts"):
        simulate(LeafSpine(2, 2, 1, 8.0), [load_matrix(path)], Ecmp())


@pytest.mark.parametrize("kwargs,match", [
    ({"leaves": 0}, "leaves must be a positive integer"),
    ({"spines": 2.5}, "spines must be a positive integer"),
    ({"link_gbps": -1.0}, "link_gbps must be > 0"),
    ({"spine_gbps": 0.0}, "spine_gbps must be > 0"),
    ({"faults": (LinkFault(5, 0),)}, "outside the fabric"),
    ({"faults": (LinkFault(0, 0, factor=1.5),)}, r"factor must be in \[0, 1\)"),
])
def test_bad_topologies(kwargs: dict, match: str) -> None:
    args = {"leaves": 2, "hosts_per_leaf": 2, "spines": 2, "link_gbps": 100.0} | kwargs
    with pytest.raises(TopologyError, match=match):
        LeafSpine(**args)


def test_topology_numbers_and_names() -> None:
    topology = LeafSpine(4, 8, 2, 100.0, spine_gbps=200.0, planes=2)
    assert topology.hosts == 32 and topology.oversubscription == pytest.approx(2.0)
    assert topology.num_links == 2 * (2 * 32 + 2 * 8)
    assert topology.link_name(topology.leaf_up(1, 3, 1)) == "p1 leaf3->spine1"
    assert topology.link_name(topology.spine_down(0, 1, 2)) == "p0 spine1->leaf2"
    assert topology.link_name(topology.host_down(0, 9)) == "p0 leaf1->host9"
    with pytest.raises(NetsimError):
        topology.link_name(topology.num_links)
