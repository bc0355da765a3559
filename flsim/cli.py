"""``flsim`` command line: run instrumented Flower FedAvg over emulated links, report, reproduce."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from flsim.errors import FlsimError
from flsim.links import BUILTIN, load_profile
from flsim.metrics import write_textfile
from flsim.phases import PHASES
from flsim.results import write_results

app = typer.Typer(help="Federated-learning round instrumentation: Flower FedAvg (SuperLink + SuperNodes as "
                       "processes, one network namespace and emulated link per client), every phase of every "
                       "round recorded.", no_args_is_help=True, pretty_exceptions_enable=False)
console = Console()

Profile = Annotated[str, typer.Option(help=f"Link profile: {', '.join(BUILTIN)}, 'loopback' (no namespaces, no "
                                           "shaping) or a JSON/TOML profile file.")]
Poll = Annotated[float | None, typer.Option(help="Poll interval in s for the server and the SuperNodes "
                                                 "(default: Flower's 3 s; polling is reported as its own phase).")]


def _run(out: Path, clients: int, rounds: int, profile: str, samples: int, poll: float | None, width: float,
         timeout: float, mode: str = "deployment") -> dict:
    from flsim.runner import RunConfig, run_deployment, run_simulation_mode

    if mode not in ("deployment", "simulation"):
        raise FlsimError(f"--mode must be 'deployment' or 'simulation', found {mode!r}")
    prof = None if profile == "loopback" else load_profile(profile)
    cfg = RunConfig(clients=clients, rounds=rounds, samples=samples, poll_s=poll, width=width, timeout_s=timeout)
    outcome = (run_deployment if mode == "deployment" else run_simulation_mode)(out, cfg, prof)
    extra = {"mode": mode, "links": "emulated" if mode == "deployment" and prof else (
             "modelled" if prof else "loopback"), "profile": prof.to_dict() if prof else {"name": "loopback"},
             "config": cfg.__dict__, "wall_seconds": outcome.wall_seconds, "clock_offsets": outcome.offsets}
    summary = write_results(out, outcome.timelines, outcome.events, extra)
    write_textfile(outcome.timelines, extra["profile"]["name"], out / "metrics.prom")
    return summary


def _table(summary: dict) -> Table:
    table = Table(title=f"profile {summary['profile']['name']}: mean seconds per client")
    table.add_column("phase")
    for r in summary["rounds"]:
        table.add_column(f"round {r['round']}", justify="right")
    for p in PHASES:
        table.add_row(p, *(f"{r['mean_phase_seconds'][p]:.3f}" for r in summary["rounds"]))
    table.add_row("[b]round", *(f"[b]{r['seconds']:.3f}" for r in summary["rounds"]))
    return table


@app.command()
def run(
    out: Annotated[Path, typer.Option(help="Output directory (phases.csv, rounds.csv, summary.json, events).")],
    clients: Annotated[int, typer.Option(help="Number of SuperNodes (1-200).")] = 2,
    rounds: Annotated[int, typer.Option(help="FedAvg rounds.")] = 2,
    profile: Profile = "ethernet",
    samples: Annotated[int, typer.Option(help="Synthetic CIFAR-10-shaped samples per client.")] = 32,
    width: Annotated[float, typer.Option(help="Channel-width factor of the CNN (1.0 = ~2.9 MB model).")] = 1.0,
    poll: Poll = None,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 900.0,
    mode: Annotated[str, typer.Option(help="deployment: SuperLink + SuperNodes as processes, links emulated in "
                                           "namespaces (root); simulation: Flower's simulation runtime in one "
                                           "process, links modelled from the profile (no root).")] = "deployment",
    as_json: Annotated[bool, typer.Option("--json", help="Print summary.json to stdout.")] = False,
) -> None:
    """Run FedAvg with Flower and record every phase of every round."""
    if not 1 <= clients <= 200:
        raise FlsimError(f"--clients must be in 1..200, found {clients}")
    summary = _run(out, clients, rounds, profile, samples, poll, width, timeout, mode)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        console.print(_table(summary))
        typer.echo(f"results in {out}")


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(help="One or more `flsim run` output directories; several "
                                                         "directories (e.g. one per profile) add a what-if plot.")],
    out: Annotated[Path | None, typer.Option(help="Where to write PNGs (default: the first directory).")] = None,
) -> None:
    """Render per-round stacked phases, a timeline, straggler attribution and a what-if comparison (PNG)."""
    from flsim.report import render

    for path in render(run_dirs, out or run_dirs[0]):
        typer.echo(str(path))


@app.command()
def profiles(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the built-in link profiles."""
    data = {k: v.to_dict() for k, v in BUILTIN.items()}
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    table = Table(title="built-in link profiles (rates at the IP layer)")
    for col in ("name", "down Mbit/s", "up Mbit/s", "down delay ms", "up delay ms", "jitter ms", "loss %"):
        table.add_column(col)
    for p in BUILTIN.values():
        table.add_row(p.name, *(f"{v:g}" for v in (p.down_mbit, p.up_mbit, p.down_delay_ms, p.up_delay_ms,
                                                    p.jitter_ms, p.loss_pct)))
    console.print(table)


@app.command()
def reproduce(
    out: Annotated[Path, typer.Option(help="Output directory: one run directory per profile plus reproduce.json.")],
    clients: Annotated[int, typer.Option(help="SuperNodes per run.")] = 2,
    rounds: Annotated[int, typer.Option(help="Rounds per profile.")] = 2,
    samples: Annotated[int | None, typer.Option(help="Training samples per client; default: calibrated by a "
                                                     "one-round 5G pass (see docs/flsim.md).")] = None,
    poll: Poll = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
) -> None:
    """Hayek et al.'s Ethernet/WiFi/5G comparison: 5G uplink share of a round, 5G/Ethernet and 5G/WiFi ratios."""
    from flsim.reproduce import calibrate_samples, compare, link_only, rows
    from netsim.fabric.namespaces import missing_capabilities

    calibration = None
    if samples is None:
        pass1 = _run(out / "calibration", clients, 1, "5g-sa", 16, poll, 1.0, 900.0)
        samples = calibrate_samples(pass1, 16)
        calibration = {"pass1_samples": 16, "samples": samples}
    summaries = {}
    for name in ("ethernet", "wifi", "5g-sa"):
        console.print(f"running {name} ({clients} clients, {rounds} rounds, {samples} samples)", style="dim")
        summaries[name] = _run(out / name, clients, rounds, name, samples, poll, 1.0, 1800.0)
    table = compare(summaries)
    table.update(calibration=calibration, clients=clients, rounds=rounds, samples=samples)
    if missing_capabilities() is None:
        from flsim.model import SqueezeNetCifar, parameter_bytes

        table["link_only"] = link_only(["ethernet", "wifi", "5g-sa"], parameter_bytes(SqueezeNetCifar()))
    (out / "reproduce.json").write_text(json.dumps(table, indent=2))
    from flsim.report import render

    render([out / n for n in ("ethernet", "wifi", "5g-sa")], out)
    if as_json:
        typer.echo(json.dumps(table, indent=2))
        return
    t = Table(title="Hayek et al. (arXiv 2504.04678) vs this emulation")
    for col in ("figure", "paper", "measured (transport uplink)", "measured (app-level uplink)"):
        t.add_column(col)
    for row in rows(table):
        t.add_row(*row)
    console.print(t)
    if "link_only" in table:
        lo = table["link_only"]
        console.print(f"link only (TCP probe, {lo['bytes']} bytes up): 5G/Ethernet {lo['5g_over_ethernet']:.1f}x, "
                      f"5G/WiFi {lo['5g_over_wifi']:.1f}x")


def main() -> None:
    """Console-script entry point; flsim errors print one line and exit with status 2."""
    logging.basicConfig(level=logging.WARNING)
    try:
        app()
    except FlsimError as err:
        console.print(f"[red]flsim: {err}[/red]")
        raise SystemExit(2) from None
