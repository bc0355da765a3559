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

SCRIPT = Path(sys.executable).with_name("bytecheckpoint")


def run(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Run ``bytecheckpoint ARGS`` in this process; its exit code, stdout and stderr."""
    with pytest.raises(SystemExit) as stop:
        main(list(args))
    out, err = capsys.readouterr()
    return stop.value.code, out, err


def run_script(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The installed console script, as a user runs it."""
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, timeout=300, check=False, cwd=cwd)


def one_error_line(err: str) -> str:
    """``err`` is exactly one line ``error: ...`` without markup or traceback; returns it."""
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "[red]" not in err and "[/]" not in err
    return lines[0]


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
