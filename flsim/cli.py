"""``flsim`` command line: run instrumented Flower FedAvg over emulated links, report, reproduce."""

from __future__ import annotations

import json
import logging
import time
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from flsim.errors import FlsimError, RecordError, RunError
from flsim.links import BUILTIN, LinkProfile, load_profile
from flsim.metrics import write_textfile
from flsim.phases import PHASES
from flsim.results import write_results
from flsim.runner import MAX_CLIENTS, RunConfig, check_deployment, resolve_out
from integrations.cli_style import make_app, run_app, stderr_console, working

app = make_app("flsim", "Federated-learning round instrumentation: Flower FedAvg (SuperLink + SuperNodes "
               "as processes, one network namespace and emulated link per client), every phase of every "
               "round recorded.")
console = Console(highlight=False)  # reports (tables) on stdout; --json prints only JSON there
progress = stderr_console()  # progress and notices


class Mode(str, Enum):
    """Where a run's clients live: processes behind emulated links, or Flower's simulation runtime."""

    deployment = "deployment"
    simulation = "simulation"


class Packing(str, Enum):
    """How messages carry the model (:data:`flsim.model.PACKINGS`; kept here so --help needs no torch)."""

    tensors = "tensors"
    flat = "flat"


Profile = Annotated[str, typer.Option(
    help=f"Link profile: {', '.join(BUILTIN)}, 'loopback' (no namespaces, no shaping) or a JSON/TOML "
         "profile file.")]
PackingOpt = Annotated[Packing, typer.Option(
    help="How messages carry the model: 'tensors' (one Flower object, i.e. one HTTP request, per tensor) "
         "or 'flat' (one float32 vector).")]
Poll = Annotated[float | None, typer.Option(
    help="Poll interval in s (> 0) for the server and the SuperNodes (default: Flower's 3 s; polling is "
         "reported as its own phase).")]


def _profile(profile: str) -> LinkProfile | None:
    return None if profile == "loopback" else load_profile(profile)


def _check_can_run(mode: Mode, cfg: RunConfig, prof: LinkProfile | None) -> None:
    """Refuse a run that cannot start here, before anything is built or started."""
    if mode is Mode.deployment:
        check_deployment(prof)
    elif cfg.clock_skews_s:
        raise RunError("--clock-skews emulates separate hosts, which needs --mode deployment")


def _run(out: Path, cfg: RunConfig, prof: LinkProfile | None, mode: Mode = Mode.deployment,
         parquet: bool = False) -> dict:
    from flsim.runner import run_deployment, run_simulation_mode

    runner = run_deployment if mode is Mode.deployment else run_simulation_mode
    name = prof.name if prof else "loopback"
    with working(f"{mode.value} run: {cfg.clients} clients, {cfg.rounds} rounds, profile {name} -> {out}"):
        outcome = runner(out, cfg, prof)
    extra = {"mode": mode.value, "links": "emulated" if mode is Mode.deployment and prof else (
             "modelled" if prof else "loopback"), "profile": prof.to_dict() if prof else {"name": "loopback"},
             "config": cfg.__dict__, "wall_seconds": outcome.wall_seconds, "clock_offsets": outcome.offsets}
    summary = write_results(out, outcome.timelines, outcome.events, extra, parquet=parquet)
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
    out: Annotated[Path, typer.Option(
        help="Output directory (phases.csv, rounds.csv, summary.json, events).")],
    clients: Annotated[int, typer.Option(help=f"Number of SuperNodes (1-{MAX_CLIENTS}).")] = 2,
    rounds: Annotated[int, typer.Option(help="FedAvg rounds (>= 1).")] = 2,
    profile: Profile = "ethernet",
    samples: Annotated[int, typer.Option(help="Synthetic CIFAR-10-shaped samples per client.")] = 32,
    width: Annotated[float, typer.Option(
        help="Channel-width factor of the CNN (> 0; 1.0 = ~2.9 MB model).")] = 1.0,
    epochs: Annotated[int, typer.Option(help="Local epochs per round.")] = 1,
    threads: Annotated[int, typer.Option(help="Torch threads per client (1: one core per client).")] = 1,
    clock_skews: Annotated[str, typer.Option(
        help="Comma-separated clock skews in s, one per client: run each SuperNode as an emulated host whose "
             "clock is off by it, to exercise clock-offset estimation.")] = "",
    poll: Poll = None,
    packing: PackingOpt = Packing.tensors,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds.")] = 900.0,
    mode: Annotated[Mode, typer.Option(
        help="deployment: SuperLink + SuperNodes as processes, links emulated in namespaces (root); "
             "simulation: Flower's simulation runtime in one process, links modelled from the profile "
             "(no root).")] = Mode.deployment,
    parquet: Annotated[bool, typer.Option(
        help="Also write phases.parquet and rounds.parquet (needs pyarrow).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print summary.json to stdout.")] = False,
) -> None:
    """Run FedAvg with Flower and record every phase of every round."""
    try:
        skews = tuple(float(x) for x in clock_skews.split(",")) if clock_skews.strip() else ()
    except ValueError:
        raise FlsimError(f"--clock-skews must be comma-separated seconds, found {clock_skews!r}") from None
    cfg = RunConfig(clients=clients, rounds=rounds, samples=samples, epochs=epochs, threads=threads,
                    poll_s=poll, width=width, packing=packing.value, timeout_s=timeout, clock_skews_s=skews)
    prof = _profile(profile)
    out = resolve_out(out)
    _check_can_run(mode, cfg, prof)
    summary = _run(out, cfg, prof, mode, parquet)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
    else:
        console.print(_table(summary))
        typer.echo(f"results in {out}")


def _run_dir(path: Path, finished: bool) -> Path:
    """``path`` if it is a ``flsim run`` directory (``finished``: with its results written)."""
    if not path.is_dir():
        raise RecordError(f"{path}: no such directory (expected an `flsim run` output directory)")
    if (path / "summary.json").is_file() and (path / "phases.csv").is_file():
        return path
    if not finished and (path / "events").is_dir():  # a run in progress: its metrics appear when it ends
        return path
    raise RecordError(f"{path}: not an `flsim run` output directory (no summary.json and phases.csv"
                      f"{'' if finished else ', no events/'})")


@app.command()
def report(
    run_dirs: Annotated[list[Path], typer.Argument(
        help="One or more `flsim run` output directories; several directories (e.g. one per profile) add a "
             "what-if plot.")],
    out: Annotated[Path | None, typer.Option(
        help="Where to write PNGs and report.html (default: the first directory).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the written files as JSON.")] = False,
) -> None:
    """Render per-round stacked phases, a timeline, stragglers and a what-if chart (PNG + report.html)."""
    from flsim.report import render

    run_dirs = [_run_dir(d, finished=True) for d in run_dirs]
    target = out or run_dirs[0]
    if target.exists() and not target.is_dir():
        raise RecordError(f"--out {target}: exists and is not a directory")
    with working(f"rendering the report of {len(run_dirs)} run(s) into {target}"):
        written = render(run_dirs, target)
    if as_json:
        typer.echo(json.dumps({"files": [str(p) for p in written]}, indent=2))
        return
    for path in written:
        typer.echo(str(path))


@app.command()
def metrics(
    run_dirs: Annotated[list[Path], typer.Argument(
        help="`flsim run` output directories, finished or running; re-read at every scrape, so runs that "
             "finish later are picked up.")],
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0: any free port).", min=0, max=65535)] = 9464,
) -> None:
    """Serve the runs' round and phase metrics at http://HOST:PORT/metrics for Prometheus to scrape."""
    from flsim.metrics import serve

    run_dirs = [_run_dir(d, finished=False) for d in run_dirs]
    try:
        server, _ = serve(run_dirs, host, port)
    except OSError as err:
        raise FlsimError(f"cannot listen on {host}:{port}: {err}") from None
    progress.print(f"serving {len(run_dirs)} run directories at http://{host}:{server.server_port}/metrics "
                   "(Ctrl-C stops)")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        server.shutdown()


@app.command()
def profiles(
    as_json: Annotated[bool, typer.Option("--json", help="Print the profiles as JSON.")] = False,
) -> None:
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
    out: Annotated[Path, typer.Option(
        help="Output directory: one run directory per profile plus reproduce.json.")],
    clients: Annotated[int, typer.Option(help="SuperNodes per run.")] = 2,
    rounds: Annotated[int, typer.Option(help="Rounds per profile.")] = 2,
    samples: Annotated[int, typer.Option(help="Training samples per client.")] = 256,
    epochs: Annotated[int | None, typer.Option(
        help="Local epochs per round; default: calibrated to the paper's 5G uplink share by the first pass "
             "(see docs/flsim.md).")] = None,
    calibrate_links: Annotated[bool, typer.Option(
        help="Fit the WiFi and 5G uplink rates to the paper's ratios in the first pass; off: the built-in "
             "profiles.")] = True,
    packing: PackingOpt = Packing.flat,
    poll: Poll = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the comparison as JSON.")] = False,
) -> None:
    """Hayek et al.'s Ethernet/WiFi/5G comparison: 5G uplink share of a round, 5G/Ethernet, 5G/WiFi ratios."""
    from flsim.reproduce import (
        PASS1_EPOCHS,
        PROFILES,
        calibrate_epochs,
        calibrate_uplinks,
        compare,
        link_only,
        rows,
        uplink_stats,
    )
    from netsim.fabric.namespaces import missing_capabilities

    profs = {n: BUILTIN[n] for n in PROFILES}
    final = RunConfig(clients=clients, rounds=rounds, samples=samples, epochs=1 if epochs is None else epochs,
                      poll_s=poll, packing=packing.value, timeout_s=1800.0)  # validates before anything runs
    out = resolve_out(out)
    check_deployment(profs[PROFILES[0]])
    calibration: dict = {}
    pass1 = {}
    if epochs is None or calibrate_links:
        for name in PROFILES:
            progress.print(f"calibration pass: {name} ({PASS1_EPOCHS[name]} epochs)", style="dim")
            first = RunConfig(clients=clients, rounds=2, samples=samples, epochs=PASS1_EPOCHS[name],
                              poll_s=poll, packing=packing.value, timeout_s=900.0)
            pass1[name] = _run(out / "calibration" / name, first, profs[name])
    if epochs is None:  # 5G's uplink to come: the calibrated one, estimated from pass 1's Ethernet
        uplink_5g = (calibrate_uplinks(pass1, profs)[1]["target_uplink_s"]["5g-sa"] if calibrate_links
                     else None)
        epochs, calibration["compute"] = calibrate_epochs(pass1, PASS1_EPOCHS, uplink_s=uplink_5g)
        calibration["compute"]["epochs"] = epochs
    final = RunConfig(clients=clients, rounds=rounds, samples=samples, epochs=epochs, poll_s=poll,
                      packing=packing.value, timeout_s=1800.0)
    summaries = {}
    for name in PROFILES:  # Ethernet first: its measured uplink is the reference for the other links
        if name != "ethernet" and calibrate_links and "links" not in calibration:
            reference = uplink_stats(summaries["ethernet"])["uplink_transport_s"]
            profs, calibration["links"] = calibrate_uplinks(pass1, profs, ethernet_uplink_s=reference)
        p = profs[name]
        progress.print(f"running {name} (up {p.up_mbit:g} Mbit/s; {clients} clients, {rounds} rounds, "
                      f"{samples} samples x {epochs} epochs)", style="dim")
        summaries[name] = _run(out / name, final, p)
    table = compare(summaries)
    table.update(calibration=calibration, clients=clients, rounds=rounds, samples=samples, epochs=epochs,
                 packing=packing.value, link_profiles={n: p.to_dict() for n, p in profs.items()})
    if missing_capabilities() is None:
        from flsim.model import SqueezeNetCifar, parameter_bytes

        table["link_only"] = link_only(profs, parameter_bytes(SqueezeNetCifar()))
    (out / "reproduce.json").write_text(json.dumps(table, indent=2))
    from flsim.report import render

    render([out / n for n in PROFILES], out)
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
        console.print(f"link only (TCP probe, {lo['bytes']} bytes up): "
                      f"5G/Ethernet {lo['5g_over_ethernet']:.1f}x, 5G/WiFi {lo['5g_over_wifi']:.1f}x")


def main(args: list[str] | None = None) -> None:
    """Console-script entry point (``args``: instead of ``sys.argv[1:]``); the shared CLI style of
    :mod:`integrations.cli_style`: errors on stderr, exit codes 0/1/2/3."""
    logging.basicConfig(level=logging.WARNING)
    run_app(app, "flsim", expected=(FlsimError,), args=args)
