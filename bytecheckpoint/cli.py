"""The ``bytecheckpoint`` command line: inspect and verify checkpoints.

Failures (a CheckpointError or an OSError) print one ``error: <Type>: <message>`` on stderr and
exit 1, without a traceback. Names from the checkpoint are printed as plain text: no rich markup,
no control characters.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from .errors import CheckpointError
from .loader import read_metadata, verify_checkpoint
from .storage import resolve_storage

app = typer.Typer(help="Inspect and verify bytecheckpoint checkpoints.", no_args_is_help=True)
console = Console()

PathArg = Annotated[str, typer.Argument(help="checkpoint directory (or storage URL)")]
JsonOpt = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


@app.command()
def inspect(path: PathArg, as_json: JsonOpt = False) -> None:
    """List the tensors (dtype, global shape, chunks, bytes) and plain values of a checkpoint."""
    try:
        meta = read_metadata(resolve_storage(path))
    except (CheckpointError, OSError) as exc:
        _fail(exc)
    rows = [
        {"name": t.fqn, "dtype": t.dtype, "shape": list(t.shape), "chunks": len(t.chunks),
         "bytes": sum(c.location.length for c in t.chunks)}
        for t in meta.tensors
    ]
    summary = {"path": path, "version": meta.version, "writer": meta.to_dict()["writer"], "tensors": rows,
               "values": [v.fqn for v in meta.values], "total_bytes": meta.total_bytes,
               "data_files": meta.data_files}
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    table = Table(title=_plain(f"{path} (format v{meta.version}, written by {meta.writer.world_size} rank(s))"))
    for col in ("tensor", "dtype", "shape", "chunks", "MiB"):
        table.add_column(col, justify="left" if col == "tensor" else "right")
    for r in rows:
        table.add_row(_plain(r["name"]), r["dtype"], str(r["shape"]), str(r["chunks"]), f"{r['bytes'] / 2**20:.2f}")
    console.print(table)
    console.print(f"{len(rows)} tensors, {len(meta.values)} plain values, "
                  f"{meta.total_bytes / 2**20:.2f} MiB in {len(meta.data_files)} data file(s)")


@app.command()
def verify(path: PathArg, as_json: JsonOpt = False) -> None:
    """Check every stored byte against its checksum; exit 1 naming each damaged file and tensor."""
    try:
        report = verify_checkpoint(resolve_storage(path))
    except (CheckpointError, OSError) as exc:
        _fail(exc)
    if as_json:
        print(json.dumps({"ok": True, "tensors": report.tensors, "chunks": report.chunks,
                          "bytes": report.bytes_verified}))
    else:
        console.print(f"[green]OK[/] {report.tensors} tensors, {report.chunks} chunks, "
                      f"{report.bytes_verified / 2**20:.2f} MiB verified")


_UNPRINTABLE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]|[\ud800-\udfff]")


def _plain(text: str) -> Text:
    """``text`` as literal terminal text: control characters and lone surrogates escaped, no markup."""
    return Text(_UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], text))


def _fail(exc: BaseException) -> NoReturn:
    line = Text.assemble(("error", "red"), ": ", _plain(f"{type(exc).__name__}: {exc}"))
    Console(stderr=True, highlight=False, soft_wrap=True).print(line)
    raise typer.Exit(1)


if __name__ == "__main__":
    app()
