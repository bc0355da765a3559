"""Checks shared by the tests of the three console scripts (bytecheckpoint, netsim, flsim)."""

from __future__ import annotations

from collections.abc import Callable

import pytest


def run_main(main: Callable[[list[str]], object], capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Run a console script's ``main(ARGS)`` in this process; its exit code, stdout and stderr."""
    with pytest.raises(SystemExit) as stop:
        main(list(args))
    out, err = capsys.readouterr()
    return stop.value.code, out, err


def one_error_line(err: str) -> str:
    """``err`` is exactly one line ``error: ...`` without markup or traceback; returns it."""
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err and "[red]" not in err and "[/]" not in err
    return lines[0]
