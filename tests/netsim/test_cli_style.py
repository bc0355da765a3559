"""netsim's command line follows the shared style: errors on stderr, exit codes, --version, --json on
every reporting command, choices in --help, validation before side effects, relative paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer

import netsim.cli
from integrations.cli_style import toolkit_version
from netsim.cli import app, main
from tests.cli_checks import one_error_line, run_main

NETSIM = Path(sys.executable).parent / "netsim"  # the installed console script
SMALL = ["--leaves", "2", "--hosts-per-leaf", "2", "--spines", "2"]


def invoke(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``netsim ARGS`` in this process: (exit code, stdout, stderr)."""
    return run_main(main, capsys, *args)


def test_console_script_version_and_error_stream() -> None:
    env = dict(os.environ, COLUMNS="200")
    version = subprocess.run([str(NETSIM), "--version"], capture_output=True, text=True, timeout=60,
                             check=False)
    assert version.returncode == 0 and version.stdout.strip() == f"netsim {toolkit_version()}"
    bad = subprocess.run([str(NETSIM), "simulate", "--leaves", "0", "--json"], capture_output=True, text=True,
                         timeout=60, env=env, check=False)
    assert bad.returncode == 2 and bad.stdout == ""
    assert one_error_line(bad.stderr) == "error: TopologyError: leaves must be a positive integer, found 0"


@pytest.mark.parametrize("args,message", [
    (["simulate", "--policy", "wcmp"], "Invalid value for '--policy': 'wcmp' is not one of"),
    (["simulate", "--collective", "allreduce"], "'allreduce' is not one of 'ring-allreduce'"),
    (["plot", "--placement", "spread"], "'spread' is not one of 'packed', 'random'"),
    (["simulate", "--no-such-option"], "No such option '--no-such-option'. (see 'netsim simulate --help')"),
    (["theorem", "--trials", "0"], "--trials must be >= 1, found 0"),
    (["nosuch"], "No such command 'nosuch'"),
])
def test_bad_usage_exits_2_with_one_line(capsys: pytest.CaptureFixture[str], args: list[str],
                                         message: str) -> None:
    code, out, err = invoke(capsys, *args)
    assert code == 2 and out == ""
    assert message in one_error_line(err)


def test_help_lists_the_choices(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # rich wraps the help table at the terminal width
    code, out, _ = invoke(capsys, "simulate", "--help")
    assert code == 0
    assert "[ecmp|spray|split|random-split|greedy]" in out and "[packed|random]" in out
    assert "[ring-allreduce|ring-allgather|" in out
    code, out, _ = invoke(capsys, "plot", "--help")
    assert "(ecmp, spray, split, random-split, greedy)" in out


def test_theorem_json_keeps_progress_off_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = invoke(capsys, "theorem", "--trials", "5", "--json")
    assert code == 0 and json.loads(out)["trials"] == 5
    assert "checking instances" in err


def test_plot_json_with_a_relative_out_dir(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, _ = invoke(capsys, "plot", *SMALL, "--out-dir", "plots", "--policies", "ecmp,spray", "--json")
    assert code == 0
    report = json.loads(out)
    assert set(report["results"]) == {"ecmp", "spray"}
    assert report["results"]["spray"]["cct_seconds"] <= report["results"]["ecmp"]["cct_seconds"]
    assert "plots/cct_by_policy.png" in report["files"]
    assert all((tmp_path / f).read_bytes()[:4] == b"\x89PNG" for f in report["files"])


def test_plot_refuses_bad_input_before_writing(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    code, _, err = invoke(capsys, "plot", *SMALL, "--out-dir", str(tmp_path / "file"))
    assert code == 2 and "exists and is not a directory" in one_error_line(err)
    code, _, err = invoke(capsys, "plot", *SMALL, "--out-dir", str(tmp_path / "p"), "--policies", "ecmp,wcmp")
    assert code == 2 and "unknown policy 'wcmp'" in one_error_line(err)
    assert not (tmp_path / "p").exists()


def test_a_bug_exits_3_and_debug_shows_the_traceback(capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: object, **kwargs: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(netsim.cli, "simulate", broken)  # unit test: stands in for a bug in the engine
    monkeypatch.delenv("TRAINFRA_DEBUG", raising=False)
    code, out, err = invoke(capsys, "simulate", *SMALL)
    assert code == 3 and out == ""
    assert one_error_line(err).startswith("error: internal error: RuntimeError: boom (rerun with --debug")
    with pytest.raises(RuntimeError, match="boom"):
        main(["--debug", "simulate", *SMALL])


def _leaf_commands(command: click.Command, path: str) -> list[tuple[str, click.Command]]:
    if isinstance(command, click.Group):
        return [leaf for name, sub in command.commands.items()
                for leaf in _leaf_commands(sub, f"{path} {name}")]
    return [(path, command)]


def test_every_reporting_command_has_json() -> None:
    leaves = _leaf_commands(typer.main.get_command(app), "netsim")
    without = {path for path, command in leaves if not any("--json" in p.opts for p in command.params)}
    assert without == {"netsim fabric down"}  # removes a fabric and reports nothing
