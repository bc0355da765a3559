"""Real Flower deployment: a SuperLink and SuperNodes as processes, every phase of every round recorded."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("flwr", reason="flwr==1.42.0 is in the 'dev' and 'flower' extras")

from flsim.links import LinkProfile
from flsim.model import SqueezeNetCifar, parameter_bytes
from flsim.phases import PHASES, check_sums
from flsim.runner import RunConfig, run_deployment
from tests.flsim.conftest import NEEDS_NETNS, PREFIX

FLSIM = [sys.executable, "-c", "from flsim.cli import main; main()"]
MODEL_BYTES = parameter_bytes(SqueezeNetCifar())


def _no_flower_processes_left(out: Path):
    """No process mentions the run directory in its arguments or environment (FLWR_HOME lives there)."""
    alive = []
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            seen = b" ".join((proc / f).read_bytes().replace(b"\0", b" ") for f in ("cmdline", "environ"))
        except OSError:
            continue  # exited while we looked
        if str(out).encode() in seen:
            alive.append(seen[:200].decode(errors="replace"))
    assert not alive, f"processes of this run are still alive: {alive}"


@pytest.mark.slow
@pytest.mark.timeout(400)
def test_loopback_superlink_three_supernodes_two_rounds(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.run([*FLSIM, "run", "--clients", "3", "--rounds", "2", "--profile", "loopback",
                           "--samples", "8", "--poll", "0.5", "--out", str(out), "--json"],
                          capture_output=True, text=True, timeout=380, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert [r["round"] for r in summary["rounds"]] == [1, 2]
    for r in summary["rounds"]:
        assert r["clients"] == ["client0", "client1", "client2"]
        assert r["seconds"] > 0
        mean = r["mean_phase_seconds"]
        assert set(mean) == set(PHASES)
        # both stages ran on every client: training and evaluation took time
        assert mean["train"] > 0 and mean["evaluate"] > 0 and mean["uplink"] > 0 and mean["downlink"] > 0
        # each train reply and each train/evaluate message carries the model over the link
        assert r["bytes"]["uplink"] >= 3 * MODEL_BYTES
        assert r["bytes"]["downlink"] >= 2 * 3 * MODEL_BYTES
    with open(out / "rounds.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    for row in rows:
        total = sum(float(row[p]) for p in PHASES)
        assert total == pytest.approx(float(row["round_seconds"]), abs=1e-5)
        assert all(float(row[p]) >= 0 for p in PHASES)
    with open(out / "phases.csv") as f:
        phases = list(csv.DictReader(f))
    # every phase of the chain recorded once per stage, client and round
    per = {(p["round"], p["client"], p["stage"]) for p in phases}
    assert len(per) == 2 * 3 * 3  # train, evaluate, and the round's own server_other
    # clocks are one clock here: the estimated offset must bracket zero
    for off in summary["clock_offsets"].values():
        assert off["low_s"] <= 1e-3 and off["high_s"] >= -1e-3

    rep = subprocess.run([*FLSIM, "report", str(out)], capture_output=True, text=True, timeout=120, check=False)
    assert rep.returncode == 0, rep.stderr[-2000:]
    for name in ("phases.png", "timeline.png", "stragglers.png", "whatif.png", "report.html"):
        assert (out / name).stat().st_size > 5000
    _no_flower_processes_left(out)


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_emulated_hosts_with_skewed_clocks_are_aligned(tmp_path):
    # each SuperNode and its client apps act as a separate host whose clock is off by tens of seconds
    skews = {"emulated-node0": 30.0, "emulated-node1": -45.0}
    out = tmp_path / "skew"
    proc = subprocess.run([*FLSIM, "run", "--clients", "2", "--rounds", "2", "--profile", "loopback",
                           "--samples", "8", "--poll", "0.5", "--packing", "flat", "--clock-skews", "30,-45",
                           "--out", str(out), "--json"], capture_output=True, text=True, timeout=280, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["config"]["clock_skews_s"] == [30.0, -45.0]
    assert set(summary["clock_offsets"]) == set(skews)
    for host, off in summary["clock_offsets"].items():
        # causal bounds always bracket the true skew; Flower's polling keeps them a few seconds wide
        assert off["low_s"] - 1e-3 <= skews[host] <= off["high_s"] + 1e-3, (host, off)
        assert off["error_bound_s"] < 5.0, (host, off)
    with open(out / "rounds.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4
    for row in rows:
        assert sum(float(row[p]) for p in PHASES) == pytest.approx(float(row["round_seconds"]), abs=1e-5)
        # unshifted, the client's events would sit 30-45 s outside the server's round and collapse to zero
        assert float(row["train"]) > 0 and float(row["client_dispatch"]) > 0, row
    _no_flower_processes_left(out)


@NEEDS_NETNS
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_supernodes_in_namespaces_behind_shaped_links(tmp_path, clean_namespaces):
    prof = LinkProfile("slow-up", down_mbit=40.0, up_mbit=6.0, down_delay_ms=5.0, up_delay_ms=5.0)
    outcome = run_deployment(tmp_path / "ns", RunConfig(clients=2, rounds=1, samples=8, poll_s=0.5,
                                                        timeout_s=280), prof, name=PREFIX + "d")
    [tl] = outcome.timelines
    check_sums([tl])
    assert tl.clients() == ["client0", "client1"]
    for r in tl.records:
        if r.stage == "train" and r.phase == "uplink":
            # the model cannot cross a 6 Mbit/s link faster than its rate allows
            floor = r.bytes * 8 / 6e6
            assert r.bytes >= MODEL_BYTES
            assert floor <= r.seconds <= floor * 2.0 + 2.0, (r.seconds, floor)
    assert not [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True,
                                          text=True, check=False).stdout.split() if n.startswith(PREFIX + "d")]
    _no_flower_processes_left(tmp_path / "ns")


def test_cli_bad_profile_file_exits_with_clear_error(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text('{"down_mbit": 10}')
    proc = subprocess.run([*FLSIM, "run", "--profile", str(bad), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, timeout=60, env=dict(os.environ, COLUMNS="200"), check=False)
    assert proc.returncode == 2
    assert "missing required key 'up_mbit'" in proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.timeout(200)
def test_simulation_mode_models_the_profile_with_flat_packing(tmp_path):
    prof = tmp_path / "p.json"
    prof.write_text(json.dumps({"name": "sim", "down_mbit": 50, "up_mbit": 10, "delay_ms": 20}))
    out = tmp_path / "sim"
    proc = subprocess.run([*FLSIM, "run", "--mode", "simulation", "--clients", "2", "--rounds", "1",
                           "--profile", str(prof), "--samples", "8", "--packing", "flat", "--out", str(out), "--json"],
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout)
    assert summary["mode"] == "simulation" and summary["links"] == "modelled"
    assert summary["config"]["packing"] == "flat"
    # FedAvg over one flat vector per message still ran every round and stage
    assert summary["rounds"][0]["bytes"]["uplink"] >= 2 * MODEL_BYTES
    with open(out / "phases.csv") as f:
        rows = list(csv.DictReader(f))
    train_up = [r for r in rows if r["stage"] == "train" and r["phase"] == "uplink"]
    assert len(train_up) == 2
    for r in train_up:
        nbytes = int(r["bytes"])
        assert nbytes >= MODEL_BYTES
        expected = 0.020 + nbytes * 8 / (10e6 * 1448 / 1500)
        assert float(r["seconds"]) == pytest.approx(expected, abs=0.05)
    with open(out / "rounds.csv") as f:
        for row in csv.DictReader(f):
            assert sum(float(row[p]) for p in PHASES) == pytest.approx(float(row["round_seconds"]), abs=1e-5)


@NEEDS_NETNS
@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_reproduce_calibrates_links_and_compute_end_to_end(tmp_path):
    out = tmp_path / "paper"
    proc = subprocess.Popen([*FLSIM, "reproduce", "--out", str(out), "--clients", "1", "--rounds", "1",
                             "--samples", "32", "--poll", "0.5", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = proc.communicate(timeout=1150)
    assert proc.returncode == 0, stdout[-2000:] + stderr[-3000:]
    table = json.loads(stdout)
    assert table == json.loads((out / "reproduce.json").read_text())
    links, compute = table["calibration"]["links"], table["calibration"]["compute"]
    # pass 1 ran every profile; the final runs used the calibrated rates and epochs
    for name in ("ethernet", "wifi", "5g-sa"):
        assert (out / "calibration" / name / "summary.json").exists()
        summary = json.loads((out / name / "summary.json").read_text())
        assert summary["profile"]["up_mbit"] == links["up_mbit"][name] == table["link_profiles"][name]["up_mbit"]
        assert summary["config"]["epochs"] == table["epochs"] == compute["epochs"] >= 1
    assert links["up_mbit"]["5g-sa"] != 3.0 and links["up_mbit"]["ethernet"] == 94.0
    assert compute["train_per_epoch_s"] > 0
    # the ratios are fitted against the final Ethernet run's uplink, so the measured ones land near them
    ethernet = table["profiles"]["ethernet"]["uplink_transport_s"]
    assert links["ethernet_reference_s"] == pytest.approx(ethernet)
    assert table["transport"]["5g_over_ethernet"] == pytest.approx(33.3, rel=0.25)
    assert table["transport"]["5g_over_wifi"] == pytest.approx(17.8, rel=0.25)
    assert 0 < table["transport"]["5g_uplink_share"] < 1
    # the link-only probe sends the model over each calibrated link without Flower
    assert table["link_only"]["uplink_s"]["5g-sa"] > table["link_only"]["uplink_s"]["ethernet"] > 0
    assert (out / "report.html").stat().st_size > 5000
    left = [n for n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                                      check=False).stdout.split() if n.startswith((f"fls{proc.pid % 100000}",
                                                                                   f"flp{proc.pid % 100000}"))]
    assert not left, left
