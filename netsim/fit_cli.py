"""``netsim fit-transport``: fit a transport model to ``netsim measure --json`` output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from integrations.cli_style import CheckFailed, stderr_console
from netsim.measure_schema import BACKENDS, load_report
from netsim.transport_fit import FitError, FitResult, fit_transport
from netsim.transport_model import TCP_DEFAULT


def _table(result: FitResult) -> Table:
    table = Table("collective", "policy", "k", "ranks", "rank hosts", "size (B)", "measured (ms)", "default (ms)",
                  "err", "fitted (ms)", "err", "fitted")
    for c in result.rows:
        r = c.scenario.row
        hosts = ",".join(map(str, r.fabric.rank_hosts)) if r.fabric else "-"
        table.add_row(r.collective, r.policy or "-", "-" if r.splits is None else str(r.splits),
                      str(r.ranks), hosts, str(r.size_bytes), f"{c.measured_s * 1e3:.4g}", f"{c.default_s * 1e3:.4g}",
                      f"{c.default_error:+.1%}", f"{c.fitted_s * 1e3:.4g}", f"{c.fitted_error:+.1%}",
                      "yes" if c.used_in_fit else "no (hashed)")
    return table


def fit_transport_cmd(
    measurements: Annotated[Path, typer.Argument(help="JSON written by 'netsim measure --json' on a fabric.")],
    out: Annotated[Path, typer.Option(help="Where to write the fitted model (JSON).")],
    backend: Annotated[str, typer.Option(help=f"Fit the rows of this backend ({', '.join(BACKENDS)}).")] =
    "split-tcp",
    hop_latency_s: Annotated[float, typer.Option(
        help="Per-hop latency, held fixed (not identifiable from CCTs; measure it with ping).")] =
    TCP_DEFAULT.hop_latency_s,
    min_size: Annotated[int, typer.Option(
        help="Use only rows of at least this many bytes (small messages are dominated by transport stalls).")] = 1,
    max_error: Annotated[float | None, typer.Option(
        help="Exit 1 if a fitted row's CCT is off by more than this fraction (e.g. 0.10).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the model and every row's comparison as JSON.")]
    = False,
    plot_dir: Annotated[Path | None, typer.Option(
        help="Also write measured_vs_simulated.png and measured_busbw.png into this folder.")] = None,
) -> None:
    """Fit header, rate, sharing and start-up parameters so that 'netsim simulate' predicts 'netsim measure'.

    Rows whose subflows were pinned to spines are fitted; rows left to ECMP hashing are predicted with
    netsim's hash (not the kernel's) and shown, but not fitted. Use the model with
    'netsim simulate --transport-model FILE'.
    """
    if backend not in BACKENDS:
        raise FitError(f"--backend must be one of {', '.join(BACKENDS)}, found {backend!r}")
    if not hop_latency_s >= 0:
        raise FitError(f"--hop-latency-s must be >= 0, found {hop_latency_s!r}")
    if max_error is not None and not max_error > 0:
        raise FitError(f"--max-error must be > 0, found {max_error!r}")
    report = load_report(measurements)
    rows = [r for r in report.rows if r.backend == backend and r.fabric is not None and r.size_bytes >= min_size]
    if not rows:
        raise FitError(f"{measurements}: no {backend} rows of >= {min_size} bytes measured on a fabric (of "
                       f"{len(report.rows)} rows); run 'netsim measure --fabric NAME --json'")
    if not out.parent.is_dir():
        raise FitError(f"--out {out}: folder {out.parent} does not exist")
    if plot_dir is not None and plot_dir.exists() and not plot_dir.is_dir():
        raise FitError(f"--plot-dir {plot_dir}: exists and is not a folder")
    stderr_console().print(f"fitting {len(rows)} {backend} rows from {measurements} ...")
    result = fit_transport(rows, hop_latency_s, source=f"fitted to {len(rows)} {backend} rows of "
                           f"{measurements.name}")
    result.model.write(out)
    if plot_dir is not None:
        from netsim.plots import plot_measured_busbw, plot_measured_vs_simulated

        plot_dir.mkdir(parents=True, exist_ok=True)
        for written in (plot_measured_vs_simulated(result, plot_dir / "measured_vs_simulated.png"),
                        plot_measured_busbw(result, plot_dir / "measured_busbw.png")):
            stderr_console().print(f"wrote {written}")
    if as_json:
        typer.echo(json.dumps(result.to_dict(), indent=2))
    else:
        Console(width=max(Console().width, 150)).print(_table(result))
        typer.echo(f"model written to {out}: " + ", ".join(
            f"{k}={v:.4g}" for k, v in result.model.to_dict().items() if isinstance(v, float)))
        typer.echo(f"max |error| on fitted rows: default {result.max_error(fitted=False):.1%}, "
                   f"fitted {result.max_error():.1%}")
    if max_error is not None and result.max_error() > max_error:
        raise CheckFailed(f"a fitted row is off by {result.max_error():.1%} > --max-error {max_error:.1%}")
