"""``netsim fabric up|down|status``: the emulated leaf-spine of network namespaces (needs root)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from netsim.fabric.leafspine import FabricDescription, FabricSpec, fabric_down, fabric_status, fabric_up

fabric_app = typer.Typer(
    help="Build, inspect and remove an emulated leaf-spine fabric of network namespaces "
    "(veth links shaped by tbf, ECMP and per-spine path pinning). Needs root.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

Name = Annotated[str, typer.Option(help="Fabric name; its namespaces are netsim-NAME-{h,l,s}<i>.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the fabric description as JSON.")]


def _table(d: FabricDescription) -> Table:
    table = Table(
        "host",
        "namespace",
        "leaf",
        "address",
        title=(
            f"fabric {d.spec.name}: {d.spec.leaves} leaves x {d.spec.hosts_per_leaf} hosts, "
            f"{d.spec.spines} spines, "
            f"host links {d.spec.link_mbit:g} Mbit/s, spine links {d.spec.uplink_mbit:g} Mbit/s"
        ),
    )
    for h in d.hosts:
        table.add_row(str(h.index), h.namespace, str(h.leaf), h.address)
    return table


def _ports_line(d: FabricDescription) -> str:
    pins = ", ".join(f"spine {k}: {a}-{b}" for k, (a, b) in enumerate(d.pinned_ports))
    return (
        f"source ports pin paths ({pins}); ports {d.ecmp_ports[0]}-{d.ecmp_ports[1]} are ECMP-hashed; "
        f"listen port {d.listen_port}"
    )


@fabric_app.command("up")
def up_cmd(
    name: Name = "fab",
    leaves: Annotated[int, typer.Option(help="Leaf routers.")] = 2,
    hosts_per_leaf: Annotated[int, typer.Option(help="Hosts under each leaf.")] = 2,
    spines: Annotated[int, typer.Option(help="Spine routers.")] = 2,
    link_mbit: Annotated[float, typer.Option(help="tbf rate of host-leaf links, Mbit/s (IP bytes).")] = 100.0,
    spine_mbit: Annotated[
        float | None, typer.Option(help="tbf rate of leaf-spine links, Mbit/s (default: --link-mbit).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Seed of the leaves' ECMP hash (fib_multipath_hash_seed).")] = 0,
    queue_ms: Annotated[float, typer.Option(help="tbf queue bound (its latency), ms.")] = 10.0,
    as_json: AsJson = False,
) -> None:
    """Build the fabric (idempotent: an identical fabric is kept, anything else of that name rebuilt)."""
    spec = FabricSpec(name, leaves, hosts_per_leaf, spines, link_mbit, spine_mbit, seed, queue_ms=queue_ms)
    d, built = fabric_up(spec)
    if as_json:
        typer.echo(json.dumps(d.to_dict(), indent=2))
        return
    console = Console()
    console.print(_table(d))
    console.print(_ports_line(d))
    typer.echo(
        f"fabric {name}: {'built' if built else 'already up'} ({len(d.namespaces)} namespaces)", err=True
    )


@fabric_app.command("down")
def down_cmd(name: Name = "fab") -> None:
    """Remove the fabric and anything a crashed build left behind (idempotent)."""
    removed = fabric_down(name)
    typer.echo(f"fabric {name}: removed {len(removed)} namespaces")


@fabric_app.command("status")
def status_cmd(name: Name = "fab", as_json: AsJson = False) -> None:
    """Describe the fabric; exit 1 when it is not up or is incomplete."""
    d, missing, extra = fabric_status(name)
    if d is None and not extra:
        typer.echo(f"fabric {name}: not up", err=True)
        raise typer.Exit(1)
    if as_json:
        out = d.to_dict() if d is not None else {}
        typer.echo(json.dumps({**out, "missing": missing, "leftovers": extra}, indent=2))
    elif d is not None:
        Console().print(_table(d))
        typer.echo(_ports_line(d))
    if d is None or missing or extra:
        typer.echo(
            f"fabric {name}: incomplete (missing {missing}, leftovers {extra}); run `netsim fabric down "
            f"--name {name}`",
            err=True,
        )
        raise typer.Exit(1)
