"""Reproduce Hayek et al. (arXiv 2504.04678): FL rounds over Ethernet, WiFi and 5G SA.

Targets from the paper: the 5G uplink is ~23 % of an average round; the 5G uplink takes 33.3x as long
as Ethernet's and 17.8x as long as WiFi's.

Calibration (documented in docs/flsim.md), from a first pass of two rounds per built-in profile:

* Links: a measured uplink time is the link's serialization time ``B / r`` plus a fixed rest
  ``F = U - B / r`` that Flower adds on this machine whatever the rate (its HTTP requests, hashing and
  protobuf work, round trips). Ethernet keeps its built-in profile; the 5G uplink rate is set so that
  ``F_5g + B / r_5g = 33.3 * U_eth`` and WiFi's so that ``F_wifi + B / r_wifi = (33.3 / 17.8) * U_eth``
  (:func:`calibrate_uplinks`), with ``F`` from pass 1 and ``U_eth`` from the final Ethernet run, which
  runs first. Delays, jitter and downlinks stay as built in.
* Compute: the paper's clients are Raspberry Pis, far slower than this machine. The pass-1 runs train
  different numbers of local epochs (training does not depend on the link), which fits
  ``train = a + b * epochs``; the final runs train the epochs that give ``T' = U_5g * (1 - s) / s - O``
  (:func:`calibrate_epochs`), with ``U_5g`` the calibrated 5G uplink, ``O`` the mean rest of a
  pass-1 5G round (all but uplink and training) and the target share ``s`` = 0.23. Pass 1 trains
  several epochs so that the two clients' training overlaps as in the final runs (a one-epoch fit
  underestimated long training by 10-20 % on this machine).

The final runs measure every figure afresh (with their own noise, stragglers and polling); the
calibration only sets two uplink rates and the local epochs.

A third, **link-only** figure sends the model's bytes once over each profile's emulated link with a plain
TCP probe (no Flower): it isolates what the links contribute from what Flower's transport adds.

Two definitions of "uplink" are reported for the Flower runs: ``transport`` (flsim's ``uplink`` phase: the node's send to
the SuperLink) and ``app_level`` (what the paper's app-level timer saw: client serialize + handoff +
uplink + the server's poll wait + server deserialize).
"""

from __future__ import annotations

import os
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import Any

from flsim.errors import FlsimError
from flsim.links import TCP_PAYLOAD_SHARE, LinkProfile

PROFILES = ("ethernet", "wifi", "5g-sa")  # the paper's three access links, Ethernet first (the reference)
TARGET_SHARE = 0.23
TARGET_RATIO_ETHERNET = 33.3
TARGET_RATIO_WIFI = 17.8
PASS1_EPOCHS = {"ethernet": 4, "wifi": 12, "5g-sa": 8}  # different on purpose: they fit train = a + b * epochs
APP_LEVEL_UPLINK = ("client_serialize", "client_handoff", "uplink", "server_poll_wait", "server_deserialize")


def calibrate_epochs(pass1: Mapping[str, Mapping[str, Any]], epochs: Mapping[str, int],
                     share: float = TARGET_SHARE, uplink_s: float | None = None,
                     max_epochs: int = 1000) -> tuple[int, dict[str, float]]:
    """Local epochs for the final runs from the pass-1 summaries (see the module docstring).

    ``epochs`` gives the epochs each pass-1 run trained (keyed like ``pass1``, which must hold ``5g-sa``).
    Training time does not depend on the link, so every run's rounds feed one fit
    ``train = a + b * epochs``. The rest of a round ``O`` (all but uplink and training) is the 5G run's
    mean: a slow link lengthens more than its own phases (the downlink, and the server's pull when it
    starts while a reply is still uploading).
    ``uplink_s`` replaces the measured 5G uplink by the one the final runs are calibrated to have.
    Returns the epochs and the fit (``a``, ``b``, the rest ``O`` of the 5G round, the target train time).
    """
    if "5g-sa" not in pass1:
        raise FlsimError("epoch calibration needs a 5g-sa run")
    points = [(float(epochs[name]), r["mean_phase_seconds"]["train"]) for name in pass1 for r in _rounds(pass1[name])]
    a, b = _line(points)
    if b <= 0:
        raise FlsimError(f"calibration runs show no training time per epoch (fit {a:.3f} + {b:.3f} * epochs)")
    g5 = _rounds(pass1["5g-sa"])
    other = statistics.mean(r["seconds"] - r["mean_phase_seconds"]["uplink"] - r["mean_phase_seconds"]["train"]
                            for r in g5)
    uplink = statistics.mean(r["mean_phase_seconds"]["uplink"] for r in g5)
    uplink = uplink if uplink_s is None else uplink_s
    target_train = uplink * (1 - share) / share - other
    chosen = int(min(max_epochs, max(1, round((target_train - a) / b))))
    return chosen, {"train_fixed_s": a, "train_per_epoch_s": b, "rest_of_round_s": other,
                    "uplink_s": uplink, "target_train_s": target_train}


def _line(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares ``(a, b)`` of ``y = a + b x``; through the origin when all ``x`` are equal."""
    xs = [x for x, _ in points]
    if len(set(xs)) < 2:
        return 0.0, statistics.mean(y / x for x, y in points)
    slope, intercept = statistics.linear_regression(xs, [y for _, y in points])
    return intercept, slope


def calibrate_uplinks(pass1: Mapping[str, Mapping[str, Any]], profiles: Mapping[str, LinkProfile],
                      ratio_ethernet: float = TARGET_RATIO_ETHERNET, ratio_wifi: float = TARGET_RATIO_WIFI,
                      ethernet_uplink_s: float | None = None) -> tuple[dict[str, LinkProfile], dict[str, Any]]:
    """WiFi and 5G uplink rates that give the paper's uplink ratios to Ethernet (module docstring).

    ``pass1`` and ``profiles`` are keyed ``ethernet``, ``wifi``, ``5g-sa`` (the summaries of the pass-1
    runs over ``profiles``). ``ethernet_uplink_s`` replaces pass 1's Ethernet uplink as the reference
    (the final Ethernet run's, so that its noise does not enter the ratios twice). Returns the calibrated
    profiles and what the fit saw and predicts.
    """
    missing = set(PROFILES) - (set(pass1) & set(profiles))
    if missing:
        raise FlsimError(f"uplink calibration needs runs and profiles for {sorted(missing)}")
    seen: dict[str, dict[str, float]] = {}
    for name in PROFILES:
        rounds = _rounds(pass1[name])
        uplink = statistics.mean(r["mean_phase_seconds"]["uplink"] for r in rounds)
        per_client = statistics.mean(r["bytes"]["uplink"] / max(1, len(r["clients"])) for r in rounds)
        ip_bits = per_client * 8 / TCP_PAYLOAD_SHARE
        wire = ip_bits / (profiles[name].up_mbit * 1e6)
        seen[name] = {"uplink_s": uplink, "ip_bits": ip_bits, "link_s": wire, "fixed_s": max(0.0, uplink - wire)}
    reference = seen["ethernet"]["uplink_s"] if ethernet_uplink_s is None else ethernet_uplink_s
    targets = {"5g-sa": ratio_ethernet * reference}
    targets["wifi"] = targets["5g-sa"] / ratio_wifi
    out = dict(profiles)
    for name, target in targets.items():
        room = target - seen[name]["fixed_s"]
        if room <= 0:
            raise FlsimError(f"cannot calibrate {name}: its fixed uplink cost {seen[name]['fixed_s']:.3f} s "
                             f"already exceeds the target uplink {target:.3f} s")
        out[name] = replace(profiles[name], up_mbit=round(seen[name]["ip_bits"] / room / 1e6, 4))
    info = {"pass1": seen, "ethernet_reference_s": reference, "target_uplink_s": targets,
            "up_mbit": {n: out[n].up_mbit for n in PROFILES}}
    return out, info


def uplink_stats(summary: Mapping[str, Any]) -> dict[str, float]:
    """Mean per-client uplink seconds (transport and app-level), round seconds and shares."""
    rounds = summary["rounds"]
    transport = statistics.mean(r["mean_phase_seconds"]["uplink"] for r in rounds)
    app = statistics.mean(sum(r["mean_phase_seconds"][p] for p in APP_LEVEL_UPLINK) for r in rounds)
    round_s = statistics.mean(r["seconds"] for r in rounds)
    return {"round_s": round_s, "uplink_transport_s": transport, "uplink_app_level_s": app,
            "share_transport": transport / round_s, "share_app_level": app / round_s}


def compare(summaries: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The paper's table from three run summaries keyed ``ethernet``, ``wifi``, ``5g-sa``."""
    missing = set(PROFILES) - set(summaries)
    if missing:
        raise FlsimError(f"the comparison needs runs for {sorted(missing)}")
    stats = {k: uplink_stats(v) for k, v in summaries.items()}
    g5, eth, wifi = stats["5g-sa"], stats["ethernet"], stats["wifi"]
    out: dict[str, Any] = {"profiles": stats, "targets": {
        "5g_uplink_share": TARGET_SHARE, "5g_over_ethernet": TARGET_RATIO_ETHERNET, "5g_over_wifi": TARGET_RATIO_WIFI}}
    for kind in ("transport", "app_level"):
        key = f"uplink_{kind}_s"
        out[kind] = {"5g_uplink_share": g5[f"share_{kind}"], "5g_over_ethernet": g5[key] / eth[key],
                     "5g_over_wifi": g5[key] / wifi[key]}
    out["within_targets"] = _within(out["transport"])
    return out


def link_only(profiles: Mapping[str, LinkProfile], nbytes: int) -> dict[str, Any]:
    """Model-sized TCP uplink over each profile's emulated link (needs root); seconds and 5G ratios."""
    from netsim.fabric.access import AccessLink
    from netsim.fabric.probe import measure

    seconds = {}
    tag, net = f"flp{os.getpid() % 100000}", 244 + (os.getpid() % 4) * 2
    for i, (name, profile) in enumerate(profiles.items()):
        with AccessLink(f"{tag}{i}", 200 + i, profile.spec(), net=net) as link:
            seconds[name] = measure(link.exec_prefix(), link.server_ip, "up", nbytes)["seconds"]
    out: dict[str, Any] = {"uplink_s": seconds, "bytes": nbytes}
    if set(PROFILES) <= set(seconds):
        out.update({"5g_over_ethernet": seconds["5g-sa"] / seconds["ethernet"],
                    "5g_over_wifi": seconds["5g-sa"] / seconds["wifi"]})
    return out


def _rounds(summary: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
    if not summary.get("rounds"):
        raise FlsimError("calibration run recorded no round")
    return summary["rounds"]


def _within(measured: Mapping[str, float]) -> dict[str, bool]:
    return {"5g_uplink_share": abs(measured["5g_uplink_share"] - TARGET_SHARE) <= 0.03,
            "5g_over_ethernet": abs(measured["5g_over_ethernet"] / TARGET_RATIO_ETHERNET - 1) <= 0.10,
            "5g_over_wifi": abs(measured["5g_over_wifi"] / TARGET_RATIO_WIFI - 1) <= 0.10}


def rows(table: Mapping[str, Any]) -> Sequence[tuple[str, str, str, str]]:
    """(figure, target, transport, app-level) rows for printing."""
    t, a, g = table["transport"], table["app_level"], table["targets"]
    return [("5G uplink share of a round", f"{g['5g_uplink_share']:.0%}", f"{t['5g_uplink_share']:.1%}",
             f"{a['5g_uplink_share']:.1%}"),
            ("5G / Ethernet uplink", f"{g['5g_over_ethernet']}x", f"{t['5g_over_ethernet']:.1f}x",
             f"{a['5g_over_ethernet']:.1f}x"),
            ("5G / WiFi uplink", f"{g['5g_over_wifi']}x", f"{t['5g_over_wifi']:.1f}x", f"{a['5g_over_wifi']:.1f}x")]
