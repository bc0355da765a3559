"""Write a run's results: ``phases.csv`` (one row per phase), ``rounds.csv`` (one row per round and
client, a column per phase), ``summary.json`` (configuration, profile, per-round means, bytes, clock
offsets) and ``events.jsonl`` (every raw event, merged); the two tables also as Parquet on request."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from flsim.errors import RecordError
from flsim.phases import PHASES, POLLING_PHASES, PhaseRecord, RoundTimeline


def summary_dict(timelines: Sequence[RoundTimeline], extra: dict[str, Any]) -> dict[str, Any]:
    """Plain dict: per-round seconds, mean phases, straggler, bytes; ``extra`` merged in."""
    rounds = []
    for tl in timelines:
        mean = tl.mean_phases()
        rounds.append({
            "round": tl.round, "seconds": tl.seconds, "clients": tl.clients(), "straggler": tl.straggler(),
            "mean_phase_seconds": mean, "clamped_boundaries": tl.clamped,
            "uplink_share": mean["uplink"] / tl.seconds if tl.seconds else 0.0,
            "polling_seconds": sum(mean[p] for p in POLLING_PHASES),
            "bytes": {p: sum(r.bytes for r in tl.records if r.phase == p) for p in ("downlink", "uplink")},
        })
    return {"version": 1, **extra, "rounds": rounds}


def write_results(out: Path, timelines: Sequence[RoundTimeline], events: Sequence[dict],
                  extra: dict[str, Any], parquet: bool = False) -> dict[str, Any]:
    """Write the four files into ``out`` (plus ``phases.parquet`` and ``rounds.parquet`` with
    ``parquet=True``, which needs ``pyarrow``); returns the summary dict."""
    tables = {"phases": _phase_rows(timelines), "rounds": _round_rows(timelines)}
    if parquet:
        try:
            import pyarrow as pa
            import pyarrow.parquet as pq
        except ImportError as err:
            raise RecordError("Parquet output needs pyarrow: pip install 'trainfra-toolkit[parquet]'") from err
    out.mkdir(parents=True, exist_ok=True)
    for name, (columns, rows) in tables.items():
        with open(out / f"{name}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(columns)
            w.writerows([f"{v:.6f}" if isinstance(v, float) else v for v in row] for row in rows)
        if parquet:
            pq.write_table(pa.table({c: [row[i] for row in rows] for i, c in enumerate(columns)}),
                           out / f"{name}.parquet")
    with open(out / "events.jsonl", "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in sorted(events, key=lambda e: e["t"]))
    summary = summary_dict(timelines, extra)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


Table = tuple[list[str], list[list[Any]]]


def _phase_rows(timelines: Sequence[RoundTimeline]) -> Table:
    columns = [*PhaseRecord.__dataclass_fields__]
    return columns, [[getattr(r, c) for c in columns] for tl in timelines for r in tl.records]


def _round_rows(timelines: Sequence[RoundTimeline]) -> Table:
    rows = []
    for tl in timelines:
        for c in tl.clients():
            ph = tl.client_phases(c)
            nbytes = [sum(r.bytes for r in tl.records if r.client == c and r.phase == p) for p in ("downlink", "uplink")]
            rows.append([tl.round, c, tl.seconds, *(ph[p] for p in PHASES), *nbytes])
    return ["round", "client", "round_seconds", *PHASES, "downlink_bytes", "uplink_bytes"], rows


def read_phases(out: Path) -> list[PhaseRecord]:
    """Read ``phases.csv`` back (for ``flsim report``)."""
    path = Path(out) / "phases.csv"
    if not path.exists():
        raise RecordError(f"{path} not found: expected the output directory of `flsim run`")
    with open(path, newline="") as f:
        return [PhaseRecord(int(r["round"]), r["client"], r["stage"], r["phase"], float(r["start"]),
                            float(r["seconds"]), int(r["bytes"])) for r in csv.DictReader(f)]
