"""Prometheus metrics of saves and loads, built from the events of events.py.

    metrics = bcp.enable_metrics(role="trainer")      # a registry of its own
    server = bcp.serve_metrics(9400)                  # scrape http://127.0.0.1:9400/metrics
    metrics.write_textfile("/var/lib/node_exporter/bcp.prom")   # or, for short jobs
    metrics.push("pushgateway:9091", job="train")

Labels stay bounded: ``operation``, ``phase``, ``error`` (an exception class name), ``role`` (one
value per process, given by the user) and ``rank`` only with ``rank_label=True``. Every metric,
with example PromQL queries, is listed in docs/metrics.md.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, push_to_gateway, start_http_server
from prometheus_client.exposition import write_to_textfile

from . import events
from .events import READ_PHASES, STALL, WRITE_PHASES, Event, PhaseEvent

log = logging.getLogger(__name__)

#: seconds, 1 ms to 1 h
BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 60.0, 150.0,
           300.0, 600.0, 1200.0, 3600.0)
#: operations whose series exist (at zero) from the first event on
COMMON_OPERATIONS = ("save", "load")


class CheckpointMetrics:
    """The checkpoint metrics of this process in ``registry``, updated by every event until ``close()``."""

    def __init__(self, registry: CollectorRegistry | None = None, role: str | None = None,
                 rank_label: bool = False) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.role = role or ""
        self.rank_label = rank_label
        common = ["role", "rank"] if rank_label else ["role"]
        reg = self.registry
        self.phase_seconds = Histogram(
            "bytecheckpoint_phase_seconds", "Duration of one successful phase of a checkpoint operation",
            ["operation", "phase", *common], buckets=BUCKETS, registry=reg)
        self.stall_seconds = Histogram(
            "bytecheckpoint_save_stall_seconds", "How long a save call blocked the training loop",
            common, buckets=BUCKETS, registry=reg)
        per_op = ["operation", *common]
        self.operation_seconds = Histogram(
            "bytecheckpoint_operation_seconds",
            "Duration of a successful operation, from the call to its end (the commit of an async save)",
            per_op, buckets=BUCKETS, registry=reg)
        self.operations = Counter(
            "bytecheckpoint_operations", "Operations ended, successful or failed", per_op, registry=reg)
        self.failures = Counter(
            "bytecheckpoint_failures", "Operations that failed, by the error's class name",
            ["operation", "error", *common], registry=reg)
        self.written = Counter(
            "bytecheckpoint_written_bytes", "Checkpoint bytes written by this process", per_op, registry=reg)
        self.read = Counter(
            "bytecheckpoint_read_bytes", "Checkpoint bytes read by this process", per_op, registry=reg)
        self.last_step = Gauge(
            "bytecheckpoint_last_success_step",
            "Training step of the last successful operation that named one", per_op, registry=reg)
        self.last_success = Gauge(
            "bytecheckpoint_last_success_timestamp_seconds",
            "Unix time at which the last successful operation ended", per_op, registry=reg)
        self._seen_ranks: set[int] = set()
        self._exports: list[Callable[[Event], None]] = []
        self._lock = threading.Lock()
        self._unsubscribe = events.subscribe(self.observe)

    def _common(self, rank: int) -> dict[str, str]:
        return {"role": self.role, "rank": str(rank)} if self.rank_label else {"role": self.role}

    def observe(self, event: Event) -> None:
        """Update the metrics from one event (the listener that ``enable_metrics`` subscribes)."""
        common = self._common(event.rank)
        with self._lock:
            if event.rank not in self._seen_ranks:
                self._seen_ranks.add(event.rank)
                for op in COMMON_OPERATIONS:  # so rate() and increase() see the first operation
                    self.operations.labels(operation=op, **common)
                    (self.written if op == "save" else self.read).labels(operation=op, **common)
        if isinstance(event, PhaseEvent):
            self._observe_phase(event, common)
            return
        self.operations.labels(operation=event.operation, **common).inc()
        if event.ok:
            self.operation_seconds.labels(operation=event.operation, **common).observe(event.seconds)
            self.last_success.labels(operation=event.operation, **common).set(event.time)
            if event.step is not None:
                self.last_step.labels(operation=event.operation, **common).set(event.step)
        else:
            self.failures.labels(operation=event.operation, error=event.error, **common).inc()
        self._export(event)

    def _observe_phase(self, event: PhaseEvent, common: dict[str, str]) -> None:
        if event.phase == STALL:
            self.stall_seconds.labels(**common).observe(event.seconds)
            self._export(event)  # a sync save's stall is known just after the save ended
            return
        if not event.ok:
            return
        labels = {"operation": event.operation, **common}
        self.phase_seconds.labels(phase=event.phase, **labels).observe(event.seconds)
        if event.phase in WRITE_PHASES:
            self.written.labels(**labels).inc(event.bytes)
        elif event.phase in READ_PHASES:
            self.read.labels(**labels).inc(event.bytes)

    def _export(self, event: Event) -> None:
        for export in list(self._exports):
            export(event)

    def write_textfile(self, path: str | os.PathLike[str]) -> None:
        """Write the metrics in the text format for node_exporter's textfile collector (name it ``*.prom``);
        the file is replaced atomically (written beside it, then renamed)."""
        write_to_textfile(os.fspath(path), self.registry)

    def push(self, gateway: str, job: str, grouping_key: dict[str, str] | None = None,
             timeout: float = 10.0) -> None:
        """Push the metrics to a Prometheus Pushgateway (``host:port`` or a URL), replacing the
        group of ``job`` and ``grouping_key``."""
        push_to_gateway(gateway, job=job, registry=self.registry, grouping_key=grouping_key or {},
                        timeout=timeout)

    def export_after_each_operation(self, textfile: str | None = None, gateway: str | None = None,
                                    job: str = "bytecheckpoint") -> None:
        """After every operation ends (and when a save's stall is known), rewrite ``textfile`` and/or
        push to ``gateway`` (for short jobs).

        ``{rank}`` in ``textfile`` becomes the rank; a push groups by ``rank`` so ranks do not replace
        each other's metrics. A failed export is logged; it never fails the checkpoint.
        """
        def export(event: Event) -> None:
            if textfile is not None:
                self.write_textfile(textfile.format(rank=event.rank))
            if gateway is not None:
                self.push(gateway, job, {"rank": str(event.rank)})

        self._exports.append(export)

    def close(self) -> None:
        """Stop updating the metrics (the registry keeps its values)."""
        self._unsubscribe()


_current: CheckpointMetrics | None = None


def enable_metrics(registry: CollectorRegistry | None = None, role: str | None = None,
                   rank_label: bool = False) -> CheckpointMetrics:
    """Record Prometheus metrics of every save and load of this process.

    ``registry``: where to register them (default: a new registry, not the global one). ``role``: the
    value of the ``role`` label (e.g. "trainer"). ``rank_label``: add the rank as a label (one series per
    rank; leave it off when each rank is scraped as its own target: ``instance`` tells them apart).
    """
    global _current
    _current = CheckpointMetrics(registry, role, rank_label)
    return _current


def serve_metrics(port: int, addr: str = "127.0.0.1",
                  registry: CollectorRegistry | None = None) -> WSGIServer:
    """Serve ``registry`` (default: that of the last ``enable_metrics``, enabling it if needed) at
    ``http://addr:port/metrics`` from a daemon thread. Port 0 picks a free port (``server.server_port``).
    Stop it with ``server.shutdown(); server.server_close()``."""
    if not 0 <= port <= 65535:
        raise ValueError(f"serve_metrics: port must be in 0..65535, got {port}")
    if registry is None:
        registry = (_current or enable_metrics()).registry
    server, _ = start_http_server(port, addr=addr, registry=registry)
    log.info("serving checkpoint metrics at http://%s:%d/metrics", addr, server.server_port)
    return server


ENV_ADDR = "BYTECHECKPOINT_METRICS_ADDR"
ENV_ROLE = "BYTECHECKPOINT_METRICS_ROLE"
ENV_RANK_LABEL = "BYTECHECKPOINT_METRICS_RANK_LABEL"
ENV_PUSHGATEWAY_JOB = "BYTECHECKPOINT_PUSHGATEWAY_JOB"


def metrics_from_environment() -> CheckpointMetrics:
    """Enable metrics as the ``BYTECHECKPOINT_METRICS_*`` / ``BYTECHECKPOINT_PUSHGATEWAY*`` variables say.

    ``BYTECHECKPOINT_METRICS_PORT`` serves them (plus ``LOCAL_RANK``, so that the ranks of one host do
    not collide); ``BYTECHECKPOINT_METRICS_TEXTFILE`` and ``BYTECHECKPOINT_PUSHGATEWAY`` export them
    after every operation.
    """
    env = os.environ
    port: int | None = None
    if env.get(events.ENV_METRICS_PORT):
        port = _int_variable(events.ENV_METRICS_PORT)
        port += _int_variable("LOCAL_RANK") if env.get("LOCAL_RANK") else 0
        if not 0 <= port <= 65535:
            raise ValueError(f"{events.ENV_METRICS_PORT} (+ LOCAL_RANK) must give a port in 0..65535, "
                             f"got {port}")
    flag = env.get(ENV_RANK_LABEL, "").strip().lower()
    if flag not in ("", "0", "1", "false", "true", "no", "yes"):
        raise ValueError(f"{ENV_RANK_LABEL} must be 0/1/true/false/yes/no, got {flag!r}")
    metrics = enable_metrics(role=env.get(ENV_ROLE), rank_label=flag in ("1", "true", "yes"))
    if port is not None:
        addr = env.get(ENV_ADDR) or "127.0.0.1"
        try:
            serve_metrics(port, addr, metrics.registry)
        except OSError as exc:
            metrics.close()
            where = f"{addr}:{port}"
            raise OSError(f"{events.ENV_METRICS_PORT}: cannot serve metrics on {where} ({exc})") from exc
    textfile, gateway = env.get(events.ENV_METRICS_TEXTFILE), env.get(events.ENV_PUSHGATEWAY)
    if textfile or gateway:
        metrics.export_after_each_operation(textfile or None, gateway or None,
                                            env.get(ENV_PUSHGATEWAY_JOB) or "bytecheckpoint")
    return metrics


def _int_variable(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None
