"""flsim's command line follows the shared style: errors on stderr, exit codes, --version, --json,
choices in --help, validation before any side effect, relative paths."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import urllib.request
from pathlib import Path

import click
import pytest
import typer

from flsim.cli import Packing, app, main
from flsim.model import PACKINGS
from integrations.cli_style import toolkit_version
from tests.cli_checks import one_error_line, run_main
from tests.flsim.test_metrics import finished_run

FLSIM = Path(sys.executable).parent / "flsim"  # the installed console script
ENV = dict(os.environ, COLUMNS="200")


def invoke(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run ``flsim ARGS`` in this process: (exit code, stdout, stderr)."""
    return run_main(main, capsys, *args)


def test_version_and_errors_of_the_console_script(tmp_path: Path) -> None:
    version = subprocess.run([str(FLSIM), "--version"], capture_output=True, text=True, timeout=60,
                             check=False)
    assert version.returncode == 0 and version.stdout.strip() == f"flsim {toolkit_version()}"
    bad = subprocess.run([str(FLSIM), "run", "--out", "o", "--rounds", "0", "--json"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, env=ENV, check=False)
    assert bad.returncode == 2 and bad.stdout == ""  # --json keeps stdout for JSON: the error is on stderr
    assert one_error_line(bad.stderr) == "error: RunError: rounds must be an integer >= 1, found 0"
    assert not (tmp_path / "o").exists()  # refused before the run's first side effect
    debug = subprocess.run([str(FLSIM), "--debug", "run", "--out", "o", "--rounds", "0"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60, env=ENV, check=False)
    assert debug.returncode != 0 and "Traceback" in debug.stderr and "RunError" in debug.stderr


@pytest.mark.parametrize("args,message", [
    (["--rounds", "0"], "rounds must be an integer >= 1, found 0"),
    (["--poll", "-1"], "poll_s must be a finite number > 0, found -1.0"),
    (["--width", "0"], "width must be a finite number > 0, found 0.0"),
    (["--clients", "0"], "clients must be an integer >= 1, found 0"),
    (["--clients", "201"], "clients must be <= 200, found 201"),
    (["--epochs", "0"], "epochs must be an integer >= 1"),
    (["--timeout", "0"], "timeout_s must be a finite number > 0"),
    (["--clock-skews", "1,2,3"], "one skew per client (2), found 3"),
    (["--clock-skews", "1,x"], "--clock-skews must be comma-separated seconds"),
    (["--mode", "simulation", "--clock-skews", "1,2"], "needs --mode deployment"),
    (["--profile", "nosuch"], "profile 'nosuch' is neither a built-in"),
    (["--mode", "batch"], "'batch' is not one of 'deployment', 'simulation'"),
    (["--packing", "zip"], "'zip' is not one of 'tensors', 'flat'"),
])
def test_run_refuses_bad_arguments_before_building_anything(
        capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "run"
    code, stdout, err = invoke(capsys, "run", "--out", str(out), *args)
    assert code == 2 and stdout == ""
    assert message in one_error_line(err)
    # the runner creates the output directory before anything else (namespaces, SuperLink, SuperNodes)
    assert not out.exists()


def test_out_that_is_a_file_is_refused(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    code, _, err = invoke(capsys, "run", "--out", str(tmp_path / "f"), "--profile", "loopback")
    assert code == 2 and "exists and is not a directory" in one_error_line(err)
    code, _, err = invoke(capsys, "reproduce", "--out", str(tmp_path / "p"), "--rounds", "0")
    assert code == 2 and "rounds must be an integer >= 1" in one_error_line(err)
    assert not (tmp_path / "p").exists()


def test_help_lists_the_choices(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # rich wraps the help table at the terminal width
    code, out, _ = invoke(capsys, "run", "--help")
    assert code == 0
    assert "[deployment|simulation]" in out and "[tensors|flat]" in out
    assert tuple(p.value for p in Packing) == PACKINGS  # the CLI's copy of the model's packings


def test_profiles_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = invoke(capsys, "profiles", "--json")
    assert code == 0 and err == ""
    assert json.loads(out)["5g-sa"]["up_mbit"] == 3.0


def test_report_refuses_missing_and_foreign_directories(capsys: pytest.CaptureFixture[str],
                                                        tmp_path: Path) -> None:
    target = tmp_path / "report"
    code, out, err = invoke(capsys, "report", str(tmp_path / "missing"), "--out", str(target))
    assert code == 2 and out == "" and "missing: no such directory" in one_error_line(err)
    (tmp_path / "empty").mkdir()
    code, _, err = invoke(capsys, "report", str(tmp_path / "empty"), "--out", str(target))
    assert code == 2 and "not an `flsim run` output directory" in one_error_line(err)
    assert not target.exists()


def test_report_json_lists_the_files_it_wrote(capsys: pytest.CaptureFixture[str], tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    finished_run(tmp_path / "runs" / "eth", "ethernet")
    monkeypatch.chdir(tmp_path)  # relative paths, as the README writes them
    code, out, _ = invoke(capsys, "report", "runs/eth", "--json")
    assert code == 0
    files = json.loads(out)["files"]
    assert "runs/eth/report.html" in files and all((tmp_path / f).is_file() for f in files)


def test_metrics_refuses_directories_that_are_not_runs(capsys: pytest.CaptureFixture[str],
                                                       tmp_path: Path) -> None:
    code, out, err = invoke(capsys, "metrics", "/nonexistent", "--port", "0")
    assert code == 2 and out == "" and "/nonexistent: no such directory" in one_error_line(err)
    code, _, err = invoke(capsys, "metrics", str(tmp_path), "--port", "0")
    assert code == 2 and "not an `flsim run` output directory" in one_error_line(err)


def test_metrics_serves_a_finished_run_given_by_a_relative_path(tmp_path: Path) -> None:
    finished_run(tmp_path / "runs" / "wifi", "wifi")
    proc = subprocess.Popen([str(FLSIM), "metrics", "runs/wifi", "--port", "0"], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stderr.readline()
        port = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", line)
        assert port, line
        with urllib.request.urlopen(f"http://127.0.0.1:{port[1]}/metrics", timeout=10) as resp:
            body = resp.read().decode()
        assert 'flsim_rounds_total{profile="wifi",run="wifi"} 2.0' in body
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_run_with_a_relative_out_path(tmp_path: Path) -> None:
    """Regression: ``--out runs/x`` failed with a doubled path from Flower's config loader."""
    proc = subprocess.run([str(FLSIM), "run", "--clients", "1", "--rounds", "1", "--profile", "loopback",
                           "--samples", "8", "--poll", "0.5", "--out", "runs/x", "--json"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=280, env=ENV, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert [r["round"] for r in json.loads(proc.stdout)["rounds"]] == [1]
    assert (tmp_path / "runs" / "x" / "summary.json").is_file()


def _leaf_commands(command: click.Command, path: str) -> list[tuple[str, click.Command]]:
    if isinstance(command, click.Group):
        return [leaf for name, sub in command.commands.items()
                for leaf in _leaf_commands(sub, f"{path} {name}")]
    return [(path, command)]


def test_every_reporting_command_has_json() -> None:
    leaves = _leaf_commands(typer.main.get_command(app), "flsim")
    without = {path for path, command in leaves if not any("--json" in p.opts for p in command.params)}
    assert without == {"flsim metrics"}  # a server, not a report
