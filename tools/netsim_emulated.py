"""The measured-vs-simulated experiment of docs/netsim.md in one command (needs root and ``ip``/``tc``).

Builds the emulated 4x2x2 leaf-spine (``netsim fabric up``, 100 Mbit/s tbf links), then runs
``netsim measure --backend split-tcp --ranks 8`` for every collective x placement x policy: placements
A = 0,2,4,6,1,3,5,7 (every ring hop crosses leaves), B = 3,6,0,5,2,7,4,1 (random), C = 0..7
(packed); policies minimal, round-robin k=4, ECMP k=1 with seeds 0, 1, 2 and ECMP k=4. The rows
of all runs are merged into one report, rewritten after each run (a cut-short run keeps what it
measured), for ``netsim fit-transport``. The fabric is removed at the end, also on failure.

``--repeats R`` measures every run R times (rows carry ``repeat``: the measurement's own spread);
``--tcp-counters`` attaches to each row, per rank, what the kernel's TCP went through in the row's run
(``tcp``: the Tcp/TcpExt counters of /proc/net/snmp and /proc/net/netstat inside each host's namespace
that changed, and by how much; ``tcp_sizes``: the sizes that run covered);
``--size-per-run`` measures each size in its own run, so that the counters belong to one size.

Run it on an idle machine (a loaded 2-core box stretches the p50s): the GPU machine's CPUs,
e.g. ``python3 tools/netsim_emulated.py --collectives allreduce --out $OUT/allreduce.json``.

    python tools/netsim_emulated.py [--collectives allreduce,alltoall] [--sizes 4K:4M] [--iters 3]
                                    [--placements A,B,C] [--policies minimal,round-robin,ecmp]
                                    [--repeats 1] [--tcp-counters] [--size-per-run] [--link-mbit 100]
                                    [--out bench-results/netsim-emulated.json]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netsim.measure.cli import parse_sizes

PLACEMENTS = {"A": "0,2,4,6,1,3,5,7", "B": "3,6,0,5,2,7,4,1", "C": "0,1,2,3,4,5,6,7"}
POLICIES = [("minimal", None, 0), ("round-robin", 4, 0), ("ecmp", 1, 0), ("ecmp", 1, 1), ("ecmp", 1, 2), ("ecmp", 4, 0)]
FABRIC = "e"


def netsim(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """Run the netsim CLI of this checkout (no installed console script needed)."""
    code = "import sys; from netsim.cli import main; main(sys.argv[1:])"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=timeout,
                          check=False)


def tcp_counters(namespace: str) -> dict[str, int]:
    """The Tcp and TcpExt counters of one network namespace (they are per namespace)."""
    text = subprocess.run(["ip", "netns", "exec", namespace, "cat", "/proc/net/snmp", "/proc/net/netstat"],
                          capture_output=True, text=True, check=True, timeout=30).stdout.splitlines()
    values: dict[str, int] = {}
    for names, numbers in zip(text[::2], text[1::2]):  # "Tcp: A B ..." then "Tcp: 1 2 ..."
        if names.startswith(("Tcp:", "TcpExt:")):
            values.update(zip(names.split()[1:], map(int, numbers.split()[1:])))
    return values


def host_namespaces() -> list[str]:
    """The fabric's host namespaces, by host index."""
    done = netsim("fabric", "status", "--name", FABRIC, "--json", timeout=60)
    return [h["namespace"] for h in json.loads(done.stdout)["hosts"]]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--collectives", default="allreduce,alltoall")
    parser.add_argument("--sizes", default="4K:4M")
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--placements", default=",".join(PLACEMENTS))
    parser.add_argument("--policies", default="minimal,round-robin,ecmp")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tcp-counters", action="store_true", help="per-rank TCP counters of each run")
    parser.add_argument("--size-per-run", action="store_true", help="measure each size in its own run")
    parser.add_argument("--link-mbit", type=float, default=100.0)
    parser.add_argument("--out", type=Path, default=Path("bench-results/netsim-emulated.json"))
    args = parser.parse_args()
    unknown = sorted(set(args.placements.split(",")) - set(PLACEMENTS))
    if unknown:
        parser.error(f"--placements: unknown {unknown}; known: {','.join(PLACEMENTS)}")
    unknown = sorted(set(args.policies.split(",")) - {name for name, _, _ in POLICIES})
    if unknown:
        parser.error(f"--policies: unknown {unknown}; known: minimal,round-robin,ecmp")
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    up = netsim("fabric", "up", "--name", FABRIC, "--leaves", "4", "--hosts-per-leaf", "2", "--spines", "2",
                "--link-mbit", str(args.link_mbit), timeout=120)
    if up.returncode != 0:
        sys.exit(f"netsim fabric up failed: {up.stderr.strip()}")
    rows: list[dict] = []
    meta = {"fabric": f"emulated 4x2x2 leaf-spine, {args.link_mbit:g} Mbit/s tbf links", "machine": platform.machine(),
            "cpus": os.cpu_count(), "date": datetime.now(timezone.utc).date().isoformat(),
            "runs": f"split-tcp, 8 ranks, --iters {args.iters} --warmup {args.warmup}, {args.repeats} repeat(s); "
                    f"policies {args.policies}; placements " + ", ".join(f"{k}={v}" for k, v in PLACEMENTS.items())}
    placements = {k: PLACEMENTS[k] for k in args.placements.split(",")}
    policies = [p for p in POLICIES if p[0] in args.policies.split(",")]
    sweeps = parse_sizes(args.sizes) if args.size_per_run else [args.sizes]
    namespaces = host_namespaces() if args.tcp_counters else []
    failures = 0
    try:
        runs = itertools.product(args.collectives.split(","), placements.items(), policies, sweeps,
                                 range(args.repeats))
        for collective, (name, hosts), (policy, splits, seed), sizes, repeat in runs:
            started = time.perf_counter()
            cmd = ["measure", "--backend", "split-tcp", "--collective", collective, "--ranks", "8",
                   "--sizes", str(sizes), "--iters", str(args.iters), "--warmup", str(args.warmup),
                   "--fabric", FABRIC, "--hosts", hosts, "--policy", policy, "--seed", str(seed), "--json"]
            if splits is not None:
                cmd += ["--splits", str(splits)]
            before = [tcp_counters(ns) for ns in namespaces]
            done = netsim(*cmd, timeout=300)
            what = f"{collective} {name} {policy} k={splits or 'min'} seed={seed} repeat={repeat}"
            if done.returncode != 0:
                failures += 1
                print(f"FAILED {what}: {done.stderr.strip()[-400:]}", flush=True)
                continue
            got = json.loads(done.stdout)["rows"]
            after = [tcp_counters(ns) for ns in namespaces]
            for row in got:
                row["repeat"] = repeat
                if namespaces:  # rank r runs on host hosts[r]
                    row["tcp_sizes"] = str(sizes)
                    row["tcp"] = [{k: v - before[h].get(k, 0) for k, v in after[h].items() if v != before[h].get(k, 0)}
                                  for h in map(int, hosts.split(","))]
            rows += got
            args.out.write_text(json.dumps({"schema": 1, "meta": meta, "rows": rows}, indent=1))
            p50 = {r["size_bytes"]: round(r["seconds"]["p50"] * 1e3, 1) for r in got}
            print(f"{what}: {len(got)} rows in {time.perf_counter() - started:.1f}s; p50 ms {p50}",
                  flush=True)
    finally:
        down = netsim("fabric", "down", "--name", FABRIC, timeout=120)
        if down.returncode != 0:
            print(f"netsim fabric down failed: {down.stderr.strip()}", file=sys.stderr)
    print(f"{len(rows)} rows in {args.out}; {failures} failed run(s)")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
