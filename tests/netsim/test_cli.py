"""The netsim command line: JSON output, plots, theorem checker and error reporting."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from netsim.cli import app

runner = CliRunner()
FABRIC = ["--leaves", "4", "--hosts-per-leaf", "4", "--spines", "4", "--link-gbps", "100"]
FLUID = ["--transport-model", "ideal"]  # the pure fluid model: exact hand-computed times


def run_json(*args: str) -> dict:
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # progress goes to stderr


def test_simulate_json_has_the_promised_fields() -> None:
    out = run_json("simulate", *FABRIC, *FLUID, "--collective", "ring-allreduce", "--size", "1e9",
                   "--placement", "packed", "--policy", "spray")
    assert {"cct_seconds", "ideal_cct_seconds", "max_congestion", "splits"} <= out.keys()
    assert out["cct_seconds"] == pytest.approx(2 * 15 / 16 * 1e9 / 12.5e9)
    assert out["gap"] == pytest.approx(0.0, abs=1e-9)


def test_simulate_split_reports_minimal_k_and_matches_spray() -> None:
    packed = ["simulate", *FABRIC, *FLUID, "--spines", "3", "--placement", "packed"]
    split = run_json(*packed, "--policy", "split")
    assert split["splits"] == 3  # a packed ring sends D = 1 flow per leaf over 3 spines: k = 3 / gcd(1, 3)
    assert split["max_congestion"] == pytest.approx(run_json(*packed, "--policy", "spray")["max_congestion"])
    shuffled = ["simulate", *FABRIC, *FLUID, "--spines", "3", "--placement", "random", "--seed", "2"]
    split, spray = run_json(*shuffled, "--policy", "split"), run_json(*shuffled, "--policy", "spray")
    assert split["max_congestion"] == pytest.approx(spray["max_congestion"])
    assert split["cct_seconds"] == pytest.approx(spray["cct_seconds"])
    assert run_json(*shuffled, "--policy", "ecmp")["cct_seconds"] > spray["cct_seconds"]


def test_simulate_writes_csv_and_accepts_faults_and_jobs(tmp_path: Path) -> None:
    out = run_json("simulate", *FABRIC, "--fail", "0:1", "--fail", "2:3:0:0.5", "--jobs", "2",
                   "--policy", "random-split", "--splits", "2", "--csv-dir", str(tmp_path))
    assert set(out["job_cct_seconds"]) == {"job0", "job1"} and out["splits"] == 2
    assert (tmp_path / "steps.csv").read_text().startswith("job,step,start_s")
    links = (tmp_path / "links.csv").read_text().splitlines()
    assert "p0 leaf0->spine1" in links[1 + 2 * 16 + 1] and ",0.0," in links[1 + 2 * 16 + 1]


def test_simulate_from_matrix(tmp_path: Path) -> None:
    path = tmp_path / "m.csv"
    path.write_text("src,dst,bytes\n0,4,1e9\n1,5,1e9\n")
    out = run_json("simulate", *FABRIC, *FLUID, "--spines", "1", "--matrix", str(path), "--policy", "ecmp")
    assert out["cct_seconds"] == pytest.approx(2e9 / 12.5e9)


@pytest.mark.parametrize("args,message", [
    (["--policy", "wcmp"], "'wcmp' is not one of"),
    (["--leaves", "0"], "leaves must be a positive integer"),
    (["--fail", "1-2"], "--fail expects LEAF:SPINE"),
    (["--collective", "hd-allreduce", "--ranks", "6"], "power-of-two"),
    (["--placement", "spread"], "'spread' is not one of"),
    (["--ranks", "17"], "the fabric has 16"),
])
def test_simulate_bad_input_exits_2_with_a_message(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["simulate", *FABRIC, *args])
    assert result.exit_code == 2
    assert message in result.output


def test_theorem_json() -> None:
    out = run_json("theorem", "--trials", "15", "--seed", "4", "--rows")
    first = out["summary"][0]
    assert first["case"] == "all" and first["trials"] == 15
    assert first["split_congestion_equals_spray"] == 1.0
    assert len(out["rows"]) == 15 and all(r["congestion_equal"] for r in out["rows"])


def test_plot_writes_pngs(tmp_path: Path) -> None:
    result = runner.invoke(app, ["plot", *FABRIC, "--out-dir", str(tmp_path), "--policies", "ecmp,split"])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["cct_by_policy.png", "fct_cdf.png", "link_utilisation_ecmp.png",
                     "link_utilisation_split.png"]
    assert all((tmp_path / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for n in names)


def test_console_entry_point_runs() -> None:
    code = "import sys; from netsim.cli import main; sys.argv = ['netsim', '--help']; main()"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0 and "simulate" in proc.stdout and "theorem" in proc.stdout
