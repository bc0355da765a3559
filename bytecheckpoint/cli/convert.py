"""``export`` and ``import``: to and from torch.save files, safetensors (Hugging Face layout) and DCP.

The conversions are bytecheckpoint.interop's ``export_checkpoint`` and ``import_checkpoint`` (which
check the destination before writing); these commands check the paths and the rename map, show
progress and report.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from integrations.cli_style import BadInput

from ..interop import ConversionReport, ExportFormat, ImportFormat, export_checkpoint, import_checkpoint
from .output import print_json, print_line, size_text
from .paths import local_path, open_checkpoint, open_storage
from .progress import byte_progress

RenameOpt = Annotated[Path | None, typer.Option(
    "--rename", help="JSON object of renames: an exact key name, or a prefix ending in '.' ('' matches every key), to its replacement.", show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")]


def read_rename_map(path: Path | None) -> dict[str, str] | None:
    """The ``--rename`` file: a JSON object of strings to strings; BadInput naming what is wrong."""
    if path is None:
        return None
    if not path.is_file():
        raise BadInput(f"--rename {path}: no such file")
    try:
        doc = json.loads(path.read_text())
    except ValueError as exc:
        raise BadInput(f"--rename {path}: not valid JSON ({exc})") from None
    if not isinstance(doc, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in doc.items()):
        raise BadInput(f"--rename {path}: expected a JSON object mapping names (strings) to new names (strings)")
    return doc


def export(
    src: Annotated[str, typer.Argument(help="bytecheckpoint checkpoint to export", show_default=False)],
    dst: Annotated[str, typer.Argument(help="file or directory to write", show_default=False)],
    to: Annotated[ExportFormat, typer.Option("--to", help="Target format (safetensors: sharded files plus "
                                             "model.safetensors.index.json, as Hugging Face lays them out).",
                                             show_default=False)],
    rename: RenameOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Write a checkpoint as a torch.save file, safetensors files (Hugging Face layout) or DCP."""
    mapping = read_rename_map(rename)
    _, meta = open_checkpoint(src)
    with byte_progress(f"export to {to.value}", meta.total_bytes) as advance:
        result = export_checkpoint(src, dst, to=to.value, rename=mapping, progress=advance)
    _report("export", result, as_json)


def import_(
    src: Annotated[str, typer.Argument(help="file or directory to import", show_default=False)],
    dst: Annotated[str, typer.Argument(help="new bytecheckpoint checkpoint to write", show_default=False)],
    from_: Annotated[ImportFormat, typer.Option("--from", help="Source format (hf-dir: a Hugging Face model "
                                                "directory with config and sharded safetensors).",
                                                show_default=False)],
    rename: RenameOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Read a torch.save file, safetensors, a Hugging Face directory or DCP into a new checkpoint."""
    mapping = read_rename_map(rename)
    local = local_path(src)
    if local is not None and not local.exists():
        raise BadInput(f"{src}: no such file or directory")
    if local is None:
        open_storage(src)  # a URL: its scheme must be known
    with byte_progress(f"import from {from_.value}", None) as advance:
        result = import_checkpoint(src, dst, from_=from_.value, rename=mapping, progress=advance)
    _report("import", result, as_json)


def _report(verb: str, report: ConversionReport, as_json: bool) -> None:
    if as_json:
        print_json({"command": verb, **report.to_dict()})
        return
    print_line(f"{verb}ed {report.src} -> {report.dst} ({report.format}): {report.tensors} tensors, "
               f"{report.values} plain values, {size_text(report.bytes)} in {len(report.files)} file(s), "
               f"{report.seconds:.2f}s")
