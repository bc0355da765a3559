"""Phase events and the Prometheus metrics built from them: the event -> metric mapping, the events of
real saves and loads (sync, async, failed), the JSON-lines event log, the text file, the environment
variables, and docs/metrics.md and the Grafana dashboard against the metrics the code registers."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import bytecheckpoint as bcp
from bytecheckpoint.events import STALL, OperationEvent, PhaseEvent
from bytecheckpoint.interop import export_checkpoint, import_checkpoint
from bytecheckpoint.storage import LocalStorage
from bytecheckpoint.telemetry import CheckpointMetrics, metrics_from_environment

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def metrics() -> Iterator[CheckpointMetrics]:
    m = bcp.enable_metrics(CollectorRegistry(), role="trainer")
    yield m
    m.close()


def sample(m: CheckpointMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, {"role": m.role, **labels})


def state(seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"model": {"w": torch.randn(64, 32, generator=g), "b": torch.randn(32, generator=g)}, "step": seed}


def blank() -> dict:
    return {"model": {"w": torch.zeros(64, 32), "b": torch.zeros(32)}, "step": None}


class FailingWrites(LocalStorage):
    """Local disk whose data files cannot be written (a full or broken disk)."""

    def open_writer(self, name: str):
        raise OSError(28, "No space left on device (injected)", name)


# -- the mapping, from synthetic events ------------------------------------------------------------

def test_phase_events_fill_the_phase_histogram_and_the_byte_counters() -> None:
    m = CheckpointMetrics(CollectorRegistry(), role="trainer")
    try:
        m.observe(PhaseEvent("save", "write", 0, "p", 0.5, bytes=1000, step=7))
        m.observe(PhaseEvent("save", "write", 0, "p", 2.0, bytes=24, step=8))
        m.observe(PhaseEvent("save", "write", 0, "p", 9.0, bytes=99, error="OSError"))  # failed: not counted
        m.observe(PhaseEvent("load", "read", 0, "p", 0.1, bytes=500))
        m.observe(PhaseEvent("save", STALL, 0, "p", 0.003))
        write = {"operation": "save", "phase": "write"}
        assert sample(m, "bytecheckpoint_phase_seconds_count", **write) == 2
        assert sample(m, "bytecheckpoint_phase_seconds_sum", **write) == pytest.approx(2.5)
        assert sample(m, "bytecheckpoint_phase_seconds_bucket", **write, le="1.0") == 1
        assert sample(m, "bytecheckpoint_phase_seconds_bucket", **write, le="2.5") == 2
        assert sample(m, "bytecheckpoint_written_bytes_total", operation="save") == 1024
        assert sample(m, "bytecheckpoint_read_bytes_total", operation="load") == 500
        assert sample(m, "bytecheckpoint_save_stall_seconds_count") == 1
        assert sample(m, "bytecheckpoint_save_stall_seconds_bucket", le="0.005") == 1
        assert sample(m, "bytecheckpoint_phase_seconds_count", operation="save", phase=STALL) is None
    finally:
        m.close()


def test_operation_events_count_failures_by_error_and_keep_the_last_good_step() -> None:
    m = CheckpointMetrics(CollectorRegistry())
    try:
        m.observe(OperationEvent("save", 0, "p", 3.0, bytes=10, step=100, time=1000.0))
        m.observe(OperationEvent("save", 0, "p", 1.0, step=200, error="OSError", time=2000.0))
        m.observe(OperationEvent("save", 0, "p", 1.0, error="OSError", time=2100.0))
        m.observe(OperationEvent("save", 0, "p", 4.0, time=3000.0))  # no step: the step gauge stays
        assert sample(m, "bytecheckpoint_operations_total", operation="save") == 4
        assert sample(m, "bytecheckpoint_operations_total", operation="load") == 0  # exists from the start
        assert sample(m, "bytecheckpoint_failures_total", operation="save", error="OSError") == 2
        assert sample(m, "bytecheckpoint_operation_seconds_count", operation="save") == 2
        assert sample(m, "bytecheckpoint_operation_seconds_sum", operation="save") == 7.0
        assert sample(m, "bytecheckpoint_last_success_step", operation="save") == 100
        assert sample(m, "bytecheckpoint_last_success_timestamp_seconds", operation="save") == 3000.0
    finally:
        m.close()


def test_rank_is_a_label_only_when_asked() -> None:
    plain = CheckpointMetrics(CollectorRegistry())
    ranked = CheckpointMetrics(CollectorRegistry(), rank_label=True)
    try:
        for m in (plain, ranked):
            for rank in (0, 1):
                m.observe(OperationEvent("save", rank, "p", 1.0, step=5))
        save = {"operation": "save", "role": ""}
        assert plain.registry.get_sample_value("bytecheckpoint_operations_total", save) == 2
        for rank in ("0", "1"):
            per_rank = {**save, "rank": rank}
            assert ranked.registry.get_sample_value("bytecheckpoint_operations_total", per_rank) == 1
        labels = {k for f in plain.registry.collect() for s in f.samples for k in s.labels}
        assert "rank" not in labels
    finally:
        plain.close()
        ranked.close()


def test_a_failing_listener_never_fails_the_save(tmp_path, caplog) -> None:
    def broken(event):
        raise RuntimeError("listener bug")

    unsubscribe = bcp.events.subscribe(broken)
    try:
        bcp.save(tmp_path / "ck", state(1))
    finally:
        unsubscribe()
    target = blank()
    bcp.load(tmp_path / "ck", target)
    assert torch.equal(target["model"]["w"], state(1)["model"]["w"])
    assert "listener bug" in caplog.text


# -- real saves and loads --------------------------------------------------------------------------

def test_manager_saves_and_restore_update_the_metrics(tmp_path, metrics) -> None:
    mgr = bcp.CheckpointManager(tmp_path / "run", keep_last=2)
    written = 0
    for step in (10, 20, 30):
        result = mgr.save(step, state(step), async_save=step == 20)
        summary = result.wait() if isinstance(result, bcp.AsyncSave) else result
        written += summary.bytes_written
    with pytest.raises(bcp.CheckpointExistsError):
        mgr.save(30, state(30))  # fails at the claim, before the save protocol starts
    assert mgr.restore(blank()) == 30
    assert sample(metrics, "bytecheckpoint_operations_total", operation="save") == 4
    refused = {"operation": "save", "error": "CheckpointExistsError"}
    assert sample(metrics, "bytecheckpoint_failures_total", **refused) == 1
    assert sample(metrics, "bytecheckpoint_written_bytes_total", operation="save") == written
    read = mgr.last_load.bytes_read
    assert sample(metrics, "bytecheckpoint_read_bytes_total", operation="load") == read > 0
    assert sample(metrics, "bytecheckpoint_last_success_step", operation="save") == 30
    assert sample(metrics, "bytecheckpoint_last_success_step", operation="load") == 30
    assert sample(metrics, "bytecheckpoint_phase_seconds_count", operation="save", phase="snapshot") == 1
    assert sample(metrics, "bytecheckpoint_phase_seconds_count", operation="save", phase="commit") == 3
    assert sample(metrics, "bytecheckpoint_phase_seconds_count", operation="load", phase="read") == 1
    assert sample(metrics, "bytecheckpoint_save_stall_seconds_count") == 3


def test_event_log_has_one_line_per_phase_in_order(tmp_path) -> None:
    log = bcp.enable_event_log(tmp_path / "events.jsonl")
    try:
        bcp.save(tmp_path / "sync", state(1), step=1)
        bcp.save(tmp_path / "async", state(2), step=2, async_save=True).wait()
        bcp.load(tmp_path / "sync", blank())
    finally:
        log.close()
    lines = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    sync = [(e["event"], e.get("phase")) for e in lines
            if e["path"].endswith("/sync") and e["operation"] == "save"]
    assert sync == [("phase", "plan"), ("phase", "write"), ("phase", "commit"), ("operation", None),
                    ("phase", STALL)]
    asyn = {e.get("phase") for e in lines if e["path"].endswith("/async")}
    assert asyn == {"plan", "snapshot", STALL, "write", "commit", None}
    load = [e.get("phase") for e in lines if e["operation"] == "load"]
    assert load == ["metadata", "read", None]
    [write] = [e for e in lines if e.get("phase") == "write" and e["step"] == 1]
    [done] = [e for e in lines if e["event"] == "operation" and e["step"] == 1]
    assert write["bytes"] == done["bytes"] == (64 * 32 + 32) * 4
    assert done["error"] is None and done["rank"] == 0 and done["seconds"] >= write["seconds"] > 0


def test_a_failed_write_is_a_failed_phase_and_a_failed_save(tmp_path, metrics) -> None:
    out = io.StringIO()
    log = bcp.enable_event_log(out)
    try:
        with pytest.raises(OSError, match="injected"):
            bcp.save(FailingWrites(tmp_path / "ck"), state(), step=3)
        handle = bcp.save(FailingWrites(tmp_path / "ck2"), state(), step=4, async_save=True)
        with pytest.raises(OSError, match="injected"):
            handle.wait()
    finally:
        log.close()
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    failed = [(e["event"], e.get("phase"), e["step"]) for e in events if e["error"]]
    assert failed == [("phase", "write", 3), ("operation", None, 3),
                      ("phase", "write", 4), ("operation", None, 4)]
    assert sample(metrics, "bytecheckpoint_failures_total", operation="save", error="OSError") == 2
    assert sample(metrics, "bytecheckpoint_phase_seconds_count", operation="save", phase="write") is None
    assert sample(metrics, "bytecheckpoint_last_success_step", operation="save") is None
    assert sample(metrics, "bytecheckpoint_save_stall_seconds_count") == 2  # the callers were blocked anyway


def test_step_must_be_a_non_negative_integer(tmp_path) -> None:
    for bad in (-1, 1.5, "7", True):
        with pytest.raises(ValueError, match="step must be a non-negative integer"):
            bcp.save(tmp_path / "ck", state(), step=bad)


def _ranks_save_load_and_fail(rank: int, world: int, root: str) -> dict:
    log = bcp.enable_event_log(f"{root}/events.jsonl")  # both ranks append to one file
    m = bcp.enable_metrics(CollectorRegistry(), rank_label=True)
    try:
        w = torch.arange(64.0).reshape(8, 8)
        mine = bcp.ShardedTensor(w[rank * 4:(rank + 1) * 4], (8, 8), (rank * 4, 0))
        summary = bcp.save(f"{root}/ck", {"w": mine}, step=11)
        bcp.load(f"{root}/ck", {"w": torch.zeros(8, 8)}, step=11)
        bad = {"w": torch.ones(2)} if rank == 0 else {"w": object()}  # rank 1 cannot save its state
        try:
            bcp.save(f"{root}/bad", bad, step=12)
        except bcp.DistributedCheckpointError:
            pass
        values = {(s.name, s.labels.get("operation"), s.labels.get("error"), s.labels.get("rank")): s.value
                  for f in m.registry.collect() for s in f.samples}
        return {"total": summary.total_bytes, "values": values}
    finally:
        m.close()
        log.close()


@pytest.mark.slow
@pytest.mark.distributed
def test_each_rank_reports_its_own_phases_and_a_failure_reaches_every_rank(tmp_path) -> None:
    from integrations.local_ranks import run_ranks

    results = run_ranks(2, _ranks_save_load_and_fail, str(tmp_path))
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    writes = {e["rank"]: e["bytes"] for e in events if e.get("phase") == "write" and e["error"] is None}
    assert writes == {0: 128, 1: 128} and sum(writes.values()) == results[0]["total"]
    for rank, result in enumerate(results):
        values, r = result["values"], str(rank)
        assert values[("bytecheckpoint_written_bytes_total", "save", None, r)] == 128
        assert values[("bytecheckpoint_operations_total", "save", None, r)] == 2
        # the error every rank raises: a DistributedCheckpointError and an UnsupportedValueError
        error = "DistributedUnsupportedValueError"
        assert values[("bytecheckpoint_failures_total", "save", error, r)] == 1
        assert values[("bytecheckpoint_last_success_step", "load", None, r)] == 11
        failed = [(e["event"], e.get("phase"), e["error"]) for e in events
                  if e["rank"] == rank and e["step"] == 12]
        assert failed == [("phase", "plan", error), ("operation", None, error), ("phase", STALL, None)]


# -- exports ---------------------------------------------------------------------------------------

def test_textfile_holds_the_values_and_is_replaced_atomically(tmp_path, metrics) -> None:
    summary = bcp.save(tmp_path / "ck", state(), step=42)
    path = tmp_path / "textfile" / "bytecheckpoint.prom"
    path.parent.mkdir()
    metrics.write_textfile(path)
    metrics.write_textfile(path)  # again: replaces, leaves no temporary file behind
    assert os.listdir(path.parent) == ["bytecheckpoint.prom"]
    values = {(s.name, s.labels.get("operation")): s.value
              for f in text_string_to_metric_families(path.read_text()) for s in f.samples}
    assert values[("bytecheckpoint_last_success_step", "save")] == 42
    assert values[("bytecheckpoint_written_bytes_total", "save")] == summary.bytes_written
    assert values[("bytecheckpoint_operations_total", "save")] == 1


ENV_SCRIPT = textwrap.dedent("""
    import sys, urllib.request, torch
    import bytecheckpoint as bcp
    ck = sys.argv[1]
    for step in (1, 2):
        bcp.save(f"{ck}/s{step}", {"w": torch.ones(8, 8)}, step=step)
    port = int(sys.argv[2])
    print(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())
""")


def run_with_env(tmp_path: Path, env: dict[str, str], port: int) -> subprocess.CompletedProcess:
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    full.pop("LOCAL_RANK", None)
    return subprocess.run([sys.executable, "-c", ENV_SCRIPT, str(tmp_path / "ck"), str(port)], env=full,
                          check=False, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_environment_variables_enable_the_endpoint_textfile_and_event_log(tmp_path) -> None:
    from tests.prometheus_server import free_port

    port = free_port()
    env = {"BYTECHECKPOINT_METRICS_PORT": str(port), "BYTECHECKPOINT_METRICS_ROLE": "trainer",
           "BYTECHECKPOINT_METRICS_TEXTFILE": str(tmp_path / "rank{rank}.prom"),
           "BYTECHECKPOINT_EVENT_LOG": str(tmp_path / "events.jsonl")}
    done = run_with_env(tmp_path, env, port)
    assert done.returncode == 0, done.stderr
    served = {(s.name, s.labels.get("operation")): s for f in text_string_to_metric_families(done.stdout)
              for s in f.samples}
    assert served[("bytecheckpoint_operations_total", "save")].value == 2
    assert served[("bytecheckpoint_last_success_step", "save")].labels["role"] == "trainer"
    written = (tmp_path / "rank0.prom").read_text()
    textfile = {(s.name, s.labels.get("operation")): s.value
                for f in text_string_to_metric_families(written) for s in f.samples}
    assert textfile[("bytecheckpoint_last_success_step", "save")] == 2
    assert textfile[("bytecheckpoint_save_stall_seconds_count", None)] == 2  # rewritten after the last stall
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["step"] for e in events if e["event"] == "operation"] == [1, 2]


@pytest.mark.parametrize(("variable", "value", "message"), [
    ("BYTECHECKPOINT_METRICS_PORT", "nine", "BYTECHECKPOINT_METRICS_PORT must be an integer, got 'nine'"),
    ("BYTECHECKPOINT_METRICS_PORT", "70000", "must give a port in 0..65535, got 70000"),
    ("BYTECHECKPOINT_METRICS_RANK_LABEL", "maybe", "BYTECHECKPOINT_METRICS_RANK_LABEL must be 0/1"),
])
def test_a_bad_environment_variable_is_named(monkeypatch, variable, value, message) -> None:
    monkeypatch.setenv("BYTECHECKPOINT_METRICS_TEXTFILE", "unused.prom")
    monkeypatch.setenv(variable, value)
    before = len(bcp.events._listeners)
    with pytest.raises(ValueError, match=re.escape(message)):
        metrics_from_environment()
    assert len(bcp.events._listeners) == before  # nothing enabled


def test_a_port_in_use_is_named_and_enables_nothing(monkeypatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        monkeypatch.setenv("BYTECHECKPOINT_METRICS_PORT", str(taken.getsockname()[1]))
        before = len(bcp.events._listeners)
        with pytest.raises(OSError, match="BYTECHECKPOINT_METRICS_PORT: cannot serve metrics on 127.0.0.1:"):
            metrics_from_environment()
        assert len(bcp.events._listeners) == before


# -- documentation ---------------------------------------------------------------------------------

def registered_names() -> dict[str, set[str]]:
    """Each metric the code registers (as exposed), and the sample names PromQL may use for it."""
    m = CheckpointMetrics(CollectorRegistry())
    m.close()
    out: dict[str, set[str]] = {}
    for family in m.registry.collect():
        if family.type == "counter":
            out[family.name + "_total"] = {family.name + "_total"}
        elif family.type == "histogram":
            out[family.name] = {family.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            out[family.name] = {family.name}
    return out


def promql_in_docs() -> list[str]:
    """The PromQL of docs/metrics.md (```promql blocks, alert rules' ``expr:``) and of the dashboard."""
    doc = (ROOT / "docs" / "metrics.md").read_text()
    blocks = re.findall(r"```promql\n(.*?)```", doc, flags=re.DOTALL)
    queries = [q.strip() for block in blocks for q in block.split("\n\n") if q.strip()]
    queries += [e.strip() for e in re.findall(r"^\s*expr: (.+)$", doc, flags=re.MULTILINE)]
    dashboard = json.loads((ROOT / "docs" / "grafana" / "bytecheckpoint.json").read_text())
    queries += [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    return [re.sub(r"^#.*\n", "", q, flags=re.MULTILINE).strip() for q in queries]


def test_every_metric_is_documented_and_every_documented_name_exists() -> None:
    doc = (ROOT / "docs" / "metrics.md").read_text()
    registered = registered_names()
    table = set(re.findall(r"^\| `(bytecheckpoint_[a-z_]+)` \|", doc, flags=re.MULTILINE))
    assert table == set(registered), "docs/metrics.md's table must list exactly the registered metrics"
    usable = set().union(*registered.values())
    queries = promql_in_docs()
    assert len(queries) >= 10
    in_queries = set(re.findall(r"\bbytecheckpoint_[a-z_]+", "\n".join(queries)))
    assert in_queries <= usable, f"PromQL names no metric: {sorted(in_queries - usable)}"
    in_prose = set(re.findall(r"\bbytecheckpoint_[a-z_]+", doc))
    unknown = in_prose - usable - set(registered)
    assert not unknown, f"docs name no metric: {sorted(unknown)}"


def test_load_full_verify_export_and_import_emit_their_operations(tmp_path) -> None:
    """The one-process tools report through the same events: what they read and wrote, and failures."""
    state = {"w": torch.arange(12.0).reshape(3, 4), "b": torch.ones(5, dtype=torch.float64), "step": 3}
    nbytes = 12 * 4 + 5 * 8
    bcp.save(tmp_path / "ck", state)
    seen: list = []
    unsubscribe = bcp.events.subscribe(seen.append)
    try:
        bcp.load_full(tmp_path / "ck")
        bcp.verify(tmp_path / "ck")
        export_checkpoint(str(tmp_path / "ck"), str(tmp_path / "st"), to="safetensors")
        import_checkpoint(str(tmp_path / "st" / "model.safetensors"), str(tmp_path / "back"), from_="safetensors")
        data = next((tmp_path / "ck").rglob("*.bin"))
        data.write_bytes(b"\0" * data.stat().st_size)  # every checksum fails
        with pytest.raises(bcp.CorruptCheckpointError):
            bcp.verify(tmp_path / "ck")
    finally:
        unsubscribe()
    ops = [(e.operation, e.error, e.bytes) for e in seen if isinstance(e, OperationEvent)]
    assert ("load_full", None, nbytes) in ops and ("verify", None, nbytes) in ops
    assert ("export", None, nbytes) in ops and ("import", None, nbytes) in ops
    assert ("save", None, nbytes) in ops  # the import's own save counts what it wrote
    assert ("verify", "ChecksumMismatchError", nbytes) in ops
    phases = {(e.operation, e.phase) for e in seen if isinstance(e, PhaseEvent)}
    assert {("load_full", "metadata"), ("load_full", "read"), ("verify", "read"), ("export", "load"),
            ("export", "write"), ("import", "read"), ("import", "save")} <= phases
