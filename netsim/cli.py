"""``netsim`` command line: simulate a collective, check the splitting theorem, plot policies."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import click
import numpy as np
import typer
from rich.console import Console
from rich.progress import track
from rich.table import Table

from integrations.cli_style import EXIT_BAD_INPUT, make_app, print_error, run_app, stderr_console, working
from netsim.collectives import COLLECTIVES, collective_job
from netsim.engine import simulate
from netsim.errors import NetsimError, TopologyError, TrafficError
from netsim.fabric.cli import fabric_app
from netsim.fit_cli import fit_transport_cmd
from netsim.measure.cli import measure_cmd
from netsim.packet import PacketParams
from netsim.packet.engine import PacketRun, simulate_packets
from netsim.plots import plot_cct_by_policy, plot_fct_cdf, plot_link_utilisation
from netsim.policies import POLICIES, make_policy
from netsim.results import CollectiveRun, SimulationResult
from netsim.theorem import check_instance, random_instance, summarize, trial_dict
from netsim.topology import LeafSpine, LinkFault
from netsim.traffic import Job, load_matrix, place
from netsim.transport_model import PRESETS, load_transport_model

app = make_app("netsim", "Fluid simulation of collectives on leaf-spine fabrics under path policies "
                         "(ECMP, packet spraying, k-way splitting).")
console = Console()
app.add_typer(fabric_app, name="fabric")
app.command("measure")(measure_cmd)

Leaves = Annotated[int, typer.Option(help="Number of leaf switches.")]
HostsPerLeaf = Annotated[int, typer.Option(help="Hosts under each leaf.")]
Spines = Annotated[int, typer.Option(help="Number of spine switches (per plane).")]
LinkGbps = Annotated[float, typer.Option(help="Host-leaf port speed in Gbit/s.")]
SpineGbps = Annotated[float | None, typer.Option(help="Leaf-spine port speed in Gbit/s (default: same as --link-gbps).")]
Planes = Annotated[int, typer.Option(help="Parallel fabric planes; every host has one port per plane.")]
Fail = Annotated[list[str] | None, typer.Option(
    help="Failed or degraded leaf-spine cable as LEAF:SPINE[:PLANE[:FACTOR]] (factor 0 = failed); repeatable.")]
Collective = Annotated[str, typer.Option(help="The collective every job runs.",
                                         click_type=click.Choice(list(COLLECTIVES)))]
Size = Annotated[float, typer.Option(help="Per-rank buffer in bytes (nccl-tests convention), e.g. 1e9.")]
Ranks = Annotated[int | None, typer.Option(help="Ranks per job (default: all hosts divided by --jobs).")]
Jobs = Annotated[int, typer.Option(help="Concurrent jobs running the same collective on disjoint hosts.")]
Placement = Annotated[str, typer.Option(help="Rank placement: packed (rank i on host i) or random.",
                                        click_type=click.Choice(["packed", "random"]))]
Policy = Annotated[str, typer.Option(help="Path policy.", click_type=click.Choice(list(POLICIES)))]
Matrix = Annotated[Path | None, typer.Option(
    help="Traffic matrix (CSV src,dst,bytes[,step] or JSON) instead of --collective.")]
Splits = Annotated[int | None, typer.Option(
    help="Subflows per flow for split, random-split, greedy (default: split minimal k, random-split 4, greedy 1).")]
Seed = Annotated[int, typer.Option(help="Seed for random placement and ECMP hashing.")]


def _faults(specs: list[str] | None) -> tuple[LinkFault, ...]:
    out = []
    for spec in specs or []:
        parts = spec.split(":")
        try:
            if not 2 <= len(parts) <= 4:
                raise ValueError
            leaf, spine = int(parts[0]), int(parts[1])
            plane = int(parts[2]) if len(parts) > 2 else 0
            factor = float(parts[3]) if len(parts) > 3 else 0.0
        except ValueError:
            raise TopologyError(f"--fail expects LEAF:SPINE[:PLANE[:FACTOR]], found {spec!r}") from None
        out.append(LinkFault(leaf, spine, plane, factor))
    return tuple(out)


def _jobs(topology: LeafSpine, collective: str, size: float, ranks: int | None, jobs: int, placement: str,
          matrix: Path | None, seed: int) -> list[Job]:
    if matrix is not None:
        return [load_matrix(matrix)]
    if jobs < 1:
        raise TrafficError(f"--jobs must be >= 1, found {jobs}")
    if ranks is None and topology.hosts // jobs < 2:
        raise TrafficError(f"--jobs {jobs} on a fabric of {topology.hosts} hosts leaves {topology.hosts // jobs} "
                           f"rank(s) per job; every job needs >= 2 ranks, so at most {topology.hosts // 2} jobs")
    per_job = ranks if ranks is not None else topology.hosts // jobs
    if per_job * jobs > topology.hosts:
        raise TrafficError(f"{jobs} job(s) of {per_job} ranks need {per_job * jobs} hosts; the fabric has "
                           f"{topology.hosts}")
    hosts = place(per_job * jobs, topology.hosts, placement, np.random.default_rng(seed))
    return [collective_job(f"job{j}", collective, hosts[j * per_job:(j + 1) * per_job], size, j)
            for j in range(jobs)]


def _summary_table(results: dict[str, SimulationResult]) -> Table:
    table = Table("policy", "CCT (ms)", "algbw (GB/s)", "busbw (GB/s)", "ideal (ms)", "gap", "max congestion",
                  "splits", "p99 FCT (ms)", "sim wall (s)")
    for name, r in results.items():
        bandwidths = [f"{bw / 1e9:.4g}" if bw is not None else "-" for bw in (r.algbw, r.busbw)]
        table.add_row(name, f"{r.cct_seconds * 1e3:.4g}", *bandwidths, f"{r.ideal_cct_seconds * 1e3:.4g}",
                      f"{r.gap:.1%}",
                      f"{r.max_congestion:.3g}", str(r.splits), f"{r.fct_quantiles([0.99])[0] * 1e3:.4g}",
                      f"{r.wall_seconds:.3f}")
    return table


def _print_packet_run(run: PacketRun, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(run.to_dict(), indent=2))
        return
    seconds, bandwidths = run.seconds(), run.bandwidths()
    table = Table("policy", "p50 CCT (ms)", "p95 (ms)", "max (ms)", "algbw (GB/s)", "busbw (GB/s)", "drops",
                  "RTOs", "retransmits")
    table.add_row(run.policy, *(f"{seconds[k] * 1e3:.4g}" for k in ("p50", "p95", "max")),
                  *(f"{bandwidths[k] / 1e9:.4g}" if k in bandwidths else "-" for k in ("algbw", "busbw")),
                  str(run.result.drops), str(run.result.timeouts), str(run.result.retransmits))
    console.print(table)


def _fail(exc: NetsimError) -> typer.Exit:
    print_error(exc)
    return typer.Exit(EXIT_BAD_INPUT)


@app.command("simulate")
def simulate_cmd(
    leaves: Leaves = 4, hosts_per_leaf: HostsPerLeaf = 4, spines: Spines = 4, link_gbps: LinkGbps = 100.0,
    spine_gbps: SpineGbps = None, planes: Planes = 1, fail: Fail = None,
    collective: Collective = "ring-allreduce", size: Size = 1e9, ranks: Ranks = None, jobs: Jobs = 1,
    placement: Placement = "packed", matrix: Matrix = None,
    policy: Policy = "ecmp",
    splits: Splits = None, seed: Seed = 0,
    replay: Annotated[bool, typer.Option(help="Replay repeated steps instead of re-simulating them.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
    detail: Annotated[bool, typer.Option(help="With --json: add per-step times and link utilisation.")] = False,
    csv_dir: Annotated[Path | None, typer.Option(help="Write steps.csv, flows.csv, links.csv here.")] = None,
    transport_model: Annotated[str, typer.Option(
        help=f"Transport model: {' or '.join(PRESETS)} (documented defaults) or a JSON file written by "
             "'netsim fit-transport'.")] = "tcp",
    engine: Annotated[str, typer.Option(
        help="fluid (flow-level, any scale) or packet (tbf links and Linux-like TCP packet by packet, as "
             "'netsim fabric up' builds them; small fabrics and sizes).",
        click_type=click.Choice(["fluid", "packet"]))] = "fluid",
    iters: Annotated[int, typer.Option(help="With --engine packet: timed iterations.")] = 3,
    warmup: Annotated[int, typer.Option(help="With --engine packet: untimed iterations first.")] = 1,
    queue_ms: Annotated[float, typer.Option(
        help="With --engine packet: every link's tbf queue in milliseconds of its rate.")] = 10.0,
    small_queues: Annotated[float | None, typer.Option(
        help="With --engine packet: replay each host's own egress as Linux runs it (a refused send stays "
             "unsent, CWR, the 200 ms probe timer; TCP small queues of this many GSO units per "
             "connection; 3 matches the kernel, docs/netsim.md). Default: a lossy egress.")] = None,
    cpus: Annotated[int | None, typer.Option(
        help="With --engine packet: the ranks' event loops share this many CPUs (a rank waits for a free "
             "one). Default: a CPU per rank.")] = None,
) -> None:
    """Simulate one collective (or a traffic matrix); report CCT, nccl-tests' algbw/busbw, ideal bound."""
    try:
        if splits is not None and policy in ("ecmp", "spray"):
            raise TrafficError(f"--splits applies to split, random-split and greedy, not to --policy {policy}")
        transport = load_transport_model(transport_model)
        topology = LeafSpine(leaves, hosts_per_leaf, spines, link_gbps, spine_gbps, planes, _faults(fail))
        path_policy = make_policy(policy, splits, seed)
        job_list = _jobs(topology, collective, size, ranks, jobs, placement, matrix, seed)
        if engine == "packet":
            if len(job_list) != 1:
                raise TrafficError(f"--engine packet replays one job, found --jobs {jobs}")
            if not queue_ms > 0:
                raise TrafficError(f"--queue-ms must be > 0, found {queue_ms}")
            params = PacketParams(queue_s=queue_ms / 1e3, small_queue_units=small_queues, cpus=cpus)
            run = simulate_packets(topology, job_list[0], path_policy, None if matrix else collective, size,
                                   ranks or topology.hosts, iters, warmup, params, seed)
    except NetsimError as exc:
        raise _fail(exc) from None
    if engine == "packet":
        _print_packet_run(run, as_json)
        return
    if csv_dir is not None:
        try:
            csv_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print_error(f"cannot create --csv-dir {csv_dir}: {exc.strerror}")
            raise typer.Exit(EXIT_BAD_INPUT) from None
    result = simulate(topology, job_list, path_policy, replay=replay, transport=transport)
    if matrix is None:
        per_job = ranks if ranks is not None else topology.hosts // jobs
        result = replace(result, collective=CollectiveRun(collective, size, per_job))
    if csv_dir is not None:
        result.write_steps_csv(csv_dir / "steps.csv")
        result.write_flows_csv(csv_dir / "flows.csv")
        result.write_links_csv(csv_dir / "links.csv", topology)
    if as_json:
        typer.echo(json.dumps(result.to_dict(detail), indent=2))
    else:
        console.print(_summary_table({policy: result}))


app.command("fit-transport")(fit_transport_cmd)


@app.command("theorem")
def theorem_cmd(
    trials: Annotated[int, typer.Option(help="Random instances to check.")] = 100,
    seed: Seed = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print summary (and trials) as JSON.")] = False,
    rows: Annotated[bool, typer.Option(help="With --json: include every trial.")] = False,
) -> None:
    """Check where single-path + minimal splitting matches packet spraying, and how far ECMP is."""
    if trials < 1:
        raise _fail(TrafficError(f"--trials must be >= 1, found {trials}"))
    rng = np.random.default_rng(seed)
    indices = track(range(trials), description="checking instances", console=stderr_console())
    results = []
    for i in indices:
        topology, flows, pattern = random_instance(rng)
        results.append(check_instance(topology, flows, pattern, seed * 1_000_003 + i))
    summary = summarize(results)
    if as_json:
        out: dict[str, object] = {"trials": trials, "seed": seed, "summary": summary}
        if rows:
            out["rows"] = [trial_dict(t) for t in results]
        typer.echo(json.dumps(out, indent=2))
        return
    table = Table("case", "trials", "split = spray congestion", "k needed = S/gcd(D,S)", "max k",
                  "split = spray CCT", "ECMP congestion / spray (mean, max)", "ECMP CCT / spray (mean, max)")
    for row in summary:
        table.add_row(str(row["case"]), str(row["trials"]), f"{row['split_congestion_equals_spray']:.0%}",
                      f"{row['k_needed_equals_formula']:.0%}", str(row["k_formula_max"]),
                      f"{row['split_cct_equals_spray']:.0%}",
                      f"{row['ecmp_congestion_over_spray_mean']:.2f}, {row['ecmp_congestion_over_spray_max']:.2f}",
                      f"{row['ecmp_cct_over_spray_mean']:.2f}, {row['ecmp_cct_over_spray_max']:.2f}")
    console.print(table)


@app.command("plot")
def plot_cmd(
    out_dir: Annotated[Path, typer.Option(help="Directory for the PNG files.")] = Path("netsim-plots"),
    policies: Annotated[str, typer.Option(
        help=f"Comma-separated policies to compare ({', '.join(POLICIES)}).")
    ] = "ecmp,spray,split,random-split",
    leaves: Leaves = 4, hosts_per_leaf: HostsPerLeaf = 4, spines: Spines = 4, link_gbps: LinkGbps = 100.0,
    spine_gbps: SpineGbps = None, planes: Planes = 1, fail: Fail = None,
    collective: Collective = "ring-allreduce", size: Size = 1e9, ranks: Ranks = None, jobs: Jobs = 1,
    placement: Placement = "random", matrix: Matrix = None, splits: Splits = None, seed: Seed = 0,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results and files as JSON.")] = False,
) -> None:
    """Run several policies on one scenario; write CCT bars, FCT CDFs and per-policy link heatmaps."""
    if out_dir.exists() and not out_dir.is_dir():
        raise _fail(TrafficError(f"--out-dir {out_dir}: exists and is not a directory"))
    try:
        topology = LeafSpine(leaves, hosts_per_leaf, spines, link_gbps, spine_gbps, planes, _faults(fail))
        job_list = _jobs(topology, collective, size, ranks, jobs, placement, matrix, seed)
        chosen = {name: make_policy(name, splits, seed)
                  for name in (p.strip() for p in policies.split(",") if p.strip())}
        with working(f"simulating {len(chosen)} policies on {topology.hosts} hosts"):
            results = {name: simulate(topology, job_list, policy) for name, policy in chosen.items()}
    except NetsimError as exc:
        raise _fail(exc) from None
    if not results:
        raise _fail(TrafficError("--policies names no policy"))
    out_dir.mkdir(parents=True, exist_ok=True)
    written = [plot_cct_by_policy(results, out_dir / "cct_by_policy.png"),
               plot_fct_cdf(results, out_dir / "fct_cdf.png")]
    written += [plot_link_utilisation(r, topology, out_dir / f"link_utilisation_{name}.png")
                for name, r in results.items()]
    if as_json:
        typer.echo(json.dumps({"results": {name: r.to_dict() for name, r in results.items()},
                               "files": [str(path) for path in written]}, indent=2))
        return
    console.print(_summary_table(results))
    for path in written:
        typer.echo(str(path))


def main(args: list[str] | None = None) -> None:
    """Console-script entry point (``args``: instead of ``sys.argv[1:]``); the shared CLI style of
    :mod:`integrations.cli_style`: errors on stderr, exit codes 0/1/2/3."""
    run_app(app, "netsim", expected=(NetsimError,), args=args)
