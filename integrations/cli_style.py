"""One command-line style for ``bytecheckpoint``, ``netsim`` and ``flsim`` (glue to typer/click).

Every console script is ``run_app(app, prog, expected=...)`` around a typer app made by
``make_app``. The conventions it enforces:

- Exit codes: ``EXIT_OK`` (0) success; ``EXIT_CHECK_FAILED`` (1) the command ran and a check it
  performs failed (a damaged checkpoint, a difference found, a missed target); ``EXIT_BAD_INPUT`` (2)
  bad usage or input (unknown option, missing path, not a checkpoint, wrong scheme, invalid value);
  ``EXIT_INTERNAL`` (3) an unexpected exception, i.e. a bug.
- Errors: one line ``error: <Type>: <message>`` on stderr, no traceback, no markup interpretation
  (names from files are printed literally). ``--debug`` before the command, or ``TRAINFRA_DEBUG=1``,
  re-raises with the full traceback instead.
- ``--version`` on every program. Reports go to stdout (``--json`` prints only JSON there); progress
  and notices go to stderr (``stderr_console``).
- Commands validate their arguments before any side effect, raising ``BadInput`` (or the package's
  own error) so nothing is built, started or written for an invalid call.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib import metadata
from typing import NoReturn

import click
import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.text import Text

EXIT_OK = 0
EXIT_CHECK_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_INTERNAL = 3

DEBUG_ENV = "TRAINFRA_DEBUG"
_DIST_NAME = "trainfra-toolkit"


class BadInput(ValueError):
    """An invalid argument found by a command's own validation (exit code 2)."""


class CheckFailed(Exception):
    """A check the command performs failed after it ran (exit code 1); the report is already printed."""


def stderr_console() -> Console:
    """The console for progress, notices and errors: stderr, no highlighting, no wrapping of long lines."""
    return Console(stderr=True, highlight=False, soft_wrap=True)


_UNPRINTABLE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f]|[\ud800-\udfff]")


@contextmanager
def working(description: str) -> Iterator[None]:
    """Show ``description`` with a spinner and the elapsed time on stderr while the block runs.

    For work of unknown length (a run, a render); the line is removed when the block ends. On a
    non-terminal stderr (logs, CI) it prints ``description`` once instead, so logs still say what ran.
    """
    console = stderr_console()
    if not console.is_terminal:
        console.print(plain_text(description), style="dim")
        yield
        return
    columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        bar.add_task(description, total=None)
        yield


def plain_text(text: str) -> Text:
    """``text`` as literal terminal text: control characters and lone surrogates escaped, no markup."""
    return Text(_UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], text))


def toolkit_version() -> str:
    """The installed version of the toolkit (all three programs share one distribution)."""
    try:
        return metadata.version(_DIST_NAME)
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def make_app(prog: str, help_text: str) -> typer.Typer:
    """A typer app with the shared root options ``--version`` and ``--debug``."""
    app = typer.Typer(help=help_text, no_args_is_help=True, pretty_exceptions_enable=False,
                      add_completion=False)

    def show_version(value: bool) -> None:
        if value:
            typer.echo(f"{prog} {toolkit_version()}")
            raise typer.Exit(EXIT_OK)

    @app.callback()
    def root(
        version: bool = typer.Option(False, "--version", callback=show_version, is_eager=True,
                                     help="Print the version and exit."),
        debug: bool = typer.Option(False, "--debug", help=f"Show tracebacks (also: {DEBUG_ENV}=1)."),
    ) -> None:
        _debug_flag[0] = debug

    return app


def print_error(exc: BaseException | str) -> None:
    """Print the one-line error for ``exc`` (an exception or a message) on stderr."""
    message = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
    stderr_console().print(Text.assemble(("error", "red"), ": ", plain_text(message)))


_debug_flag = [False]  # set by the root option --debug of the app being run


def _debugging() -> bool:
    return _debug_flag[0] or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def run_app(app: typer.Typer | Callable[..., object], prog: str,
            expected: tuple[type[BaseException], ...] = (),
            args: list[str] | None = None) -> NoReturn:
    """Run ``app`` as the console script ``prog`` and exit with the shared codes and error format.

    ``expected`` are the package's error roots that mean bad input (exit 2); ``BadInput``, OSError,
    ValueError and click usage errors are always expected. Anything else is a bug (exit 3).
    """
    command = typer.main.get_command(app) if isinstance(app, typer.Typer) else app
    _debug_flag[0] = False
    try:
        rv = command.main(args=args, prog_name=prog, standalone_mode=False)
    except click.exceptions.Exit as stop:
        raise SystemExit(stop.exit_code) from None
    except click.exceptions.Abort:
        print_error("aborted")
        raise SystemExit(130) from None
    except click.exceptions.ClickException as usage:  # UsageError, BadParameter, NoSuchOption...
        ctx = getattr(usage, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        if usage.format_message():  # empty when the help was shown for a bare command
            print_error(f"{usage.format_message()}{hint}")
        raise SystemExit(EXIT_BAD_INPUT) from None
    except CheckFailed as failed:
        if str(failed):
            print_error(failed)
        raise SystemExit(EXIT_CHECK_FAILED) from None
    except KeyboardInterrupt:
        print_error("interrupted")
        raise SystemExit(130) from None
    except (BadInput, OSError, ValueError, *expected) as exc:
        if _debugging():
            raise
        print_error(exc)
        raise SystemExit(EXIT_BAD_INPUT) from None
    except Exception as exc:
        if _debugging():
            raise
        print_error(f"internal error: {type(exc).__name__}: {exc} (rerun with --debug for the traceback)")
        raise SystemExit(EXIT_INTERNAL) from None
    raise SystemExit(rv if isinstance(rv, int) else EXIT_OK)
