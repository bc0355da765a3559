"""A real Prometheus server scrapes a short training run that checkpoints (sync and async saves, a
failed save, a restore); its HTTP API must report what the run did. A real Pushgateway receives a push."""

from __future__ import annotations

import re
import time

import pytest
import torch
from prometheus_client import CollectorRegistry

import bytecheckpoint as bcp
from tests.bytecheckpoint.test_metrics_events import promql_in_docs


def train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(32, 16, generator=g), torch.randn(32, 4, generator=g)
    opt.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    opt.step()


@pytest.mark.slow
def test_prometheus_scrapes_a_training_run_that_checkpoints(tmp_path, prometheus) -> None:
    registry = CollectorRegistry()
    metrics = bcp.enable_metrics(registry, role="trainer")
    server = bcp.serve_metrics(0, registry=registry)
    try:
        prometheus.start([server.server_port], job="train")
        torch.manual_seed(0)
        model = torch.nn.Linear(16, 4)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        mgr = bcp.CheckpointManager(tmp_path / "run", keep_last=2)
        written = 0
        for step in range(1, 6):
            train_step(model, opt, step)
            result = mgr.save(step, {"model": model.state_dict(), "step": step}, async_save=step % 2 == 0)
            written += (result.wait() if isinstance(result, bcp.AsyncSave) else result).bytes_written
        saved_at = time.time()
        with pytest.raises(bcp.UnsupportedValueError):  # an injected failure: a value that cannot be saved
            mgr.save(6, {"model": model.state_dict(), "hook": object()})
        fresh = torch.nn.Linear(16, 4)
        restored = {"model": fresh.state_dict(), "step": None}
        assert mgr.restore(restored) == 5 and restored["step"] == 5
        assert torch.equal(restored["model"]["weight"], model.weight.detach())

        # the scrape that sees the restore sees everything before it
        found = prometheus.wait_for('bytecheckpoint_operations_total{operation="load"}',
                                    lambda r: bool(r) and float(r[0]["value"][1]) == 1, timeout=60)
        assert found and found[0]["metric"]["job"] == "train" and found[0]["metric"]["role"] == "trainer"
        value = prometheus.value
        assert value('bytecheckpoint_operations_total{operation="save"}') == 6
        assert value('bytecheckpoint_failures_total{operation="save",error="UnsupportedValueError"}') == 1
        assert value('bytecheckpoint_written_bytes_total{operation="save"}') == written
        assert value('bytecheckpoint_read_bytes_total{operation="load"}') == mgr.last_load.bytes_read > 0
        assert value('bytecheckpoint_last_success_step{operation="save"}') == 5
        assert value('bytecheckpoint_last_success_step{operation="load"}') == 5
        assert value('bytecheckpoint_phase_seconds_count{operation="save",phase="write"}') == 5
        assert value('bytecheckpoint_phase_seconds_count{operation="save",phase="snapshot"}') == 2
        assert value("bytecheckpoint_save_stall_seconds_count") == 6  # the failed save blocked its caller too
        assert value('bytecheckpoint_operation_seconds_count{operation="save"}') == 5
        last_good = value('bytecheckpoint_last_success_timestamp_seconds{operation="save"}')
        assert last_good == pytest.approx(saved_at, abs=1)
        # the documented "seconds since the last good checkpoint", as Prometheus evaluates it
        age = value('time() - max by (job) (bytecheckpoint_last_success_timestamp_seconds{operation="save"})')
        assert 0 <= age < time.time() - saved_at + 2
        # every query of docs/metrics.md and of the Grafana dashboard is valid PromQL for this server
        for query in promql_in_docs():
            query = query.replace("$__rate_interval", "1m")
            assert isinstance(prometheus.query(query, strict=True), list), query
    finally:
        metrics.close()
        server.shutdown()
        server.server_close()


@pytest.mark.slow
def test_pushgateway_receives_the_metrics_of_a_short_job(tmp_path, pushgateway) -> None:
    metrics = bcp.enable_metrics(CollectorRegistry(), role="batch")
    try:
        metrics.export_after_each_operation(gateway=pushgateway.address, job="short-job")
        summary = bcp.save(tmp_path / "ck", {"w": torch.ones(32, 32)}, step=9)
    finally:
        metrics.close()
    exposed = pushgateway.metrics()
    job = re.search(r'^bytecheckpoint_last_success_step\{(.*)\} (\S+)$', exposed, flags=re.MULTILINE)
    assert job is not None, exposed
    assert 'job="short-job"' in job.group(1) and 'rank="0"' in job.group(1) and float(job.group(2)) == 9
    written = re.search(r'^bytecheckpoint_written_bytes_total\{.*operation="save".*\} (\S+)$', exposed,
                        flags=re.MULTILINE)
    assert written is not None and float(written.group(1)) == summary.bytes_written
    assert not re.search(r"^bytecheckpoint_failures_total\{", exposed, flags=re.MULTILINE)  # nothing failed
