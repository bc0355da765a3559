"""Prometheus metrics of rounds: one gauge sample per (round, client, phase) and per-round totals.

``export(timelines, profile)`` fills a registry; ``write_textfile`` saves it in the text exposition
format (``metrics.prom`` next to the results, for node_exporter's textfile collector);
``serve(run_dirs)`` exposes finished run directories over HTTP for Prometheus to scrape, re-reading
them at every scrape so that runs finishing later show up.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from threading import Thread
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server, write_to_textfile
from prometheus_client.metrics_core import Metric

from flsim.errors import RecordError
from flsim.phases import RoundTimeline, assemble
from flsim.recorder import read_events

logger = logging.getLogger(__name__)

#: (run label, profile name, timelines) of one run
Run = tuple[str, str, Sequence[RoundTimeline]]


def export_runs(runs: Iterable[Run], registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """Fill (or create) a registry with the phase seconds, round seconds and bytes of several runs."""
    registry = registry or CollectorRegistry()
    phase = Gauge("flsim_phase_seconds", "Seconds one client spent in one phase of one round",
                  ["run", "profile", "round", "client", "phase"], registry=registry)
    rnd = Gauge("flsim_round_seconds", "Server-side duration of a round", ["run", "profile", "round"],
                registry=registry)
    nbytes = Counter("flsim_link_bytes", "Payload bytes over the clients' links",
                     ["run", "profile", "client", "direction"], registry=registry)
    rounds = Counter("flsim_rounds", "Rounds completed", ["run", "profile"], registry=registry)
    for run, profile, timelines in runs:
        for tl in timelines:
            rnd.labels(run, profile, str(tl.round)).set(tl.seconds)
            rounds.labels(run, profile).inc()
            for c in tl.clients():
                for p, s in tl.client_phases(c).items():
                    phase.labels(run, profile, str(tl.round), c, p).set(s)
            for r in tl.records:
                if r.phase in ("downlink", "uplink") and r.bytes:
                    nbytes.labels(run, profile, r.client, r.phase).inc(r.bytes)
    return registry


def export(timelines: Sequence[RoundTimeline], profile: str, registry: CollectorRegistry | None = None,
           run: str = "") -> CollectorRegistry:
    """The metrics of one run (label ``run``, empty by default)."""
    return export_runs([(run, profile, timelines)], registry)


def write_textfile(timelines: Sequence[RoundTimeline], profile: str, path: Path) -> None:
    """Write the metrics of ``timelines`` to ``path`` in Prometheus' text format."""
    write_to_textfile(str(path), export(timelines, profile, run=path.parent.name))


def load_run(run_dir: Path) -> Run:
    """(directory name, profile, timelines) of a finished ``flsim run`` directory."""
    summary, events = run_dir / "summary.json", run_dir / "events.jsonl"
    for f in (summary, events):
        if not f.is_file():
            raise RecordError(f"{run_dir} is not a finished flsim run: {f.name} is missing")
    try:
        profile = json.loads(summary.read_text())["profile"]["name"]
    except (ValueError, KeyError, TypeError) as err:
        raise RecordError(f"{summary}: expected a JSON object with profile.name ({err})") from err
    return run_dir.name, str(profile), assemble(read_events(events))


class RunDirCollector:
    """Collector over run directories; a directory that is not (yet) a finished run is skipped."""

    def __init__(self, run_dirs: Sequence[Path]) -> None:
        self.run_dirs = [Path(d) for d in run_dirs]

    def collect(self) -> Iterator[Metric]:
        runs = []
        for d in self.run_dirs:
            try:
                runs.append(load_run(d))
            except RecordError as err:
                logger.info("not exported: %s", err)
        yield from export_runs(runs).collect()


def serve(run_dirs: Sequence[Path], host: str = "127.0.0.1", port: int = 9464) -> tuple[WSGIServer, Thread]:
    """Serve the metrics of ``run_dirs`` at ``http://host:port/metrics`` from a daemon thread."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RunDirCollector(run_dirs))
    return start_http_server(port, addr=host, registry=registry)
