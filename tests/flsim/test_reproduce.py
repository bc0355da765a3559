import pytest

from flsim.errors import FlsimError
from flsim.metrics import export
from flsim.phases import PHASES, assemble
from flsim.reproduce import calibrate_samples, compare
from tests.flsim.test_phases import synthetic_round


def summary(round_s, **phases):
    mean = dict.fromkeys(PHASES, 0.0)
    mean.update(phases)
    return {"rounds": [{"seconds": round_s, "mean_phase_seconds": mean}]}


def test_calibration_scales_training_to_the_target_share():
    # uplink 8 s, train 2 s with 10 samples, other 5 s: the paper's share needs train = 8*77/23 - 5
    s = calibrate_samples(summary(15.0, uplink=8.0, train=2.0), samples=10)
    target_train = 8.0 * 0.77 / 0.23 - 5.0
    assert s == round(10 * target_train / 2.0)
    # predicted share with the calibrated training time is the target
    assert 8.0 / (8.0 + 5.0 + 2.0 * s / 10) == pytest.approx(0.23, abs=0.002)


def test_calibration_never_shrinks_below_pass_one_and_rejects_empty():
    assert calibrate_samples(summary(100.0, uplink=1.0, train=1.0), samples=16) == 16
    with pytest.raises(FlsimError, match="no round"):
        calibrate_samples({"rounds": []}, 16)


def test_compare_computes_share_and_ratios():
    table = compare({"ethernet": summary(10.0, uplink=0.25), "wifi": summary(10.0, uplink=0.5),
                     "5g-sa": summary(40.0, uplink=8.0, server_poll_wait=2.0)})
    t, a = table["transport"], table["app_level"]
    assert t["5g_uplink_share"] == pytest.approx(0.2)
    assert t["5g_over_ethernet"] == pytest.approx(32.0) and t["5g_over_wifi"] == pytest.approx(16.0)
    assert a["5g_uplink_share"] == pytest.approx(0.25)
    # 16x is 10.1 % below 17.8x: just outside the +-10 % band
    assert table["within_targets"] == {"5g_uplink_share": True, "5g_over_ethernet": True, "5g_over_wifi": False}
    with pytest.raises(FlsimError, match="wifi"):
        compare({"ethernet": summary(1, uplink=1), "5g-sa": summary(1, uplink=1)})


def test_prometheus_export_has_one_sample_per_client_phase():
    timelines = assemble(synthetic_round(rnd=1) + synthetic_round(rnd=2, t0=100.0))
    reg = export(timelines, "test")
    value = reg.get_sample_value("flsim_phase_seconds", {"profile": "test", "round": "1", "client": "a",
                                                         "phase": "uplink"})
    assert value == pytest.approx(timelines[0].client_phases("a")["uplink"])
    assert reg.get_sample_value("flsim_rounds_total", {"profile": "test"}) == 2
    assert reg.get_sample_value("flsim_round_seconds", {"profile": "test", "round": "2"}) == pytest.approx(
        timelines[1].seconds)
