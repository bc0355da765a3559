"""``inspect`` and ``verify``: what a checkpoint holds, and whether every stored byte is intact."""

from __future__ import annotations

from typing import Annotated, Any, NoReturn

import typer
from rich.table import Table

from integrations.cli_style import CheckFailed, plain_text, print_error

from ..errors import ChecksumMismatchError, CorruptCheckpointError
from ..loader import VerifyReport, find_damage
from ..metadata import METADATA_FILE, CheckpointMetadata, TensorEntry
from .manager import list_steps, print_steps
from .output import print_json, print_line, size_text, stdout_console
from .paths import manager_steps, open_checkpoint, open_storage
from .progress import ObservedStorage, byte_progress

PathArg = Annotated[str, typer.Argument(help="checkpoint directory or URL (s3://bucket/prefix, ...)", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")]


def chunking(entry: TensorEntry) -> str:
    """How a tensor is stored: ``whole``, ``N along dim D``, or ``N boxes (dims ...)``, and in how many files."""
    n = len(entry.chunks)
    files = len({c.location.file for c in entry.chunks})
    if n == 1 and entry.chunks[0].box.lengths == entry.shape:
        return "whole"
    dims = sorted({d for c in entry.chunks for d, (got, full) in enumerate(zip(c.box.lengths, entry.shape))
                   if got != full})
    split = f"along dim {dims[0]}" if len(dims) == 1 else f"boxes (dims {dims})"
    return f"{n} {split} in {files} file(s)"


def tensor_report(entry: TensorEntry) -> dict[str, Any]:
    return {
        "name": entry.fqn, "dtype": entry.dtype, "shape": list(entry.shape),
        "bytes": sum(c.location.length for c in entry.chunks), "chunks": len(entry.chunks),
        "chunking": chunking(entry),
        "boxes": [{"offsets": list(c.box.offsets), "lengths": list(c.box.lengths), "file": c.location.file,
                   "byte_offset": c.location.offset, "byte_length": c.location.length} for c in entry.chunks],
    }


def checkpoint_report(path: str, meta: CheckpointMetadata) -> dict[str, Any]:
    w = meta.writer
    return {
        "path": path, "kind": "checkpoint", "version": meta.version,
        "writer": {"library": w.library, "library_version": w.library_version},
        "framework": w.framework, "world_size": w.world_size, "layout": w.layout,
        "tensors": [tensor_report(t) for t in meta.tensors],
        "values": [v.fqn for v in meta.values],
        "total_bytes": meta.total_bytes, "data_files": meta.data_files,
    }


def inspect(path: PathArg, as_json: JsonOpt = False) -> None:
    """Show what a checkpoint holds (or the steps of a CheckpointManager root).

    Tensors with dtype, shape, size and chunking; plain values; writer, framework, saved layout and
    format version. --json adds each chunk's box and byte location."""
    storage = open_storage(path)
    complete, incomplete = manager_steps(storage)
    if (complete or incomplete) and not storage.exists(METADATA_FILE):
        steps = list_steps(storage)
        if as_json:
            print_json({"path": path, "kind": "manager", "steps": steps})
        else:
            print_steps(path, steps)
        return
    _, meta = open_checkpoint(path)
    report = checkpoint_report(path, meta)
    if as_json:
        print_json(report)
        return
    w = meta.writer
    layout = {k: v for k, v in w.layout.items() if k != "bytes_per_rank"}
    print_line(f"{path}: format v{meta.version}, written by {w.library} {w.library_version}, "
               f"framework {w.framework or 'none'}, {w.world_size} rank(s)")
    if layout:
        print_line(f"layout: {layout}")
    if "bytes_per_rank" in w.layout:
        print_line(f"bytes per rank: {w.layout['bytes_per_rank']}")
    table = Table()
    for col in ("tensor", "dtype", "shape", "size", "chunking"):
        table.add_column(col, justify="right" if col == "size" else "left")
    for t in report["tensors"]:
        table.add_row(plain_text(t["name"]), t["dtype"], str(t["shape"]), size_text(t["bytes"]), t["chunking"])
    stdout_console().print(table)
    if meta.values:
        print_line("plain values: ", ", ".join(v.fqn for v in meta.values))
    print_line(f"{len(meta.tensors)} tensors, {len(meta.values)} plain values, {size_text(meta.total_bytes)} "
               f"in {len(meta.data_files)} data file(s)")


def verify(path: PathArg, as_json: JsonOpt = False) -> None:
    """Check every stored byte against its checksum; exit 1 if anything is damaged.

    Names each damaged file, tensor and byte range (the metadata's own checksum included); with
    --json the report goes to stdout either way."""
    try:
        storage, meta = open_checkpoint(path)
    except ChecksumMismatchError as exc:  # the metadata itself is damaged: a failed check, not bad input
        _report_damage(path, None, [exc], as_json)
    with byte_progress("verify", meta.total_bytes) as advance:
        report, problems = find_damage(ObservedStorage(storage, advance))
    if problems:
        _report_damage(path, report, problems, as_json)
    doc = {"path": path, "ok": True, "tensors": report.tensors, "chunks": report.chunks,
           "bytes": report.bytes_verified, "data_files": report.data_files, "note": report.note, "problems": []}
    if as_json:
        print_json(doc)
        return
    print_line(f"OK {report.tensors} tensors, {report.chunks} chunks, {size_text(report.bytes_verified)} verified "
               f"in {len(report.data_files)} data file(s)")
    if report.note:
        print_line(f"note: {report.note}")


def _report_damage(path: str, report: VerifyReport | None, problems: list[CorruptCheckpointError],
                   as_json: bool) -> NoReturn:
    """Print the damage (stdout), one error line (stderr), and exit 1."""
    doc = {"path": path, "ok": False,
           "tensors": report.tensors if report else None, "chunks": report.chunks if report else None,
           "bytes": report.bytes_verified if report else None,
           "problems": [{"type": type(p).__name__, "message": str(p)} for p in problems]}
    if as_json:
        print_json(doc)
    else:
        for p in problems:
            print_line(f"DAMAGED {type(p).__name__}: {p}")
    kinds = sorted({type(p).__name__ for p in problems})
    print_error(f"{'/'.join(kinds)}: {path}: {len(problems)} damaged chunk(s) or file(s)")
    raise CheckFailed()
