"""Replay measured rows with the packet-level peer and compare: ``netsim measure`` p50 vs the packet
simulator (netsim.packet) vs the fluid engine with a transport model, row by row.

Only rows whose routing is known (pinned subflows: policies minimal and round-robin) are replayed;
ECMP rows depend on the kernel's hash. Prints each row and the error by size class; writes JSON.

    python tools/packet_vs_measured.py docs/data/netsim-emulated-rows.json [--model tcp] [--max-size 4M] [--jobs N]
        [--out bench-results/packet-vs-measured.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netsim.measure.cli import parse_size
from netsim.measure_schema import load_report
from netsim.packet import PacketResult, replay
from netsim.transport_fit import Scenario, scenario
from netsim.transport_model import load_transport_model

CLASSES = (("4-32 KiB", 0, 32 << 10), ("64-512 KiB", 64 << 10, 512 << 10), ("1-4 MiB", 1 << 20, 1 << 62))


def _summary(errors: list[tuple[int, float]]) -> list[dict]:
    out = []
    for name, lo, hi in CLASSES:
        e = [abs(x) for size, x in errors if lo <= size <= hi]
        if e:
            out.append({"sizes": name, "rows": len(e), "median_abs_error": statistics.median(e),
                        "within_10pct": sum(x <= 0.1 for x in e) / len(e),
                        "within_20pct": sum(x <= 0.2 for x in e) / len(e), "max_abs_error": max(e)})
    return out


def _replay(s: Scenario) -> PacketResult:
    return replay(s.topology, s.job.steps, s.policy.paths, iters=s.row.iters, warmup=s.row.warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", type=Path, help="a netsim measure --json report (split-tcp on an emulated fabric)")
    parser.add_argument("--model", default="tcp", help="transport model of the fluid column (preset or JSON file)")
    parser.add_argument("--max-size", default="4M", help="replay rows up to this size (packet replays of large "
                        "sizes take seconds each)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="rows replayed in parallel")
    parser.add_argument("--out", type=Path, default=Path("bench-results/packet-vs-measured.json"))
    args = parser.parse_args()
    model = load_transport_model(args.model)
    limit = parse_size(args.max_size)
    scenarios = [s for s in map(scenario, load_report(args.rows).rows)
                 if s.row.size_bytes <= limit and s.routing_known]
    results, packet_errors, fluid_errors = [], [], []
    started = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for s, got in zip(scenarios, pool.map(_replay, scenarios)):
            row, fluid = s.row, s.predict(model)
            measured = row.seconds.p50
            packet_errors.append((row.size_bytes, got.median_s / measured - 1))
            fluid_errors.append((row.size_bytes, fluid / measured - 1))
            results.append({"collective": row.collective, "policy": row.policy, "splits": row.splits,
                            "rank_hosts": list(row.fabric.rank_hosts), "size_bytes": row.size_bytes,
                            "measured_s": measured, "packet_s": got.median_s,
                            "packet_iterations_s": list(got.iteration_s), "packet_rank_s": [list(r) for r in got.rank_s],
                            "fluid_s": fluid, "drops": got.drops, "timeouts": got.timeouts,
                            "retransmits": got.retransmits})
            print(f"{row.collective:9s} {row.policy:11s} k={row.splits} hosts={','.join(map(str, row.fabric.rank_hosts))} "
                  f"{row.size_bytes >> 10:5d} KiB: measured {measured * 1e3:8.1f} ms, packet {got.median_s * 1e3:8.1f} "
                  f"({100 * packet_errors[-1][1]:+4.0f}%, {got.timeouts} RTOs), fluid {fluid * 1e3:8.1f} "
                  f"({100 * fluid_errors[-1][1]:+4.0f}%)", flush=True)
    doc = {"rows_file": str(args.rows), "fluid_model": model.source, "rows": results,
           "packet": _summary(packet_errors), "fluid": _summary(fluid_errors),
           "seconds": time.perf_counter() - started}
    for name in ("packet", "fluid"):
        for c in doc[name]:
            print(f"{name:6s} {c['sizes']:10s} rows {c['rows']:3d}: median |error| {100 * c['median_abs_error']:5.1f}%, "
                  f"within 10% {100 * c['within_10pct']:3.0f}%, within 20% {100 * c['within_20pct']:3.0f}%, "
                  f"max {100 * c['max_abs_error']:4.0f}%")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
