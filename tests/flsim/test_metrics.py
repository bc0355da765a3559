"""Prometheus metrics of rounds: the registry, the text file, and a real Prometheus server scraping flsim."""

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


def test_real_prometheus_scrapes_round_metrics(tmp_path, prometheus):
    eth = finished_run(tmp_path / "eth", "ethernet")
    later = tmp_path / "5g"  # finishes after the exporter started: picked up at a later scrape
    server, _ = serve([tmp_path / "eth", later, tmp_path / "not-a-run"], port=0)
    try:
        prometheus.start([server.server_port], job="flsim")
        finished_run(later, "5g-sa", rounds=3)
        found = prometheus.wait_for("flsim_rounds_total", lambda found: len(found) == 2, timeout=90)
        rounds = {r["metric"]["run"]: float(r["value"][1]) for r in found}
        assert rounds == {"eth": 2.0, "5g": 3.0}
        [uplink] = prometheus.query('flsim_phase_seconds{run="eth",round="1",client="a",phase="uplink"}')
        assert uplink["metric"]["profile"] == "ethernet"
        assert float(uplink["value"][1]) == pytest.approx(eth[0].client_phases("a")["uplink"])
    finally:
        server.shutdown()
