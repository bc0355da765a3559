"""Running the ``bytecheckpoint`` console script in tests: in this process, or as the installed script."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from bytecheckpoint.cli import main
from tests.cli_checks import one_error_line, run_main

__all__ = ["CliResult", "invoke", "one_error_line", "run", "run_script"]

SCRIPT = Path(sys.executable).with_name("bytecheckpoint")


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Run ``bytecheckpoint ARGS`` in this process; its exit code, stdout and stderr."""
    return run_main(main, capsys, *args)


def run_script(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it."""
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=300, check=False, cwd=cwd)


@dataclass(frozen=True)
class CliResult:
    exit_code: int
    stdout: str
    stderr: str


def invoke(args: list[str]) -> CliResult:
    """Run ``bytecheckpoint ARGS`` in this process without pytest's capture fixtures (stdout and
    stderr redirected); any exception other than the exit it ends with propagates."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(args)
        except SystemExit as stop:
            return CliResult(stop.code, out.getvalue(), err.getvalue())
    raise AssertionError("the console script returned without an exit code")
