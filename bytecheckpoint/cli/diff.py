"""``diff``: two checkpoints, tensor by tensor and value by value."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table

from integrations.cli_style import CheckFailed, plain_text

from ..compare import CheckpointDiff, compare_checkpoints
from .output import print_json, print_line, stdout_console
from .paths import open_checkpoint
from .progress import byte_progress


def diff(
    a: Annotated[str, typer.Argument(help="first checkpoint", show_default=False)],
    b: Annotated[str, typer.Argument(help="second checkpoint (the reference for --rtol)", show_default=False)],
    rtol: Annotated[float, typer.Option("--rtol", min=0.0, help="Relative tolerance: |a-b| <= atol + rtol*|b|.")] = 0.0,
    atol: Annotated[float, typer.Option("--atol", min=0.0, help="Absolute tolerance.")] = 0.0,
    show_all: Annotated[bool, typer.Option("--all", help="List equal tensors and values too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")] = False,
) -> None:
    """Compare two checkpoints tensor by tensor; exit 1 if they differ.

    Keys on one side only, shapes, dtypes, max abs/rel difference per tensor, plain values. The
    default tolerances (0) compare bit for bit."""
    storage_a, meta_a = open_checkpoint(a)
    storage_b, meta_b = open_checkpoint(b)
    with byte_progress("diff", meta_a.total_bytes + meta_b.total_bytes) as advance:
        result = compare_checkpoints(storage_a, storage_b, rtol, atol, progress=advance)
    if as_json:
        print_json({**result.to_dict(), "a": a, "b": b})
    else:
        _print(result, show_all)
    if not result.same:
        raise CheckFailed()


def _print(result: CheckpointDiff, show_all: bool) -> None:
    table = Table()
    for col in ("tensor", "status", "shape", "dtype", "max abs", "max rel", "mismatched"):
        table.add_column(col, justify="right" if col.startswith(("max", "mis")) else "left")
    shown = [t for t in result.tensors if show_all or not t.same]
    for t in shown:
        shape = str(t.shape_a or t.shape_b) if t.shape_a == t.shape_b or None in (t.shape_a, t.shape_b) \
            else f"{t.shape_a} vs {t.shape_b}"
        dtype = (t.dtype_a or t.dtype_b) if t.dtype_a == t.dtype_b or None in (t.dtype_a, t.dtype_b) \
            else f"{t.dtype_a} vs {t.dtype_b}"
        table.add_row(plain_text(t.name), t.status, shape, dtype, _num(t.max_abs), _num(t.max_rel),
                      "" if t.mismatched is None else str(t.mismatched))
    if shown:
        stdout_console().print(table)
    for v in result.values:
        if show_all or v.status != "equal":
            print_line(f"value {v.name}: {v.status}" + ("" if v.status == "equal" else
                                                         f" (a: {_short(v.a)}, b: {_short(v.b)})"))
    differing = sum(not t.same for t in result.tensors) + sum(v.status != "equal" for v in result.values)
    print_line(f"{'same' if result.same else 'DIFFERENT'}: {len(result.tensors)} tensors, {len(result.values)} "
               f"values compared (rtol={result.rtol}, atol={result.atol}); {differing} differ")


def _num(x: float | None) -> str:
    return "" if x is None else f"{x:.3g}"


def _short(encoded: object) -> str:
    text = json.dumps(encoded)
    return text if len(text) <= 60 else text[:57] + "..."
