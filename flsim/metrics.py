"""Prometheus metrics of rounds: one gauge sample per (round, client, phase) and per-round totals.

``export(timelines, registry)`` fills a registry; ``write_textfile`` saves it in the text exposition
format (``metrics.prom`` next to the results, for node_exporter's textfile collector or a scrape).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, write_to_textfile

from flsim.phases import RoundTimeline


def export(timelines: Sequence[RoundTimeline], profile: str,
           registry: CollectorRegistry | None = None) -> CollectorRegistry:
    """Fill (or create) a registry with the rounds' phase seconds, round seconds and bytes."""
    registry = registry or CollectorRegistry()
    phase = Gauge("flsim_phase_seconds", "Seconds one client spent in one phase of one round",
                  ["profile", "round", "client", "phase"], registry=registry)
    rnd = Gauge("flsim_round_seconds", "Server-side duration of a round", ["profile", "round"], registry=registry)
    nbytes = Counter("flsim_link_bytes", "Payload bytes over the clients' links", ["profile", "client", "direction"],
                     registry=registry)
    rounds = Counter("flsim_rounds", "Rounds completed", ["profile"], registry=registry)
    for tl in timelines:
        rnd.labels(profile, str(tl.round)).set(tl.seconds)
        rounds.labels(profile).inc()
        for c in tl.clients():
            for p, s in tl.client_phases(c).items():
                phase.labels(profile, str(tl.round), c, p).set(s)
        for r in tl.records:
            if r.phase in ("downlink", "uplink") and r.bytes:
                nbytes.labels(profile, r.client, r.phase).inc(r.bytes)
    return registry


def write_textfile(timelines: Sequence[RoundTimeline], profile: str, path: Path) -> None:
    """Write the metrics of ``timelines`` to ``path`` in Prometheus' text format."""
    write_to_textfile(str(path), export(timelines, profile))
