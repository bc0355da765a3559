"""Prometheus metrics of rounds: the registry, the text file, and a real Prometheus server scraping flsim."""

import json
import shutil
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import pytest

from flsim.errors import RecordError
from flsim.metrics import export, load_run, serve
from flsim.phases import assemble
from flsim.results import write_results
from tests.flsim.test_phases import synthetic_round


def finished_run(path, profile, rounds=2):
    events = [e for r in range(1, rounds + 1) for e in synthetic_round(rnd=r, t0=100.0 * r)]
    timelines = assemble(events)
    write_results(path, timelines, events, {"profile": {"name": profile}})
    return timelines


def test_prometheus_export_has_one_sample_per_client_phase():
    timelines = assemble(synthetic_round(rnd=1) + synthetic_round(rnd=2, t0=100.0))
    reg = export(timelines, "test")
    value = reg.get_sample_value("flsim_phase_seconds", {"run": "", "profile": "test", "round": "1", "client": "a",
                                                         "phase": "uplink"})
    assert value == pytest.approx(timelines[0].client_phases("a")["uplink"])
    assert reg.get_sample_value("flsim_rounds_total", {"run": "", "profile": "test"}) == 2
    assert reg.get_sample_value("flsim_round_seconds", {"run": "", "profile": "test", "round": "2"}) == pytest.approx(
        timelines[1].seconds)


def test_load_run_names_what_is_missing(tmp_path):
    with pytest.raises(RecordError, match="summary.json is missing"):
        load_run(tmp_path)
    finished_run(tmp_path / "r", "wifi")
    (tmp_path / "r" / "summary.json").write_text("[]")
    with pytest.raises(RecordError, match="profile.name"):
        load_run(tmp_path / "r")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _query(port, promql):
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())["data"]["result"]


@pytest.fixture
def prometheus(tmp_path):
    """A real Prometheus server (Debian package ``prometheus``; .ci/run installs it) scraping every second.

    Yields ``(start, port)``: ``start(target_port)`` writes its config and starts it.
    """
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (apt-get install prometheus)")
    port, procs = _free_port(), []

    def start(target_port):
        cfg = tmp_path / "prometheus.yml"
        cfg.write_text("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: flsim\n"
                       f"    static_configs:\n      - targets: ['127.0.0.1:{target_port}']\n")
        log = open(tmp_path / "prometheus.log", "wb")  # noqa: SIM115
        procs.append(subprocess.Popen([binary, f"--config.file={cfg}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                       f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log))

    yield start, port
    for p in procs:
        p.terminate()
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def test_real_prometheus_scrapes_round_metrics(tmp_path, prometheus):
    start, prom_port = prometheus
    eth = finished_run(tmp_path / "eth", "ethernet")
    later = tmp_path / "5g"  # finishes after the exporter started: picked up at a later scrape
    server, _ = serve([tmp_path / "eth", later, tmp_path / "not-a-run"], port=0)
    try:
        start(server.server_port)
        deadline, found = time.time() + 90, []
        finished_run(later, "5g-sa", rounds=3)
        while time.time() < deadline:
            try:
                found = _query(prom_port, "flsim_rounds_total")
            except OSError:
                found = []  # Prometheus still starting
            if len(found) == 2:
                break
            time.sleep(1)
        rounds = {r["metric"]["run"]: float(r["value"][1]) for r in found}
        assert rounds == {"eth": 2.0, "5g": 3.0}
        [uplink] = _query(prom_port, 'flsim_phase_seconds{run="eth",round="1",client="a",phase="uplink"}')
        assert uplink["metric"]["profile"] == "ethernet"
        assert float(uplink["value"][1]) == pytest.approx(eth[0].client_phases("a")["uplink"])
    finally:
        server.shutdown()
