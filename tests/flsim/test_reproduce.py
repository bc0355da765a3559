import pytest

from flsim.errors import FlsimError
from flsim.links import BUILTIN, TCP_PAYLOAD_SHARE
from flsim.phases import PHASES
from flsim.reproduce import calibrate_epochs, calibrate_uplinks, compare


def summary(round_s, up_bytes=0, **phases):
    mean = dict.fromkeys(PHASES, 0.0)
    mean.update(phases)
    return {"rounds": [{"seconds": round_s, "mean_phase_seconds": mean, "clients": ["a", "b"],
                        "bytes": {"uplink": 2 * up_bytes, "downlink": 0}}]}


def test_epoch_calibration_fits_train_time_and_hits_the_target_share():
    # train = 0.5 + 2 * epochs; the 5G run: uplink 8 s, rest of the round 5 s
    def run(epochs, uplink=1.0, rest=5.0):
        train = 0.5 + 2.0 * epochs
        return summary(uplink + rest + train, uplink=uplink, train=train)

    pass1 = {"ethernet": run(1), "wifi": run(4), "5g-sa": run(2, uplink=8.0)}
    pass1["wifi"]["rounds"] += run(4, rest=30.0)["rounds"]  # other links' rest is not 5G's: not used
    epochs, fit = calibrate_epochs(pass1, {"ethernet": 1, "wifi": 4, "5g-sa": 2})
    assert fit["train_per_epoch_s"] == pytest.approx(2.0)
    assert fit["train_fixed_s"] == pytest.approx(0.5)
    assert fit["rest_of_round_s"] == pytest.approx(5.0)
    assert epochs == round((8.0 * 0.77 / 0.23 - 5.0 - 0.5) / 2.0)
    train = 0.5 + 2.0 * epochs
    assert 8.0 / (8.0 + 5.0 + train) == pytest.approx(0.23, abs=0.01)
    # a calibrated uplink replaces the measured one
    longer, fit = calibrate_epochs(pass1, {"ethernet": 1, "wifi": 4, "5g-sa": 2}, uplink_s=24.0)
    assert fit["uplink_s"] == 24.0
    assert 24.0 / (24.0 + 5.0 + 0.5 + 2.0 * longer) == pytest.approx(0.23, abs=0.005)


def test_epoch_calibration_floors_at_one_and_rejects_what_it_cannot_fit():
    slow_rest = {"5g-sa": summary(100.0, uplink=1.0, train=1.0)}
    assert calibrate_epochs(slow_rest, {"5g-sa": 1})[0] == 1  # the rest already exceeds the paper's round
    with pytest.raises(FlsimError, match="no round"):
        calibrate_epochs({"5g-sa": {"rounds": []}}, {"5g-sa": 1})
    with pytest.raises(FlsimError, match="5g-sa"):
        calibrate_epochs({"ethernet": summary(10.0, train=1.0)}, {"ethernet": 1})
    flat = {"ethernet": summary(10.0, train=3.0), "5g-sa": summary(10.0, train=3.0)}
    with pytest.raises(FlsimError, match="per epoch"):
        calibrate_epochs(flat, {"ethernet": 1, "5g-sa": 4})


def test_uplink_calibration_hits_the_paper_ratios_under_the_fixed_cost_model():
    nbytes = 3_000_000
    bits = nbytes * 8 / TCP_PAYLOAD_SHARE

    def uplink(mbit, fixed):  # what the model says a run measures
        return fixed + bits / (mbit * 1e6)

    fixed = {"ethernet": 0.15, "wifi": 0.2, "5g-sa": 0.6}
    pass1 = {n: summary(30.0, up_bytes=nbytes, uplink=uplink(BUILTIN[n].up_mbit, fixed[n])) for n in fixed}
    profiles, info = calibrate_uplinks(pass1, BUILTIN)
    assert profiles["ethernet"] == BUILTIN["ethernet"]
    assert profiles["5g-sa"].down_mbit == BUILTIN["5g-sa"].down_mbit
    assert profiles["5g-sa"].up_delay_ms == BUILTIN["5g-sa"].up_delay_ms
    after = {n: uplink(profiles[n].up_mbit, fixed[n]) for n in fixed}
    assert after["5g-sa"] / after["ethernet"] == pytest.approx(33.3, rel=1e-3)
    assert after["5g-sa"] / after["wifi"] == pytest.approx(17.8, rel=1e-3)
    assert info["pass1"]["wifi"]["fixed_s"] == pytest.approx(0.2)
    assert info["up_mbit"]["5g-sa"] == profiles["5g-sa"].up_mbit
    # the final Ethernet run's uplink as the reference: the ratios hold against it instead
    profiles, info = calibrate_uplinks(pass1, BUILTIN, ethernet_uplink_s=0.5)
    assert info["ethernet_reference_s"] == 0.5
    assert uplink(profiles["5g-sa"].up_mbit, fixed["5g-sa"]) / 0.5 == pytest.approx(33.3, rel=1e-3)
    assert uplink(profiles["5g-sa"].up_mbit, fixed["5g-sa"]) / uplink(profiles["wifi"].up_mbit, fixed["wifi"]) \
        == pytest.approx(17.8, rel=1e-3)


def test_uplink_calibration_refuses_what_it_cannot_reach():
    nbytes = 3_000_000
    # WiFi's fixed cost alone (5 s) exceeds its target (33.3/17.8 x Ethernet's 0.3 s)
    pass1 = {"ethernet": summary(30.0, up_bytes=nbytes, uplink=0.3),
             "wifi": summary(30.0, up_bytes=nbytes, uplink=5.5), "5g-sa": summary(30.0, up_bytes=nbytes, uplink=9.0)}
    with pytest.raises(FlsimError, match="cannot calibrate wifi"):
        calibrate_uplinks(pass1, BUILTIN)
    with pytest.raises(FlsimError, match="wifi"):
        calibrate_uplinks({"ethernet": pass1["ethernet"], "5g-sa": pass1["5g-sa"]}, BUILTIN)


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
