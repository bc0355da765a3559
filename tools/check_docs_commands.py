"""Check that the shell commands in README.md and docs/*.md run as written from a fresh clone.

Commands are the lines of fenced ``bash``/``sh``/``shell``/``console`` blocks, and the lines of
unlabelled fenced blocks that start with a known program (backslash continuations and quoted
multi-line arguments joined, comments and redirections dropped; ``a && b`` and ``a; b`` are two
commands). Unlabelled lines with placeholders (``...``, ``[--opt]``) are synopses and only listed; in a
``bash`` block they are errors.

Default mode checks each command without running it:

- the project's console scripts (``[project.scripts]`` in pyproject.toml, called as ``name`` or
  ``.venv/bin/name``): the subcommand, options, option values and choices parse (click's
  ``make_context``, which runs no command);
- ``python tools/X.py ARGS``: the script exists and its argparse parser accepts ARGS (``main()`` runs
  up to ``parse_args`` and is stopped there); ``python -m MODULE``: the module can be imported;
- ``make TARGET``: the Makefile defines TARGET; ``bash FILE``: FILE exists and ``bash -n`` accepts it;
- anything else (``rm``, ``echo``, ``curl``): a shell builtin or a program on PATH.

``--run`` runs the commands for real in the repository root instead (trainings, benchmarks: slow;
``--match REGEX`` picks some; a server is stopped after ``--timeout``). Exit status: 0 all good, 1 a
command failed, 2 bad usage.

    .venv/bin/python tools/check_docs_commands.py            # parse every command
    .venv/bin/python tools/check_docs_commands.py --run --match "netsim theorem"
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import io
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import tomllib
import typer

ROOT = Path(__file__).resolve().parents[1]
SHELL_FENCES = {"bash", "sh", "shell", "console"}
PYTHONS = {"python", "python3"}
OPERATORS = {"&&", "||", ";", "|"}
SHELL_BUILTINS = {"cd", "echo", "export", "set", "source", ".", "test", "[", "true", "false", "unset", "exit"}


@dataclass(frozen=True)
class DocCommand:
    """One command from a document: where it is, its text, and whether it is only a synopsis."""

    path: Path
    line: int
    text: str
    argv: tuple[str, ...]
    synopsis: bool
    labelled: bool  # from a bash/sh/shell/console block: must run as written

    def where(self, root: Path) -> str:
        try:
            return f"{self.path.relative_to(root)}:{self.line}"
        except ValueError:
            return f"{self.path}:{self.line}"


def console_scripts(root: Path) -> dict[str, str]:
    """``name -> "module:attr"`` from pyproject.toml's ``[project.scripts]``."""
    data = tomllib.loads((root / "pyproject.toml").read_text(encoding="utf-8"))
    return dict(data.get("project", {}).get("scripts", {}))


def program_name(token: str) -> str:
    """``.venv/bin/flsim`` -> ``flsim``; other paths stay as written."""
    return token.removeprefix(".venv/bin/")


def _known_program(token: str, scripts: dict[str, str]) -> bool:
    name = program_name(token)
    return name in scripts or name in PYTHONS or name in ("make", "bash")


def _split(text: str) -> list[list[str]]:
    """Shell words of ``text`` split at ``&&``, ``||``, ``;``, ``|``; comments and redirections
    (``> file``, ``2>&1``) dropped. ValueError on unbalanced quotes."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|<>")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    commands: list[list[str]] = [[]]
    redirect = False
    for word in lexer:
        if redirect:
            redirect = False
        elif word in OPERATORS:
            commands.append([])
        elif set(word) <= set("<>&") and set(word) & set("<>"):
            redirect = True  # its target goes too: the file of '> file', the 1 of '2>&1'
            if commands[-1] and commands[-1][-1].isdigit():  # 2> file
                commands[-1].pop()
        else:
            commands[-1].append(word)
    return [c for c in commands if c]


def _is_synopsis(argv: list[str]) -> bool:
    """Placeholders: ``...``, ``[--opt ...]``, ``[ARGS]...``, ``K]`` (code given to ``-c`` never counts)."""
    return any(w == "..." or (not re.search(r"\s", w) and (w.startswith("[-") or re.fullmatch(
        r"\[?[A-Z][A-Z_]*\]*(\.\.\.)?", w) is not None and ("[" in w or "]" in w or w.endswith("..."))))
               for w in argv)


def extract_commands(path: Path, scripts: dict[str, str]) -> list[DocCommand]:
    """The commands in the fenced shell blocks (and command-like unlabelled blocks) of ``path``.

    A command runs on until its line ends outside quotes and without a trailing backslash, so a
    quoted multi-line argument (``python -c "..."``) stays one command.
    """
    found: list[DocCommand] = []
    fence: str | None = None
    pending, start = "", 0
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("```") and not pending:
            fence = None if fence is not None else stripped[3:].strip().lower()
            continue
        if fence is None or (fence and fence not in SHELL_FENCES):
            continue
        line = stripped.removeprefix("$ ") if fence == "console" and not pending else raw
        if not pending:
            start = number
            line = line.strip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        text = pending + line
        if not text.strip() or text.lstrip().startswith("#"):
            pending = ""
            continue
        try:
            parts = _split(text)
        except ValueError:  # a quote still open: the command goes on on the next line
            pending = text + "\n"
            continue
        pending = ""
        for argv in parts:
            while argv and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", argv[0]):  # VAR=value cmd
                argv = argv[1:]
            if not argv or (not fence and not _known_program(argv[0], scripts)):
                continue
            found.append(DocCommand(path, start, text.strip(), tuple(argv), _is_synopsis(argv), fence != ""))
    if pending:
        found.append(DocCommand(path, start, pending.strip(), ("<unbalanced quotes>",), False, True))
    return found


class _Parsed(Exception):
    """Raised from ``parse_args`` once the arguments parsed: stops the tool before it does anything."""


class _Refused(Exception):
    """An argparse parser refused the arguments (its message)."""


def _typer_command(spec: str) -> click.Command:
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    for obj in (getattr(module, attr, None), getattr(module, "app", None)):
        if isinstance(obj, typer.Typer):
            return typer.main.get_command(obj)
        if isinstance(obj, click.Command):
            return obj
    raise LookupError(f"{spec}: neither it nor {module_name}.app is a typer/click application")


def check_console_script(prog: str, spec: str, args: list[str]) -> str | None:
    """``None`` if ``prog ARGS`` parses (subcommands, options, values, choices); else click's message."""
    command = _typer_command(spec)
    parent: click.Context | None = None
    name = prog
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            while True:
                ctx = command.make_context(name, list(args), parent=parent, resilient_parsing=False)
                if not isinstance(command, click.Group):
                    return None
                rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
                if not rest:
                    return None
                name, sub, args = command.resolve_command(ctx, rest)
                if sub is None:
                    return f"no command {rest[0]!r}"
                command, parent = sub, ctx
        except click.exceptions.Exit:  # --help, --version: eager options that end parsing
            return None
        except click.ClickException as err:
            return err.format_message()


def check_python(args: list[str], root: Path) -> str | None:
    """``python tools/X.py ARGS`` (argparse parses ARGS) or ``python -m MODULE``."""
    if args[:1] == ["-m"]:
        if len(args) < 2:
            return "python -m needs a module"
        return None if importlib.util.find_spec(args[1]) is not None else f"no module named {args[1]!r}"
    if not args or args[0].startswith("-"):
        return None  # python -c ..., python -V: nothing of ours to check
    script = root / args[0]
    if not script.is_file():
        return f"{args[0]}: no such file"
    return _check_argparse_script(script, args[1:], root)


def _check_argparse_script(script: Path, args: list[str], root: Path) -> str | None:
    spec = importlib.util.spec_from_file_location(f"_docs_check_{script.stem}", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    original_parse, original_error = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.error

    def parse_then_stop(self: argparse.ArgumentParser, *a: Any, **k: Any) -> Any:
        original_parse(self, *a, **k)
        raise _Parsed

    def refuse(self: argparse.ArgumentParser, message: str) -> Any:
        raise _Refused(message)

    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [str(script), *args]
    sys.path[:0] = [str(script.parent), str(root)]
    argparse.ArgumentParser.parse_args = parse_then_stop  # type: ignore[method-assign]
    argparse.ArgumentParser.error = refuse  # type: ignore[method-assign]
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            spec.loader.exec_module(module)
            if not callable(getattr(module, "main", None)):
                return f"{script.name} has no main() to check its arguments with"
            module.main()
        return f"{script.name}: main() returned without parsing arguments"
    except _Parsed:
        return None
    except _Refused as err:
        return str(err)
    except SystemExit as stop:  # --help exits 0 from inside parse_args
        return None if stop.code in (0, None) else f"{script.name} exited with {stop.code}"
    finally:
        argparse.ArgumentParser.parse_args = original_parse  # type: ignore[method-assign]
        argparse.ArgumentParser.error = original_error  # type: ignore[method-assign]
        sys.argv, sys.path[:] = saved_argv, saved_path


def check_make(args: list[str], root: Path) -> str | None:
    makefile = root / "Makefile"
    if not makefile.is_file():
        return "no Makefile"
    targets = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", makefile.read_text(), flags=re.MULTILINE))
    wanted = [a for a in args if not a.startswith("-") and "=" not in a]
    missing = [t for t in wanted if t not in targets]
    return f"Makefile has no target {', '.join(missing)}" if missing else None


def check_bash(args: list[str], root: Path) -> str | None:
    if not args:
        return "bash needs a script"
    script = root / args[0]
    if not script.is_file():
        return f"{args[0]}: no such file"
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30,
                          check=False)
    return None if proc.returncode == 0 else f"bash -n {args[0]}: {proc.stderr.strip()}"


def check(command: DocCommand, root: Path, scripts: dict[str, str]) -> str | None:
    """``None`` if ``command`` would start as written; else why not."""
    if command.synopsis:
        return "a synopsis with placeholders, not a runnable command (use a text fence or fill them in)"
    prog, args = program_name(command.argv[0]), list(command.argv[1:])
    if prog in scripts:
        return check_console_script(prog, scripts[prog], args)
    if prog in PYTHONS:
        return check_python(args, root)
    if prog == "make":
        return check_make(args, root)
    if prog == "bash":
        return check_bash(args, root)
    if prog in SHELL_BUILTINS or shutil.which(prog) is not None:
        return None  # a shell builtin or a program on PATH: it exists; its arguments are not ours to check
    return f"program {command.argv[0]!r} not found (not a console script of this project, nor on PATH)"


def run_command(command: DocCommand, root: Path, timeout: float) -> str | None:
    """Run ``command`` for real in ``root``; ``None`` if it exits 0. Servers (``flsim metrics``) are
    stopped, with their process group, after ``timeout`` seconds and count as failed."""
    proc = subprocess.Popen(["bash", "-c", command.text], cwd=root, start_new_session=True)
    try:
        code = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(30)
        return f"still running after {timeout:g} s (stopped)"
    return None if code == 0 else f"exited with {code}"


def doc_files(root: Path) -> list[Path]:
    return [p for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))] if p.is_file()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=Path, default=ROOT, help="repository root (default: this checkout)")
    parser.add_argument("--run", action="store_true", help="run the commands for real (slow)")
    parser.add_argument("--match", default=None, help="only commands matching this regular expression")
    parser.add_argument("--timeout", type=float, default=3600, help="--run: seconds per command")
    parser.add_argument("files", nargs="*", type=Path, help="Markdown files (default: README.md, docs/*.md)")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    scripts = console_scripts(root)
    commands = [c for f in (args.files or doc_files(root)) for c in extract_commands(f, scripts)]
    if args.match:
        commands = [c for c in commands if re.search(args.match, c.text)]
    failures = 0
    ran: set[tuple[Path, int]] = set()
    for command in commands:
        if command.synopsis and not command.labelled:
            print(f"skip  {command.where(root)}  {command.text}  (synopsis)")
            continue
        if args.run and not command.synopsis:
            if (command.path, command.line) in ran:  # 'a && b' runs once, as the shell would run it
                continue
            ran.add((command.path, command.line))
            problem = run_command(command, root, args.timeout)
        else:
            problem = check(command, root, scripts)
        failures += problem is not None
        shown = shlex.join(command.argv)
        shown = shown.splitlines()[0] + " ..." if "\n" in shown else shown
        print(f"{'ok  ' if problem is None else 'FAIL'}  {command.where(root)}  {shown}"
              + (f"\n      {problem}" if problem else ""))
    print(f"{len(commands)} commands, {failures} failed", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
