"""Replay measured rows with the packet-level peer and compare: ``netsim measure`` p50 vs the packet
simulator (netsim.packet) vs the fluid engine with a transport model, row by row.

Only rows whose routing is known (pinned subflows: policies minimal and round-robin) are replayed;
ECMP rows depend on the kernel's hash. Rows that measured the same run again (same collective, size,
placement, policy, seed, iterations; e.g. ``tools/netsim_emulated.py --repeats``) are one case: it is
compared with the median of their p50s, and the largest distance of a repeat from that median is the
measurement's own spread. Prints each case and the error by size class (also counting a case as
matched when its error is within its spread); writes JSON.

The packet peer's software terms (what split-TCP's Python event loop and the kernel's forwarding cost on
the measuring machine: per step a rank starts, per piece or status it writes, per piece or status it
reads, per message it sets up, and the latency of a hop) are ``netsim.packet.PacketParams``' defaults
unless given (``--step-us``, ``--send-us``, ``--receive-us``, ``--message-us``, ``--hop-us``). ``--fit``
first fits them to the cases up to 32 KiB, where they dominate (least mean absolute relative error, by a
pattern search on a 5 us lattice from the defaults; the fit replays ``--fit-iters`` iterations of each
case), and replays everything with the fitted terms: software speed differs between machines. Rows
that carry their samples (``rank_seconds``) also compare the fraction of rank-iterations that stalled
(took more than twice the fastest measured one), measured and replayed.
``--small-queues UNITS`` replays with Linux's host egress (local qdisc refusals, TCP small queues of
UNITS GSO units; ``netsim.packet.tcp``) instead of a lossy one; ``--cpus N`` has the ranks' loops share
N CPUs (``netsim.packet.event_loops``), e.g. to replay a measurement taken under ``taskset``.

    python tools/packet_vs_measured.py ROWS.json [ROWS.json ...] [--model tcp] [--max-size 4M] [--jobs N]
        [--step-us US --send-us US --receive-us US --message-us US --hop-us US | --fit [--fit-iters N]]
        [--small-queues UNITS] [--cpus N]
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
from dataclasses import replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from netsim.errors import PacketParamsError
from netsim.measure.cli import parse_size
from netsim.measure_schema import load_report
from netsim.packet import PacketParams, PacketResult, replay
from netsim.transport_fit import Scenario, scenario
from netsim.transport_model import load_transport_model

CLASSES = (("4-32 KiB", 0, 32 << 10), ("64-512 KiB", 64 << 10, 512 << 10), ("1-4 MiB", 1 << 20, 1 << 62))


def _summary(errors: list[tuple[int, float, float]]) -> list[dict]:
    """Per size class, from (size, relative error, the case's measured spread)."""
    out = []
    for name, lo, hi in CLASSES:
        e = [(abs(x), spread) for size, x, spread in errors if lo <= size <= hi]
        if e:
            out.append({"sizes": name, "rows": len(e), "median_abs_error": statistics.median(x for x, _ in e),
                        "within_10pct": sum(x <= 0.1 for x, _ in e) / len(e),
                        "within_20pct": sum(x <= 0.2 for x, _ in e) / len(e),
                        "within_10pct_or_spread": sum(x <= max(0.1, sp) for x, sp in e) / len(e),
                        "max_abs_error": max(x for x, _ in e)})
    return out


def _case_key(s: Scenario) -> tuple:
    r = s.row
    return (r.collective, r.size_bytes, r.policy, r.splits, r.fabric.rank_hosts if r.fabric else None,
            r.fabric.seed if r.fabric else 0, r.iters, r.warmup)


TERMS = ("step_s", "send_s", "receive_s", "message_s", "hop_s")


def _replay(job: tuple[Scenario, PacketParams, int | None]) -> PacketResult:
    s, params, iters = job
    return replay(s.topology, s.job.steps, s.policy.paths, iters=iters or s.row.iters, warmup=s.row.warmup,
                  params=params, rank_hosts=s.row.fabric.rank_hosts if s.row.fabric else None)


def _with_terms(params: PacketParams, us: dict[str, float]) -> PacketParams:
    """``params`` with the software terms named in ``us`` (microseconds) set."""
    return replace(params, **{name: value * 1e-6 for name, value in us.items()})


def _measured(group: list[Scenario]) -> float:
    """A case's measured time: the median of its repeats' p50s."""
    return statistics.median(g.row.seconds.p50 for g in group)


def _stalled(group: list[Scenario], got: PacketResult) -> tuple[float, float] | None:
    """The fraction of rank-iterations that took more than twice the fastest measured one, measured (all
    repeats) and replayed; None when the rows do not carry their samples (``rank_seconds``)."""
    if any(g.row.rank_seconds is None for g in group):
        return None
    measured = [t for g in group for times in g.row.rank_seconds or () for t in times]
    bar = 2 * min(measured)
    return (sum(t > bar for t in measured) / len(measured),
            sum(t > bar for t in got.samples_s) / len(got.samples_s))


def _fit_software(pool: ProcessPoolExecutor, cases: list[tuple[Scenario, float]], start: PacketParams,
                  iters: int) -> tuple[PacketParams, float]:
    """The software terms with the least mean |relative error| over ``cases`` (scenario, measured
    seconds): a pattern search on a 5 us lattice of non-negative terms, from ``start``; it moves one
    term by +-h while that helps and halves h from 40 us to 5 us."""
    scores: dict[tuple[int, ...], float] = {}

    def score(points: list[tuple[int, ...]]) -> None:
        todo = [p for p in dict.fromkeys(points) if p not in scores and min(p) >= 0]
        jobs = [(s, _with_terms(start, dict(zip(TERMS, p))), iters) for p in todo for s, _ in cases]
        got = iter(pool.map(_replay, jobs, chunksize=2))
        for p in todo:
            scores[p] = statistics.fmean(abs(next(got).median_s / m - 1) for _, m in cases)

    best = tuple(5 * round(getattr(start, name) * 1e6 / 5) for name in TERMS)
    score([best])
    step = 40
    while step >= 5:
        around = [tuple(v + d * step if i == j else v for i, v in enumerate(best))
                  for j in range(len(TERMS)) for d in (-1, 1)]
        score(around)
        moved = min((p for p in around if p in scores), key=scores.__getitem__, default=best)
        print(f"  fit: best {best} us (mean |error| {100 * scores[best]:.1f}%), step {step} us", flush=True)
        if scores[moved] < scores[best]:
            best = moved
        else:
            step //= 2
    return _with_terms(start, dict(zip(TERMS, best))), scores[best]


def _terms_text(params: PacketParams) -> str:
    return ", ".join(f"{name[:-2]} {getattr(params, name) * 1e6:g} us" for name in TERMS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", type=Path, nargs="+",
                        help="netsim measure --json reports (split-tcp on an emulated fabric)")
    parser.add_argument("--model", default="tcp", help="transport model of the fluid column (preset or JSON file)")
    parser.add_argument("--max-size", default="4M", help="replay rows up to this size (packet replays of large "
                        "sizes take seconds each)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="rows replayed in parallel")
    parser.add_argument("--step-us", type=float, help="software cost of a rank's step (default: PacketParams')")
    parser.add_argument("--send-us", type=float, help="software cost of each piece or status a rank writes")
    parser.add_argument("--receive-us", type=float, help="software cost of each piece or status a rank reads")
    parser.add_argument("--message-us", type=float, help="software cost of setting up each message of a step")
    parser.add_argument("--hop-us", type=float, help="latency of a hop (the kernel's forwarding)")
    parser.add_argument("--fit", action="store_true", help="fit these terms to the cases up to 32 KiB first")
    parser.add_argument("--fit-iters", type=int, default=5, help="iterations of each case the fit replays")
    parser.add_argument("--small-queues", type=float, help="Linux's host egress with TCP small queues of this "
                        "many GSO units per connection (default: a lossy host egress)")
    parser.add_argument("--cpus", type=int, help="the CPUs the ranks' event loops share (default: one per rank)")
    parser.add_argument("--out", type=Path, default=Path("bench-results/packet-vs-measured.json"))
    args = parser.parse_args()
    given = {name: value for name, value in zip(TERMS, (args.step_us, args.send_us, args.receive_us,
                                                        args.message_us, args.hop_us)) if value is not None}
    if args.fit and given:
        parser.error("--fit finds the terms (--step-us ... --hop-us) itself; give either --fit or the terms")
    if args.fit_iters < 1:
        parser.error("--fit-iters: at least 1")
    try:
        params = _with_terms(PacketParams(small_queue_units=args.small_queues, cpus=args.cpus), given)
    except PacketParamsError as exc:
        parser.error(str(exc))
    model = load_transport_model(args.model)
    limit = parse_size(args.max_size)
    cases: dict[tuple, list[Scenario]] = {}
    for path in args.rows:
        for s in map(scenario, load_report(path).rows):
            if s.row.size_bytes <= limit and s.routing_known:
                cases.setdefault(_case_key(s), []).append(s)
    results, packet_errors, fluid_errors = [], [], []
    started = time.perf_counter()
    fit_error = None
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        if args.fit:
            small = [(g[0], _measured(g)) for g in cases.values() if g[0].row.size_bytes <= 32 << 10]
            if not small:
                sys.exit("--fit needs cases up to 32 KiB")
            params, fit_error = _fit_software(pool, small, params, args.fit_iters)
            print(f"fitted on {len(small)} cases up to 32 KiB ({args.fit_iters} iterations each): "
                  f"{_terms_text(params)} (mean |error| {100 * fit_error:.1f}%)", flush=True)
        jobs = [(group[0], params, None) for group in cases.values()]
        for group, got in zip(cases.values(), pool.map(_replay, jobs)):
            s = group[0]
            row, fluid = s.row, s.predict(model)
            repeats = [g.row.seconds.p50 for g in group]
            measured = _measured(group)
            spread = max(abs(x / measured - 1) for x in repeats)
            packet_errors.append((row.size_bytes, got.median_s / measured - 1, spread))
            fluid_errors.append((row.size_bytes, fluid / measured - 1, spread))
            results.append({"collective": row.collective, "policy": row.policy, "splits": row.splits,
                            "rank_hosts": list(row.fabric.rank_hosts), "size_bytes": row.size_bytes,
                            "iters": row.iters, "measured_s": measured, "measured_repeats_s": repeats,
                            "measured_spread": spread, "packet_s": got.median_s,
                            "packet_iterations_s": list(got.iteration_s), "packet_rank_s": [list(r) for r in got.rank_s],
                            "fluid_s": fluid, "drops": got.drops, "timeouts": got.timeouts,
                            "retransmits": got.retransmits, "probes": got.probes})
            stalls = _stalled(group, got)
            if stalls is not None:
                results[-1].update(stalled_measured=stalls[0], stalled_packet=stalls[1])
            print(f"{row.collective:9s} {row.policy:11s} k={row.splits} hosts={','.join(map(str, row.fabric.rank_hosts))} "
                  f"{row.size_bytes >> 10:5d} KiB: measured {measured * 1e3:8.1f} ms (x{len(repeats)}, "
                  f"spread {100 * spread:3.0f}%), packet {got.median_s * 1e3:8.1f} "
                  f"({100 * packet_errors[-1][1]:+4.0f}%, {got.timeouts} RTOs), fluid {fluid * 1e3:8.1f} "
                  f"({100 * fluid_errors[-1][1]:+4.0f}%)"
                  + ("" if stalls is None else f"; stalled {100 * stalls[0]:.0f}% measured, {100 * stalls[1]:.0f}% packet"),
                  flush=True)
    doc = {"rows_files": [str(p) for p in args.rows], "fluid_model": model.source,
           "software_terms": {**{name.replace("_s", "_us"): round(getattr(params, name) * 1e6, 3) for name in TERMS},
                              "fitted": args.fit, "fit_iters": args.fit_iters if args.fit else None,
                              "fit_mean_abs_error": fit_error},
           "small_queue_units": params.small_queue_units, "rows": results,
           "packet": _summary(packet_errors), "fluid": _summary(fluid_errors),
           "seconds": time.perf_counter() - started}
    for name in ("packet", "fluid"):
        for c in doc[name]:
            print(f"{name:6s} {c['sizes']:10s} rows {c['rows']:3d}: median |error| {100 * c['median_abs_error']:5.1f}%, "
                  f"within 10% {100 * c['within_10pct']:3.0f}%, within 20% {100 * c['within_20pct']:3.0f}%, "
                  f"within max(10%, spread) {100 * c['within_10pct_or_spread']:3.0f}%, "
                  f"max {100 * c['max_abs_error']:4.0f}%")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
