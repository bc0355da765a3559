"""The experiment tools of docs/netsim.md: per-namespace TCP counters (tools/netsim_emulated.py) and the
packet peer's comparison with measured rows, repeats and software-term options (tools/packet_vs_measured.py)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from netsim.fabric.namespaces import missing_capabilities

TOOLS = Path(__file__).resolve().parents[2] / "tools"
REPEATS = Path(__file__).resolve().parents[2] / "docs" / "data" / "netsim-emulated-repeats.json"


def _tool(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, TOOLS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.skipif(missing_capabilities() is not None, reason=str(missing_capabilities()))
def test_tcp_counters_are_read_per_namespace_and_count_its_connections() -> None:
    emulated = _tool("netsim_emulated")
    ns = f"netsim-counters-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        before = emulated.tcp_counters(ns)
        assert {"RetransSegs", "ActiveOpens", "TCPTimeouts", "TCPLossProbes"} <= before.keys()
        assert all(isinstance(v, int) for v in before.values())
        connect = ("import socket; s = socket.create_server(('127.0.0.1', 0)); "
                   "c = socket.create_connection(s.getsockname()); a, _ = s.accept(); c.sendall(b'x'); a.recv(1)")
        subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", connect], check=True, timeout=30)
        after = emulated.tcp_counters(ns)
        assert after["ActiveOpens"] - before["ActiveOpens"] == 1
        assert after["PassiveOpens"] - before["PassiveOpens"] == 1
    finally:
        subprocess.run(["ip", "netns", "delete", ns], check=False)


def _rows(tmp_path: Path, p50s: list[float]) -> Path:
    """Three repeats of one small measured run (alltoall, 4 KiB, placement A, minimal), with set p50s."""
    data = json.loads(REPEATS.read_text())
    row = next(r for r in data["rows"] if r["collective"] == "alltoall" and r["size_bytes"] == 4096
               and r["policy"] == "minimal" and r["fabric"]["rank_hosts"][:2] == [0, 2])
    rows = []
    for repeat, p50 in enumerate(p50s):
        rows.append({**row, "iters": 3, "warmup": 1, "repeat": repeat,
                     "seconds": {"p50": p50, "p95": p50, "p99": p50, "min": p50, "max": p50}})
    path = tmp_path / "rows.json"
    path.write_text(json.dumps({**data, "rows": rows}))
    return path


def _compare(rows: Path, out: Path, *extra: str) -> dict:
    proc = subprocess.run([sys.executable, str(TOOLS / "packet_vs_measured.py"), str(rows), "--jobs", "1",
                           "--out", str(out), *extra], capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(out.read_text())


def test_packet_vs_measured_compares_repeats_as_one_case_with_its_spread(tmp_path: Path) -> None:
    doc = _compare(_rows(tmp_path, [0.8e-3, 0.7e-3, 1.0e-3]), tmp_path / "a.json")
    [case] = doc["rows"]
    assert case["measured_repeats_s"] == [0.8e-3, 0.7e-3, 1.0e-3]
    assert case["measured_s"] == pytest.approx(0.8e-3)
    assert case["measured_spread"] == pytest.approx(0.25)
    error = abs(case["packet_s"] / case["measured_s"] - 1)
    [summary] = doc["packet"]
    assert summary["rows"] == 1
    assert summary["within_10pct"] == (1.0 if error <= 0.1 else 0.0)
    assert summary["within_10pct_or_spread"] == (1.0 if error <= 0.25 else 0.0)
    assert doc["software_terms"]["fitted"] is False
    assert doc["small_queue_units"] is None  # the lossy host egress unless --small-queues


def test_packet_vs_measured_software_terms_move_the_packet_time(tmp_path: Path) -> None:
    rows = _rows(tmp_path, [1e-3])
    free = ("--step-us", "0", "--send-us", "0", "--receive-us", "0", "--message-us", "0", "--hop-us", "15")
    fast = _compare(rows, tmp_path / "fast.json", *free)
    slow = _compare(rows, tmp_path / "slow.json", "--step-us", "500", "--send-us", "100", "--receive-us", "0",
                    "--message-us", "50", "--hop-us", "15")
    assert slow["software_terms"] == {"step_us": 500.0, "send_us": 100.0, "receive_us": 0.0, "message_us": 50.0,
                                      "hop_us": 15.0, "fitted": False, "fit_iters": None, "fit_mean_abs_error": None}
    # all-to-all is one step: its start (with the set-up of its 7 + 7 messages) is timed, the next
    # barrier's is not; the loop writes its 7 pieces, then a status for each of the 7 pieces that arrived
    # meanwhile, and the last peer's last status leaves after 13 writes of 100 us
    gained = slow["rows"][0]["packet_s"] - fast["rows"][0]["packet_s"]
    assert gained == pytest.approx(500e-6 + 14 * 50e-6 + 13 * 100e-6, rel=0.05)


@pytest.mark.parametrize(("tool", "args", "message"), [
    ("packet_vs_measured", ["rows.json", "--fit", "--step-us", "10"], "give either --fit or the terms"),
    ("packet_vs_measured", ["rows.json", "--send-us", "-1"], "send_s is a time: 0 s or more"),
    ("packet_vs_measured", ["rows.json", "--fit", "--fit-iters", "0"], "--fit-iters: at least 1"),
    ("packet_vs_measured", ["rows.json", "--small-queues", "0"], "small queues (--small-queues) must be > 0"),
    ("packet_vs_measured", ["rows.json", "--cpus", "0"], "cpus (--cpus) must be a whole number >= 1"),
    ("netsim_emulated", ["--placements", "A,Z"], "--placements: unknown ['Z']"),
    ("netsim_emulated", ["--policies", "spray"], "--policies: unknown ['spray']"),
])
def test_experiment_tools_refuse_bad_options_before_doing_anything(tool: str, args: list[str], message: str) -> None:
    proc = subprocess.run([sys.executable, str(TOOLS / f"{tool}.py"), *args], capture_output=True, text=True,
                          timeout=60, check=False)
    assert proc.returncode == 2 and message in proc.stderr


def test_packet_vs_measured_fit_recovers_a_time_the_peer_can_reach(tmp_path: Path) -> None:
    """Rows whose p50 is the peer's own time under some software terms: the fit, starting from the
    defaults, finds terms that reproduce it (one case cannot tell the three terms apart)."""
    made = _compare(_rows(tmp_path, [1e-3]), tmp_path / "made.json", "--step-us", "120", "--send-us", "20",
                    "--receive-us", "35")["rows"][0]["packet_s"]
    doc = _compare(_rows(tmp_path, [made]), tmp_path / "fit.json", "--fit", "--fit-iters", "3")
    assert doc["software_terms"]["fitted"] is True and doc["software_terms"]["fit_iters"] == 3
    assert doc["software_terms"]["fit_mean_abs_error"] < 0.01
    assert doc["rows"][0]["packet_s"] == pytest.approx(made, rel=0.01)
    assert all(doc["software_terms"][t] % 5 == 0 for t in ("step_us", "send_us", "receive_us"))


def test_packet_vs_measured_compares_the_stalled_fraction_when_rows_carry_their_samples(tmp_path: Path) -> None:
    path = _rows(tmp_path, [1e-3, 1e-3])
    data = json.loads(path.read_text())
    assert "stalled_measured" not in _compare(path, tmp_path / "none.json")["rows"][0]  # no samples, no figure
    # 8 ranks x 3 iterations in each of two repeats: 12 of the 48 samples took 5x the fastest
    for repeat, row in enumerate(data["rows"]):
        row["rank_seconds"] = [[5e-3 if (repeat == 0 and r < 4) else 1e-3 + 1e-5 * i for i in range(3)]
                               for r in range(8)]
        row["seconds"] = {"p50": 1.01e-3, "p95": 5e-3, "p99": 5e-3, "min": 1e-3, "max": 5e-3}
    path.write_text(json.dumps(data))
    [case] = _compare(path, tmp_path / "samples.json")["rows"]
    assert case["stalled_measured"] == pytest.approx(12 / 48)
    samples = [t for ranks in case["packet_rank_s"] for t in ranks]
    assert case["stalled_packet"] == pytest.approx(sum(t > 2e-3 for t in samples) / len(samples))
