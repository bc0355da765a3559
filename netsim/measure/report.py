"""Turn the ranks' raw times into nccl-tests rows, and print them as a table or CSV.

Columns and definitions follow nccl-tests: ``size`` (bytes; all-reduce buffer, all-gather output,
reduce-scatter input, all-to-all send buffer), ``count`` (elements in it), ``type``, ``time`` (here the
median over iterations x ranks of the per-rank completion time), ``algbw = size / time`` and
``busbw = algbw x factor`` (:mod:`netsim.busbw`), plus p50/p95/p99/min/max of the same samples.
"""

from __future__ import annotations

import csv
import io
import platform
from collections.abc import Callable
from typing import Any

import numpy as np
from rich.table import Table

from netsim.busbw import algbw, busbw
from netsim.fabric.leafspine import FabricDescription
from netsim.measure.backends import DTYPE, BackendName
from netsim.measure.launch import MeasureConfig, rank_hosts, run_workers
from netsim.measure_schema import FabricSummary, MeasuredRow, MeasureReport, SecondsStats

COLUMNS = (
    "size",
    "count",
    "type",
    "time_us",
    "algbw_GBps",
    "busbw_GBps",
    "p50_us",
    "p95_us",
    "p99_us",
    "min_us",
    "max_us",
)


def summarize(
    config: MeasureConfig, results: list[dict[str, Any]], fabric: FabricDescription | None
) -> MeasureReport:
    """One :class:`MeasuredRow` per size from every rank's samples."""
    summary = None
    if fabric is not None:
        s = fabric.spec
        summary = FabricSummary(
            s.name,
            s.leaves,
            s.hosts_per_leaf,
            s.spines,
            s.link_mbit,
            s.uplink_mbit,
            rank_hosts(config, fabric),
            s.seed,
        )
    split = config.backend is BackendName.split_tcp
    rows = []
    for size in config.effective_sizes():
        by_rank = [r["times"][str(size)] for r in sorted(results, key=lambda r: r["rank"])]
        samples = np.array([t for times in by_rank for t in times], dtype=np.float64)
        q = np.quantile(samples, [0.5, 0.95, 0.99])
        seconds = SecondsStats(
            float(q[0]), float(q[1]), float(q[2]), float(samples.min()), float(samples.max())
        )
        name = config.collective.value
        rows.append(
            MeasuredRow(
                config.backend.value,
                name,
                config.ranks,
                size,
                size // np.dtype(DTYPE).itemsize,
                "float",
                seconds,
                algbw(size, seconds.p50),
                busbw(name, size, seconds.p50, config.ranks),
                config.iters,
                config.warmup,
                config.policy.value if split else None,
                results[0].get("splits") or config.splits if split else None,
                summary,
                rank_seconds=tuple(tuple(float(t) for t in times) for times in by_rank),
            )
        )
    meta: dict[str, Any] = {"host": platform.node(), "loopback": fabric is None}
    if split:
        meta["subflows_rank0_last_size"] = results[0].get("subflows", [])
    return MeasureReport(tuple(rows), meta=meta)


def run_measurement(
    config: MeasureConfig,
    fabric: FabricDescription | None = None,
    on_progress: Callable[[int], None] = lambda size: None,
) -> MeasureReport:
    """Run ``config`` (on loopback, or on ``fabric``) and summarize it."""
    if fabric is not None:
        rank_hosts(config, fabric)
    return summarize(config, run_workers(config, fabric, on_progress), fabric)


def _values(row: MeasuredRow) -> list[str]:
    s = row.seconds
    return [
        str(row.size_bytes),
        str(row.count),
        row.dtype,
        f"{s.p50 * 1e6:.1f}",
        f"{row.algbw / 1e9:.4f}",
        f"{row.busbw / 1e9:.4f}",
        *(f"{v * 1e6:.1f}" for v in (s.p50, s.p95, s.p99, s.min, s.max)),
    ]


def table(report: MeasureReport) -> Table:
    """A rich table with nccl-tests' columns (GB/s = 1e9 bytes/s, times in microseconds)."""
    first = report.rows[0]
    where = f"fabric {first.fabric.name}" if first.fabric else "loopback"
    extra = f", policy {first.policy}, splits {first.splits or 'default'}" if first.policy else ""
    out = Table(*COLUMNS, title=f"{first.backend} {first.collective}, {first.ranks} ranks, {where}{extra}")
    for row in report.rows:
        out.add_row(*_values(row))
    return out


def to_csv(report: MeasureReport) -> str:
    """CSV with the backend, collective and ranks, then nccl-tests' columns."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["backend", "collective", "ranks", "policy", "splits", *COLUMNS])
    for row in report.rows:
        writer.writerow(
            [row.backend, row.collective, row.ranks, row.policy or "", row.splits or "", *_values(row)]
        )
    return buf.getvalue()
