import math

import pytest

from flsim.errors import RecordError
from flsim.phases import CHAIN, PHASES, assemble, check_sums, clock_offsets
from flsim.recorder import RoundRecorder, read_events


def synthetic_round(rnd=1, clients=("a", "b"), skew=0.0, host="srv", client_host="srv", t0=0.0):
    """Events of one round with per-client phase durations that differ (client 'b' is slower)."""
    ev = []
    srv = {"src": "server", "host": host, "round": rnd}
    ev.append(dict(ev="round_start", t=t0, **srv))
    t = t0
    for stage in ("train", "evaluate"):
        ev.append(dict(ev="stage_start", t=t, stage=stage, **srv))
        last = t
        for k, c in enumerate(clients):
            msg = f"{rnd}-{stage}-{c}"
            b = t
            for j, (_, boundary) in enumerate(CHAIN):
                b += 0.1 * (j + 1) * (k + 1)
                src = "server" if boundary in ("push_end", "pull_start", "reply_received") else (
                    "node" if boundary in ("recv_start", "recv_end", "send_start", "send_end") else "client")
                hst = host if src == "server" else client_host
                tt = b + (skew if src != "server" else 0.0)
                ev.append({"ev": boundary, "t": tt, "src": src, "host": hst, "round": rnd, "stage": stage, "msg": msg,
                               "node": c, "client": c, "bytes": 1000 * (j + 1)})
            last = max(last, b)
        ev.append(dict(ev="aggregate_start", t=last + 0.01, stage=stage, **srv))
        ev.append(dict(ev="aggregate_end", t=last + 0.05, stage=stage, **srv))
        t = last + 0.06
    ev.append(dict(ev="round_end", t=t + 0.01, **srv))
    return ev


def test_phases_tile_the_round_and_match_durations():
    [tl] = assemble(synthetic_round())
    check_sums([tl])
    assert tl.clients() == ["a", "b"]
    a = tl.client_phases("a")
    # client a, train stage: phase j lasts 0.1*(j+1); the compute phase is the 6th boundary
    train = {r.phase: r.seconds for r in tl.records if r.client == "a" and r.stage == "train"}
    assert train["train"] == pytest.approx(0.6)
    assert train["uplink"] == pytest.approx(0.9)
    assert a["straggler_wait"] > 0 and tl.client_phases("b")["straggler_wait"] == pytest.approx(0.02)
    assert tl.straggler() == "b"
    assert set(a) == set(PHASES)
    assert all(r.seconds >= 0 for r in tl.records)
    assert tl.clamped == 0
    assert math.isclose(sum(a.values()), tl.seconds)


def test_other_host_is_shifted_by_estimated_offset():
    [same] = assemble(synthetic_round())
    skewed = synthetic_round(skew=40.0, client_host="pi")
    est = clock_offsets(skewed)["pi"]
    assert est.low <= 40.0 <= est.high and est.error_bound < 2.0
    [shifted] = assemble(skewed)
    check_sums([shifted])
    for c in ("a", "b"):
        for p, s in same.client_phases(c).items():
            # a shift lands in the phases that cross hosts; bounded by the estimate's error, not 40 s
            assert shifted.client_phases(c)[p] == pytest.approx(s, abs=2 * est.error_bound + 1e-6), p
    [naive] = assemble(skewed, server_host="pi")  # treat the clocks as one: 40 s lands in one phase
    assert max(naive.client_phases("a").values()) > 39


def test_out_of_order_boundary_is_clamped_and_counted():
    ev = synthetic_round()
    for e in ev:
        if e["ev"] == "recv_start" and e["msg"] == "1-train-a":
            e["t"] -= 5.0  # the node polled before the push call returned
    [tl] = assemble(ev)
    check_sums([tl])
    assert tl.clamped == 1
    assert all(r.seconds >= 0 for r in tl.records)


def test_missing_and_duplicate_events_are_reported():
    ev = [e for e in synthetic_round() if not (e["ev"] == "send_end" and e["msg"] == "1-train-b")]
    with pytest.raises(RecordError, match=r"client 'b'.*send_end"):
        assemble(ev)
    dup = next(e for e in synthetic_round() if e["ev"] == "send_end")
    with pytest.raises(RecordError, match="recorded twice"):
        assemble(synthetic_round() + [dup])


def test_recorder_jsonl_round_trip(tmp_path):
    path = tmp_path / "server.jsonl"
    with RoundRecorder("server", path, host="h") as rec:
        rec.mark("round_start", round=1)
        with rec.span("phase", round=1):
            pass
    events = read_events(tmp_path)
    assert [e["ev"] for e in events] == ["round_start", "phase_start", "phase_end"]
    assert events[1]["t"] <= events[2]["t"] and events[0]["host"] == "h"
    (tmp_path / "bad.jsonl").write_text('{"ev": "x"}\n')
    with pytest.raises(RecordError, match="bad.jsonl:1.*'ev' and 't'"):
        read_events(tmp_path)
