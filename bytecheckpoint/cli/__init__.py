"""The ``bytecheckpoint`` command line (docs/cli.md): inspect, verify, ls, gc, reshard, diff, export, import.

Paths may be local (relative or absolute), ``file://`` or any storage URL (``s3://bucket/prefix``).
Exit codes (integrations/cli_style.py): 0 ok; 1 a check failed (``verify`` found damage, ``diff``
found differences); 2 bad usage or input (missing path, not a checkpoint, unreadable metadata,
unknown scheme); 3 an internal error. Errors are one line on stderr; ``--debug`` shows tracebacks.
"""

from __future__ import annotations

from typing import NoReturn

from integrations.cli_style import make_app, run_app

from ..errors import CheckpointError
from . import convert, diff, inspect, manager, reshard

app = make_app("bytecheckpoint", "Inspect, verify, list, reshard, compare and convert bytecheckpoint checkpoints.\n\n"
               "Paths: local directories or URLs (s3://bucket/prefix). Exit codes: 0 ok, 1 a check failed "
               "(verify, diff), 2 bad usage or input, 3 internal error. Reference: docs/cli.md.")
app.command()(inspect.inspect)
app.command()(inspect.verify)
app.command()(manager.ls)
app.command()(manager.gc)
app.command()(reshard.reshard)
app.command()(diff.diff)
app.command()(convert.export)
app.command("import")(convert.import_)


def main(args: list[str] | None = None) -> NoReturn:
    """The console script: run the app with the toolkit's exit codes and one-line errors."""
    run_app(app, "bytecheckpoint", expected=(CheckpointError,), args=args)
