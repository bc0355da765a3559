"""Benchmark the netsim engine: ring all-reduce on 1:1 leaf-spine fabrics under ECMP and 4-way splitting.

Each case builds the fabric and job, then simulates it; the wall time covers both. Ranks are placed at
random (packed rings barely cross leaves, so ECMP would have nothing to collide on). Every case runs
``--repeats`` times and the median is reported. Targets from issue 5: 1024 hosts <= 2 s, 4096 <= 20 s.

Cases with ``--raw-hosts`` switch step replay off, so every step is simulated event by event: they show
the raw engine speed that replay multiplies.

Usage: python tools/bench_netsim.py [--hosts 256,1024,4096] [--repeats 3] [--raw-hosts 64,256] [--out FILE]
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from netsim import LeafSpine, make_policy, place, simulate
from netsim.collectives import collective_job

TARGETS = {1024: 2.0, 4096: 20.0}
POLICIES = (("ecmp", None), ("random-split", 4))


def run_case(hosts: int, policy: str, splits: int | None, replay: bool, seed: int) -> dict[str, float]:
    """Build and simulate one ring all-reduce; return wall time and event counts."""
    side = round(hosts ** (1 / 2))
    leaves, per_leaf = (side, side) if side * side == hosts else (hosts // 32, 32)
    t0 = time.perf_counter()
    topology = LeafSpine(leaves, per_leaf, per_leaf, 400.0)
    ranks = place(hosts, hosts, "random", np.random.default_rng(seed))
    job = collective_job("bench", "ring-allreduce", ranks, 1 << 30)
    result = simulate(topology, [job], make_policy(policy, splits, seed), replay=replay)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "events_simulated": result.events_simulated, "events_replayed": result.events_replayed,
            "steps": len(result.steps), "cct_s": result.cct_seconds, "ideal_s": result.ideal_cct_seconds,
            "fabric": f"{leaves}x{per_leaf}x{per_leaf}"}


def median_case(hosts: int, policy: str, splits: int | None, replay: bool, repeats: int) -> dict[str, object]:
    """Median of ``repeats`` runs (same seed: the work is identical, only the timing varies)."""
    runs = [run_case(hosts, policy, splits, replay, seed=1) for _ in range(repeats)]
    wall = statistics.median(r["wall_s"] for r in runs)
    first = runs[0]
    return {
        "hosts": hosts, "fabric": first["fabric"], "policy": policy if splits is None else f"{policy} k={splits}",
        "replay": replay, "steps": first["steps"], "wall_s_median": wall, "wall_s_all": [r["wall_s"] for r in runs],
        "events_simulated": first["events_simulated"], "events_replayed": first["events_replayed"],
        "simulated_events_per_s": first["events_simulated"] / wall,
        "flow_events_per_s": (first["events_simulated"] + first["events_replayed"]) / wall,
        "cct_s": first["cct_s"], "ideal_cct_s": first["ideal_s"],
        "target_s": TARGETS.get(hosts) if replay else None,
    }


def main() -> None:
    """Run the benchmark, print a table, optionally write JSON."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--hosts", default="256,1024,4096", help="comma-separated host counts (squares)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--raw-hosts", default="64,256",
                        help="host counts also run without step replay (every step simulated)")
    parser.add_argument("--raw-repeats", type=int, default=1, help="repeats of the no-replay cases")
    parser.add_argument("--out", help="write results as JSON here")
    args = parser.parse_args()
    if args.out:  # create the folder up front: failing after minutes of benchmarking loses the results
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    cases = []
    for hosts in (int(h) for h in args.hosts.split(",") if h):
        for policy, splits in POLICIES:
            cases.append(median_case(hosts, policy, splits, True, args.repeats))
    for hosts in (int(h) for h in args.raw_hosts.split(",") if h):
        for policy, splits in POLICIES:
            cases.append(median_case(hosts, policy, splits, False, args.raw_repeats))
    growth = {}
    for policy in {c["policy"] for c in cases}:
        mine = sorted((c["hosts"], c["wall_s_median"]) for c in cases if c["policy"] == policy and c["replay"])
        growth[policy] = [{"from_hosts": a[0], "to_hosts": b[0],
                           "exponent": math.log(b[1] / a[1]) / math.log(b[0] / a[0])}
                          for a, b in itertools.pairwise(mine)]
    table = Table("hosts", "fabric", "policy", "replay", "steps", "wall s (median)", "target", "sim events/s",
                  "flow events/s", "CCT / ideal")
    for c in cases:
        target = c["target_s"]
        verdict = "" if target is None else f"<= {target:g} s {'ok' if c['wall_s_median'] <= target else 'MISSED'}"
        table.add_row(str(c["hosts"]), c["fabric"], c["policy"], "yes" if c["replay"] else "no", str(c["steps"]),
                      f"{c['wall_s_median']:.3f}", verdict, f"{c['simulated_events_per_s']:,.0f}",
                      f"{c['flow_events_per_s']:,.0f}", f"{c['cct_s'] / c['ideal_cct_s']:.2f}")
    console = Console(width=160)
    console.print(table)
    for policy, steps in sorted(growth.items()):
        console.print(f"{policy}: wall time ~ hosts^" + ", ".join(
            f"{g['exponent']:.2f} ({g['from_hosts']}->{g['to_hosts']})" for g in steps))
    if args.out:
        report = {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "python": platform.python_version(), "numpy": np.__version__},
            "cases": cases, "growth": growth,
        }
        with open(args.out, "w") as fh:
            json.dump(report, fh, indent=2)
            fh.write("\n")


if __name__ == "__main__":
    main()
