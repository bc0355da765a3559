"""Fitting a transport model to measured rows: recovery of a known model, the CLI, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from integrations.cli_style import run_app
from netsim.busbw import algbw, busbw
from netsim.cli import app
from netsim.errors import NetsimError, PolicyError
from netsim.given_paths import GivenPaths
from netsim.measure_schema import FabricSummary, MeasuredRow, MeasureReport, SecondsStats
from netsim.policies import Ecmp
from netsim.topology import LeafSpine
from netsim.traffic import FlowSet
from netsim.transport_fit import FitError, fit_transport, scenario
from netsim.transport_model import TCP_DEFAULT, TransportModel, load_transport_model

TRUTH = TransportModel(rate_efficiency=0.9, sharing_loss=0.1, message_startup_s=300e-6, subflow_startup_s=2e-4,
                       hop_latency_s=TCP_DEFAULT.hop_latency_s, burst_bytes=25_000, source="truth")
FABRIC = FabricSummary("t", 2, 2, 2, 100.0, 100.0, (0, 2, 1, 3))
NETSIM = "from netsim.cli import main; main()"  # the console script, run by this interpreter



@pytest.fixture(autouse=True)
def no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    """Errors must be one line: another test's --debug must not leak TRAINFRA_DEBUG into these runs."""
    monkeypatch.delenv("TRAINFRA_DEBUG", raising=False)


def synthetic_rows(model: TransportModel) -> list[MeasuredRow]:
    """Rows as split-tcp on a 2x2x2 fabric would report them if the world followed ``model`` exactly."""
    rows = []
    for collective in ("allreduce", "alltoall"):
        for policy, k in (("minimal", None), ("round-robin", 4), ("ecmp", 1)):
            for size in (1024, 1 << 20, 8 << 20):
                probe = MeasuredRow("split-tcp", collective, 4, size, size // 4, "float32",
                                    SecondsStats(1, 1, 1, 1, 1), 1.0, 1.0, 5, 1, policy, k, FABRIC)
                t = scenario(probe).predict(model)
                rows.append(replace(probe, seconds=SecondsStats(t, t, t, t, t), algbw=algbw(size, t),
                                    busbw=busbw(collective, size, t, 4)))
    return rows


def test_fit_recovers_the_model_that_generated_the_rows() -> None:
    result = fit_transport(synthetic_rows(TRUTH))
    m = result.model
    assert m.rate_efficiency == pytest.approx(0.9, rel=1e-4)
    assert m.sharing_loss == pytest.approx(0.1)
    assert m.message_startup_s == pytest.approx(300e-6, rel=1e-3)
    assert m.subflow_startup_s == pytest.approx(2e-4, rel=1e-6)
    assert m.burst_bytes == pytest.approx(25_000)  # half a 4 ms tick at 100 Mbit/s
    assert result.max_error() < 1e-4 and result.max_error(fitted=False) > 0.05
    hashed = [c for c in result.rows if not c.used_in_fit]
    assert {c.scenario.row.policy for c in hashed} == {"ecmp"} and len(hashed) == 6


def test_rows_without_fabric_or_known_routing_cannot_be_fitted() -> None:
    rows = synthetic_rows(TRUTH)
    with pytest.raises(FitError, match="has no fabric"):
        fit_transport([replace(rows[0], fabric=None)])
    with pytest.raises(FitError, match="none of the 3 row"):
        fit_transport([r for r in rows if r.policy == "ecmp"][:3])


def test_fit_transport_command_writes_a_model_simulate_can_use(tmp_path: Path) -> None:
    measured = tmp_path / "measured.json"
    measured.write_text(json.dumps(MeasureReport(tuple(synthetic_rows(TRUTH))).to_dict()))
    out = tmp_path / "model.json"
    runner = CliRunner()
    result = runner.invoke(app, ["fit-transport", str(measured), "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["rows_fitted"] == 12 and report["max_error_fitted"] < 1e-4
    assert load_transport_model(out).sharing_loss == pytest.approx(0.1)
    table = runner.invoke(app, ["fit-transport", str(measured), "--out", str(out), "--max-error", "0.5"])
    assert table.exit_code == 0, table.output
    assert "0,2,1,3" in table.stdout and "max |error| on fitted rows: default" in table.stdout
    sim = runner.invoke(app, ["simulate", "--leaves", "2", "--hosts-per-leaf", "2", "--spines", "2",
                              "--link-gbps", "0.1", "--transport-model", str(out), "--json"])
    assert sim.exit_code == 0, sim.output
    assert json.loads(sim.stdout)["transport"]["rate_efficiency"] == pytest.approx(0.9, rel=1e-4)


def test_fit_transport_errors_exit_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "empty.json").write_text(json.dumps({"schema": 1, "rows": []}))
    out = ["--out", str(tmp_path / "m.json")]
    cases = [
        ([str(tmp_path / "missing.json"), *out], "cannot read measurements"),
        ([str(tmp_path / "empty.json"), *out], "no split-tcp rows of >= 1 bytes measured on a fabric"),
        ([str(tmp_path / "empty.json"), *out, "--backend", "rdma"], "--backend must be"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as stop:
            run_app(app, "netsim", expected=(NetsimError,), args=["fit-transport", *args])
        err = capsys.readouterr().err
        assert stop.value.code == 2 and message in err and err.startswith("error: ") and err.count("\n") == 1
    assert not (tmp_path / "m.json").exists()
    proc = subprocess.run([sys.executable, "-c", NETSIM, "fit-transport", *cases[0][0]], capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 2 and "cannot read measurements" in proc.stderr


def test_given_paths_pin_subflows_to_their_spines_and_hash_the_rest() -> None:
    topology = LeafSpine(2, 2, 2, 8.0)
    flows = FlowSet.build([0, 1], [2, 3], 1e6)
    routing = GivenPaths({(0, 2): (1, 1, 0), (1, 3): (None,)}).route(topology, flows)
    up = routing.link_bytes(topology.num_links)[[topology.leaf_up(0, 0, 0), topology.leaf_up(0, 0, 1)]]
    hashed_spine = int(Ecmp(0).choose(topology, np.array([1]), np.array([3]), flows.port[1:] * 64)[1][0])
    expected = np.array([1e6 / 3, 2e6 / 3])
    expected[hashed_spine] += 1e6
    np.testing.assert_allclose(up, expected)
    with pytest.raises(PolicyError, match="names spine 5; the fabric has 2"):
        GivenPaths({(0, 2): (5,)}).route(topology, flows)


def test_fit_transport_plots_measured_against_simulated(tmp_path: Path) -> None:
    measured = tmp_path / "measured.json"
    measured.write_text(json.dumps(MeasureReport(tuple(synthetic_rows(TRUTH))).to_dict()))
    plots = tmp_path / "plots" / "fit"
    result = CliRunner().invoke(app, ["fit-transport", str(measured), "--out", str(tmp_path / "m.json"),
                                      "--plot-dir", str(plots)])
    assert result.exit_code == 0, result.output
    for name in ("measured_vs_simulated.png", "measured_busbw.png"):
        data = (plots / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name


def test_fit_transport_refuses_a_plot_dir_that_is_a_file(tmp_path: Path) -> None:
    measured = tmp_path / "measured.json"
    measured.write_text(json.dumps(MeasureReport(tuple(synthetic_rows(TRUTH))).to_dict()))
    blocker = tmp_path / "plots"
    blocker.write_text("")
    result = CliRunner().invoke(app, ["fit-transport", str(measured), "--out", str(tmp_path / "m.json"),
                                      "--plot-dir", str(blocker)])
    assert result.exit_code != 0 and not (tmp_path / "m.json").exists()
