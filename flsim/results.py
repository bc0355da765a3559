"""Write a run's results: ``phases.csv`` (one row per phase), ``rounds.csv`` (one row per round and
client, a column per phase), ``summary.json`` (configuration, profile, per-round means, bytes, clock
offsets) and ``events.jsonl`` (every raw event, merged)."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict
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
                  extra: dict[str, Any]) -> dict[str, Any]:
    """Write the four files into ``out``; returns the summary dict."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "phases.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=[*PhaseRecord.__dataclass_fields__])
        w.writeheader()
        for tl in timelines:
            for r in tl.records:
                w.writerow(asdict(r))
    with open(out / "rounds.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["round", "client", "round_seconds", *PHASES, "downlink_bytes", "uplink_bytes"])
        for tl in timelines:
            for c in tl.clients():
                ph = tl.client_phases(c)
                nbytes = {p: sum(r.bytes for r in tl.records if r.client == c and r.phase == p)
                          for p in ("downlink", "uplink")}
                w.writerow([tl.round, c, f"{tl.seconds:.6f}", *(f"{ph[p]:.6f}" for p in PHASES),
                            nbytes["downlink"], nbytes["uplink"]])
    with open(out / "events.jsonl", "w") as f:
        f.writelines(json.dumps(e) + "\n" for e in sorted(events, key=lambda e: e["t"]))
    summary = summary_dict(timelines, extra)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def read_phases(out: Path) -> list[PhaseRecord]:
    """Read ``phases.csv`` back (for ``flsim report``)."""
    path = Path(out) / "phases.csv"
    if not path.exists():
        raise RecordError(f"{path} not found: expected the output directory of `flsim run`")
    with open(path, newline="") as f:
        return [PhaseRecord(int(r["round"]), r["client"], r["stage"], r["phase"], float(r["start"]),
                            float(r["seconds"]), int(r["bytes"])) for r in csv.DictReader(f)]
