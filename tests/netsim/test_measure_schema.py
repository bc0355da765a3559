"""The `netsim measure --json` schema: round trip and clear errors on malformed files."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from netsim.measure_schema import (
    FabricSummary,
    MeasuredRow,
    MeasureReport,
    MeasureSchemaError,
    SecondsStats,
    load_report,
)

BASE = MeasuredRow(backend="split-tcp", collective="allreduce", ranks=4, size_bytes=1 << 20, count=1 << 18,
                   dtype="float32", seconds=SecondsStats(0.1, 0.12, 0.13, 0.09, 0.14), algbw=1e7, busbw=1.5e7,
                   iters=5, warmup=1, policy="split", splits=2,
                   fabric=FabricSummary("ls", 2, 2, 2, 100.0, 100.0, (0, 2, 1, 3), seed=3),
                   paths={"0->1": (0, 1), "1->2": (None,)},
                   rank_seconds=tuple(tuple(0.09 + 0.01 * (r + i) for i in range(5)) for r in range(4)))


def test_report_round_trips_through_a_json_file(tmp_path: Path) -> None:
    report = MeasureReport((BASE, replace(BASE, backend="gloo", policy=None, splits=None, fabric=None,
                                          rank_seconds=None)), meta={"host": "x"})
    path = tmp_path / "m.json"
    path.write_text(json.dumps(report.to_dict()))
    assert load_report(path) == report


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.pop("schema"), "missing field 'schema'"),
    (lambda d: d.update(schema=7), "schema 7 is not supported"),
    (lambda d: d["rows"][0].pop("busbw"), r"rows\[0\]: missing field 'busbw'"),
    (lambda d: d["rows"][0].update(backend="rdma"), "backend must be one of"),
    (lambda d: d["rows"][0]["seconds"].update(p50=1.0), "min <= p50"),
    (lambda d: d["rows"][0]["fabric"].update(rank_hosts=[0, 0, 1, 2]), "distinct hosts"),
    (lambda d: d["rows"][0].update(ranks=3), "4 hosts for 3 ranks"),
    (lambda d: d["rows"][0].update(size_bytes="1M"), "'size_bytes' must be int"),
    (lambda d: d["rows"][0]["paths"].update({"0->9": [0]}), r"paths entry '0->9'"),
    (lambda d: d["rows"][0].update(paths=[1, 2]), "paths must map"),
    (lambda d: d["rows"][0]["rank_seconds"].pop(), "rank_seconds must hold 5 positive times for each of 4"),
    (lambda d: d["rows"][0]["rank_seconds"][1].append(0.1), "rank_seconds must hold 5 positive times"),
    (lambda d: d["rows"][0]["rank_seconds"][0].__setitem__(2, -1.0), "rank_seconds must hold 5 positive times"),
    (lambda d: d["rows"][0].update(rank_seconds=[[0.1] * 5, "x", [0.1] * 5, [0.1] * 5]),
     "rank_seconds must be a list of lists of seconds"),
])
def test_malformed_reports_name_the_problem(tmp_path: Path, mutate, message: str) -> None:
    data = MeasureReport((BASE,)).to_dict()
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(MeasureSchemaError, match=message):
        load_report(path)


def test_unreadable_and_non_json_files(tmp_path: Path) -> None:
    with pytest.raises(MeasureSchemaError, match="cannot read measurements"):
        load_report(tmp_path / "missing.json")
    (tmp_path / "x.json").write_text("{nope")
    with pytest.raises(MeasureSchemaError, match="invalid JSON at line 1"):
        load_report(tmp_path / "x.json")
