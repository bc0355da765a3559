"""`netsim simulate` in nccl-tests' terms (algbw, busbw, latency) and its input checks (regressions)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from integrations.cli_style import run_app
from netsim.busbw import bus_factor
from netsim.cli import app
from netsim.errors import NetsimError

FABRIC = ["--leaves", "4", "--hosts-per-leaf", "4", "--spines", "4", "--link-gbps", "100"]
runner = CliRunner()



@pytest.fixture(autouse=True)
def no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    """Errors must be one line: another test's --debug must not leak TRAINFRA_DEBUG into these runs."""
    monkeypatch.delenv("TRAINFRA_DEBUG", raising=False)


def simulate_json(*args: str) -> dict:
    result = runner.invoke(app, ["simulate", *FABRIC, *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize("collective,ranks", [("ring-allreduce", 16), ("alltoall", 8), ("ring-allgather", 16)])
def test_algbw_and_busbw_follow_nccl_tests(collective: str, ranks: int) -> None:
    out = simulate_json("--collective", collective, "--size", "1e8", "--ranks", str(ranks), "--policy", "spray",
                        "--transport-model", "ideal")
    assert out["algbw_Bps"] == pytest.approx(1e8 / out["cct_seconds"])
    assert out["busbw_Bps"] == pytest.approx(out["algbw_Bps"] * bus_factor(collective, ranks))
    assert out["busbw_Bps"] == pytest.approx(12.5e9)  # bandwidth-optimal on a non-blocking 100G fabric


def test_default_model_gives_a_one_byte_allreduce_its_latency() -> None:
    fluid = simulate_json("--size", "1", "--transport-model", "ideal")
    tcp = simulate_json("--size", "1")
    assert fluid["cct_seconds"] < 1e-9
    assert 1e-3 < tcp["cct_seconds"] < 1e-2  # 30 steps of ~0.1 ms start-up and propagation
    assert tcp["transport"]["source"] == "tcp defaults" and tcp["busbw_Bps"] < 1e3
    big = simulate_json("--size", "1e9")
    assert 0.8 < big["busbw_Bps"] / 12.5e9 < 0.95  # headers and rate efficiency cost ~7% at this size


def test_csv_dir_that_cannot_be_created_is_one_line_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        run_app(app, "netsim", expected=(NetsimError,), args=["simulate", "--csv-dir", "/proc/nope/x"])
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.startswith("error: cannot create --csv-dir /proc/nope/x") and err.count("\n") == 1


@pytest.mark.parametrize("args,message", [
    (["--jobs", "100"], ("--jobs 100 on a fabric of 16 hosts leaves 0 rank(s) per job; every job needs >= 2 "
                        "ranks, so at most 8 jobs")),
    (["--policy", "ecmp", "--splits", "4"], ("--splits applies to split, random-split and greedy, not to "
                                            "--policy ecmp")),
    (["--policy", "spray", "--splits", "2"], "not to --policy spray"),
    (["--transport-model", "nope.json"], "cannot read transport model nope.json"),
])
def test_bad_input_exits_2_with_a_clear_message(args: list[str], message: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        run_app(app, "netsim", expected=(NetsimError,), args=["simulate", *FABRIC, *args])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and message in err and err.count("\n") == 1


def test_bench_netsim_creates_the_output_folder(tmp_path: Path) -> None:
    out = tmp_path / "bench-results" / "deeper" / "netsim.json"
    tool = Path(__file__).resolve().parents[2] / "tools" / "bench_netsim.py"
    proc = subprocess.run([sys.executable, str(tool), "--hosts", "16", "--repeats", "1", "--raw-hosts", "",
                           "--out", str(out)], capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(out.read_text())
