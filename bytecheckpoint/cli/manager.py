"""``ls`` and ``gc``: the steps under a CheckpointManager root, and removing what is garbage."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from integrations.cli_style import BadInput, plain_text

from ..errors import CheckpointError
from ..leases import Lease
from ..loader import read_metadata
from ..manager import LOCK_FILE, CheckpointManager
from ..metadata import METADATA_FILE
from ..storage import Storage
from .output import print_json, print_line, size_text, stdout_console
from .paths import open_storage

RootArg = Annotated[str, typer.Argument(help="CheckpointManager root (a directory or URL holding step_* folders)",
                                        show_default=False)]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the report as JSON on stdout.")]


def list_steps(storage: Storage) -> list[dict[str, Any]]:
    """Every step under a manager root: complete ones with their size and writer, incomplete ones
    with the claim that holds them (if any) and whether it is stale."""
    manager = CheckpointManager(storage)
    out: list[dict[str, Any]] = []
    for step in manager.steps():
        entry: dict[str, Any] = {"step": step, "complete": True}
        try:
            meta = read_metadata(manager.checkpoint(step))
            entry.update(bytes=meta.total_bytes, tensors=len(meta.tensors), world_size=meta.writer.world_size,
                         framework=meta.writer.framework)
        except (CheckpointError, OSError) as exc:  # listed, not fatal: the step's metadata is damaged
            entry["error"] = f"{type(exc).__name__}: {exc}"
        out.append(entry)
    for step in manager.incomplete_steps():
        claim = Lease.read(manager.checkpoint(step), LOCK_FILE)
        out.append({"step": step, "complete": False, "claim": claim.describe() if claim else None,
                    "claim_stale": claim.is_stale(manager.stale_lock_s) if claim else None})
    return sorted(out, key=lambda e: e["step"])


def print_steps(path: str, steps: list[dict[str, Any]]) -> None:
    table = Table(title=plain_text(f"{path}: {sum(s['complete'] for s in steps)} complete step(s)"))
    for col in ("step", "status", "size", "tensors", "ranks", "framework"):
        table.add_column(col, justify="right" if col in ("step", "size", "tensors", "ranks") else "left")
    for s in steps:
        if not s["complete"]:
            status = ("incomplete, no claim (being created, or left by an older version)" if s["claim"] is None
                      else f"incomplete, {'stale' if s['claim_stale'] else 'live'} claim: {s['claim']}")
            table.add_row(str(s["step"]), status, "", "", "", "")
        elif "error" in s:
            table.add_row(str(s["step"]), plain_text(f"complete, unreadable: {s['error']}"), "", "", "", "")
        else:
            table.add_row(str(s["step"]), "complete", size_text(s["bytes"]), str(s["tensors"]), str(s["world_size"]),
                          s["framework"] or "")
    stdout_console().print(table)


def _open_root(path: str) -> Storage:
    storage = open_storage(path)
    manager = CheckpointManager(storage)
    if not manager.steps() and not manager.incomplete_steps():
        hint = " (it is a single checkpoint: use 'bytecheckpoint inspect')" if storage.exists(METADATA_FILE) else ""
        raise BadInput(f"{path}: not a CheckpointManager root: no step_* folders{hint}")
    return storage


def ls(root: RootArg, as_json: JsonOpt = False) -> None:
    """List the steps under a CheckpointManager root, complete or not.

    Complete steps with size, tensors, ranks and framework; incomplete ones with the save claim
    holding them, live or stale."""
    steps = list_steps(_open_root(root))
    if as_json:
        print_json({"path": root, "kind": "manager", "steps": steps})
    else:
        print_steps(root, steps)


def gc(
    root: RootArg,
    keep_last: Annotated[int | None, typer.Option("--keep-last", min=1, help="Also delete complete steps "
                                                  "beyond the newest N (retention).")] = None,
    force: Annotated[bool, typer.Option("--force", help="Delete every incomplete step, even one with a live "
                                        "claim or none: only when no save of this run is running.")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Only report what would be deleted.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Delete abandoned incomplete steps and, with --keep-last, old complete steps.

    An incomplete step is abandoned when its save died (its claim is stale); steps being saved by a
    live process are left alone unless --force."""
    manager = CheckpointManager(_open_root(root), keep_last=keep_last)
    garbage = manager.collect_garbage(force=force, dry_run=dry_run)
    retired = manager.apply_retention(dry_run=dry_run)
    if as_json:
        print_json({"path": root, "dry_run": dry_run, "incomplete_removed": garbage, "retention_removed": retired})
        return
    verb = "would delete" if dry_run else "deleted"
    print_line(f"{root}: {verb} {len(garbage)} incomplete step(s) {garbage} and {len(retired)} step(s) by "
               f"retention {retired}")
