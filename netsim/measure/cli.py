"""``netsim measure``: time collectives over real links and report them in nccl-tests' terms."""

from __future__ import annotations

import json
import random
import re
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from netsim.fabric.leafspine import load_description
from netsim.measure.backends import BackendName, CollectiveName
from netsim.measure.errors import MeasureError
from netsim.measure.launch import MeasureConfig
from netsim.measure.report import run_measurement, table, to_csv
from netsim.transport import PathPolicyName

_UNITS = {"": 1, "B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
_SIZE = re.compile(r"^(\d+)([KMG]?)B?$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``64``, ``1K``, ``64M``, ``1G`` -> bytes (binary units, as nccl-tests)."""
    m = _SIZE.match(text.strip())
    if not m:
        raise MeasureError(f"--sizes: cannot read size {text!r}; expected e.g. 1024, 1K, 64M")
    return int(m.group(1)) * _UNITS[m.group(2).upper()]


def parse_sizes(text: str) -> tuple[int, ...]:
    """``MIN:MAX`` (powers of two from MIN to MAX, as nccl-tests' -b/-e/-f 2), or a comma list."""
    if ":" in text:
        lo, _, hi = text.partition(":")
        first, last = parse_size(lo), parse_size(hi)
        if first > last:
            raise MeasureError(f"--sizes {text!r}: the first size is larger than the last")
        out, size = [], first
        while size <= last:
            out.append(size)
            size *= 2
        return tuple(out)
    return tuple(parse_size(s) for s in text.split(",") if s.strip())


def parse_hosts(
    text: str | None, ranks: int, n_hosts: int, placement: str, seed: int
) -> tuple[int, ...] | None:
    """Rank -> fabric host: an explicit list, or ``packed`` (rank r on host r) / ``random`` (seeded)."""
    if text:
        try:
            return tuple(int(h) for h in text.split(","))
        except ValueError:
            raise MeasureError(f"--hosts expects comma-separated host indices, found {text!r}") from None
    if placement == "packed":
        return None
    if placement == "random":
        if ranks > n_hosts:
            raise MeasureError(f"{ranks} ranks need {ranks} fabric hosts; the fabric has {n_hosts}")
        return tuple(random.Random(seed).sample(range(n_hosts), ranks))
    raise MeasureError(f"--placement must be packed or random, found {placement!r}")


def measure_cmd(
    backend: Annotated[
        BackendName, typer.Option(help="Communication library to time.")
    ] = BackendName.split_tcp,
    collective: Annotated[
        CollectiveName, typer.Option(help="Collective (nccl-tests' name).")
    ] = CollectiveName.allreduce,
    ranks: Annotated[
        int, typer.Option(help="Number of ranks (processes; one per fabric host with --fabric).")
    ] = 2,
    sizes: Annotated[
        str,
        typer.Option(
            help="MIN:MAX (powers of two) or a comma list; units K, M, G "
            "(nccl-tests' size: all-reduce buffer, all-gather output, ...)."
        ),
    ] = "1K:1M",
    fabric: Annotated[
        str | None,
        typer.Option(
            help="Run one rank per host of this emulated fabric (`netsim fabric up`); default loopback."
        ),
    ] = None,
    hosts: Annotated[
        str | None, typer.Option(help="With --fabric: fabric host of each rank, e.g. 0,2,1,3.")
    ] = None,
    placement: Annotated[
        str, typer.Option(help="With --fabric and no --hosts: packed or random.")
    ] = "packed",
    policy: Annotated[
        PathPolicyName | None,
        typer.Option(
            help="split-tcp's subflow paths: minimal (colouring; the default), round-robin or ecmp "
            "(random source ports)."
        ),
    ] = None,
    splits: Annotated[
        int | None,
        typer.Option(help="split-tcp subflows per peer (default: the policy's minimal k; 1 for ecmp)."),
    ] = None,
    iters: Annotated[int, typer.Option(help="Timed iterations per size.")] = 5,
    warmup: Annotated[int, typer.Option(help="Untimed iterations per size.")] = 1,
    seed: Annotated[int, typer.Option(help="Seed for ECMP source ports and random placement.")] = 0,
    timeout: Annotated[float, typer.Option(help="Seconds a rank waits for any peer before failing.")] = 60.0,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON (netsim measure schema).")
    ] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV instead of the table.")] = False,
) -> None:
    """Measure collective completion times; report size, count, type, time, algbw, busbw and quantiles.

    Times are per rank, from a barrier's end to the collective's completion; ``time`` is their median
    over iterations x ranks, with p50/p95/p99/min/max beside it. GB/s are 1e9 bytes/s.
    """
    if as_json and as_csv:
        raise MeasureError("choose one of --json and --csv")
    size_list = parse_sizes(sizes)
    if backend is not BackendName.split_tcp and (policy is not None or splits is not None):
        raise MeasureError(
            f"--policy and --splits are split-tcp's; {backend.value} chooses its own connections"
        )
    if backend is BackendName.nccl and fabric is not None:
        raise MeasureError("the nccl backend runs on GPUs (one rank per GPU), not on the emulated fabric")
    description = load_description(fabric) if fabric is not None else None
    if description is None and (hosts or placement != "packed"):
        raise MeasureError("--hosts and --placement need --fabric")
    rank_hosts = (
        parse_hosts(hosts, ranks, len(description.hosts), placement, seed)
        if description is not None
        else None
    )
    config = MeasureConfig(
        backend,
        collective,
        ranks,
        size_list,
        iters,
        warmup,
        policy or PathPolicyName.minimal,
        splits,
        seed,
        timeout,
        rank_hosts,
    )
    effective = config.effective_sizes()
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
        disable=len(effective) < 2,
    ) as bar:
        task = bar.add_task(f"{backend.value} {collective.value} sizes", total=len(effective))
        report = run_measurement(config, description, lambda size: bar.advance(task))
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2))
    elif as_csv:
        typer.echo(to_csv(report), nl=False)
    else:
        console = Console()
        Console(width=max(console.width, 150)).print(table(report))
