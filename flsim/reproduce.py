"""Reproduce Hayek et al. (arXiv 2504.04678): FL rounds over Ethernet, WiFi and 5G SA.

Targets from the paper: the 5G uplink is ~23 % of an average round; the 5G uplink takes 33.3x as long
as Ethernet's and 17.8x as long as WiFi's.

Calibration (documented in docs/flsim.md):

* Links: the built-in profiles. Their uplink rates carry the paper's ratios for the 2.9 MB model
  (Ethernet 94, WiFi 50, 5G 3 Mbit/s at the IP layer: transfer times 1 : 1.9 : 31), plus delays.
* Compute: the paper's clients are Raspberry Pis, far slower than this machine. Pass 1 runs one 5G
  round with a small training set and measures the uplink ``U``, the training time ``T`` and everything
  else ``O``. The training set of pass 2 is scaled so that ``T' = U * (1 - s) / s - O`` with the target
  share ``s`` = 0.23, i.e. so that the emulated Pi computes as long as the paper's round implies.
  The links are not touched by this step, so the ratios are not calibrated by it, and pass 2 measures
  the share anew (with its own noise, stragglers and polling).

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
from typing import Any

from flsim.errors import FlsimError

TARGET_SHARE = 0.23
TARGET_RATIO_ETHERNET = 33.3
TARGET_RATIO_WIFI = 17.8
APP_LEVEL_UPLINK = ("client_serialize", "client_handoff", "uplink", "server_poll_wait", "server_deserialize")


def calibrate_samples(pass1: Mapping[str, Any], samples: int, share: float = TARGET_SHARE,
                      max_samples: int = 4096) -> int:
    """Training-set size for pass 2 from a pass-1 summary (see the module docstring)."""
    rounds = pass1["rounds"]
    if not rounds:
        raise FlsimError("calibration run recorded no round")
    mean = {p: statistics.mean(r["mean_phase_seconds"][p] for r in rounds) for p in rounds[0]["mean_phase_seconds"]}
    round_s = statistics.mean(r["seconds"] for r in rounds)
    uplink, train = mean["uplink"], mean["train"]
    other = round_s - uplink - train
    target_train = uplink * (1 - share) / share - other
    if target_train <= 0:
        return samples  # the rest of the round already exceeds the paper's: train as little as pass 1
    if train <= 0:
        raise FlsimError("calibration run recorded no training time")
    return int(min(max_samples, max(samples, round(samples * target_train / train))))


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
    missing = {"ethernet", "wifi", "5g-sa"} - set(summaries)
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


def link_only(profiles: Sequence[str], nbytes: int) -> dict[str, Any]:
    """Model-sized TCP uplink over each profile's emulated link (needs root); seconds and 5G ratios."""

    from flsim.links import load_profile
    from netsim.fabric.access import AccessLink
    from netsim.fabric.probe import measure

    seconds = {}
    tag, net = f"flp{os.getpid() % 100000}", 244 + (os.getpid() % 4) * 2
    for i, name in enumerate(profiles):
        with AccessLink(f"{tag}{i}", 200 + i, load_profile(name).spec(), net=net) as link:
            seconds[name] = measure(link.exec_prefix(), link.server_ip, "up", nbytes)["seconds"]
    out: dict[str, Any] = {"uplink_s": seconds, "bytes": nbytes}
    if {"5g-sa", "ethernet", "wifi"} <= set(seconds):
        out.update({"5g_over_ethernet": seconds["5g-sa"] / seconds["ethernet"],
                    "5g_over_wifi": seconds["5g-sa"] / seconds["wifi"]})
    return out


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
