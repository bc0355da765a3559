"""Every command in docs/cli.md's ```bash blocks, and in the README's bytecheckpoint block, runs as
written (from a scratch folder standing in for the repository root). ``bytecheckpoint`` lines run in this process through the console script's
``main`` (the same parsing and exit codes, without a torch import per line); other lines run in bash.
A line ending in ``|| echo ...`` is expected to fail with exit 1 or 2; every other line must succeed."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bytecheckpoint.cli import main

REPO = Path(__file__).resolve().parents[2]
SCRIPT = ".venv/bin/bytecheckpoint "


def bash_blocks(doc: Path) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.DOTALL)


def doc_commands(blocks: list[str]) -> list[str]:
    """The shell commands of ``blocks``, a command spanning lines (an open quote) joined."""
    commands: list[str] = []
    for block in blocks:
        pending = ""
        for line in block.splitlines():
            pending = f"{pending}\n{line}" if pending else line
            try:
                shlex.split(pending, comments=True)
            except ValueError:  # an open quote: the command goes on
                continue
            if pending.strip():
                commands.append(pending)
            pending = ""
        assert not pending, f"unterminated command: {pending!r}"
    return commands


README_BLOCK = "rm -rf bcp-cli-demo && "  # how the README's bytecheckpoint block starts


@pytest.mark.parametrize(("doc", "minimum"), [("docs/cli.md", 10), ("README.md", 6)])
def test_every_documented_command_runs(doc: str, minimum: int, tmp_path: Path, capsys, monkeypatch) -> None:
    blocks = bash_blocks(REPO / doc)
    if doc == "README.md":
        blocks = [b for b in blocks if b.startswith(README_BLOCK)]
    commands = doc_commands(blocks)
    assert sum(c.startswith(SCRIPT) for c in commands) >= minimum
    (tmp_path / ".venv").symlink_to(sys.prefix)  # the virtual environment running the tests
    monkeypatch.chdir(tmp_path)
    for command in commands:
        may_fail = "||" in command
        if command.startswith(SCRIPT):
            args = shlex.split(command.split("||")[0], comments=True)[1:]
            with pytest.raises(SystemExit) as stop:
                main(args)
            out, err = capsys.readouterr()
            code = stop.value.code
        else:
            done = subprocess.run(["bash", "-c", command.split("||")[0]], capture_output=True, text=True,
                                  timeout=300, check=False)
            code, out, err = done.returncode, done.stdout, done.stderr
        if may_fail:
            assert code in (1, 2), (command, code, out, err)
        else:
            assert code == 0, (command, code, out, err)
