"""Reports on stdout: JSON documents, or rich text that never interprets names as markup."""

from __future__ import annotations

import json
from typing import Any

from rich.console import Console

from integrations.cli_style import plain_text


def stdout_console() -> Console:
    """The console for reports: stdout, no highlighting, no markup from data."""
    return Console(highlight=False, soft_wrap=True)


def print_json(doc: Any) -> None:
    """``doc`` as indented JSON on stdout (the only thing a ``--json`` command prints there)."""
    print(json.dumps(doc, indent=2, allow_nan=False))


def print_line(*parts: str) -> None:
    """One line of report text on stdout, printed literally."""
    stdout_console().print(plain_text("".join(parts)))


def size_text(nbytes: float) -> str:
    """``nbytes`` in B, KiB, MiB, GiB or TiB."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024:
            return f"{nbytes:.0f} B" if unit == "B" else f"{nbytes:.2f} {unit}"
        nbytes /= 1024
    return f"{nbytes:.2f} TiB"
