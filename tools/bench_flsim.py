"""flsim benchmarks: instrumentation overhead and link accuracy.

    python tools/bench_flsim.py overhead [--run DIR]   # cost per round vs a measured round (summary.json)
    python tools/bench_flsim.py links [--quick]        # measured vs configured rate and delay (root)

``overhead`` times what the instrumentation adds to a round: every event mark (to a JSON-lines file),
the client mod around a handler with a ~2.9 MB ArrayRecord (byte counting + marks record), and the
server's per-reply bookkeeping; it multiplies by the events of one round and divides by the round
time of a real run (``--run``: a ``flsim run`` output directory).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def overhead(run_dir: Path | None, clients: int) -> dict:
    from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict

    from flsim.model import SqueezeNetCifar
    from flsim.recorder import RoundRecorder
    from integrations.flower.mods import flsim_client_mod, message_bytes

    with tempfile.TemporaryDirectory() as d:
        rec = RoundRecorder("server", Path(d) / "e.jsonl", host="h")
        n = 5000
        t0 = time.perf_counter()
        for i in range(n):
            rec.mark("push_end", round=1, stage="train", msg=f"m{i}", node="1", bytes=123)
        mark_s = (time.perf_counter() - t0) / n
        rec.close()

    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity._run_id = TaskIdentity._node_id = TaskIdentity._task_id = 1  # outside a Flower process: fix the identity
    arrays = ArrayRecord(SqueezeNetCifar().state_dict())
    msg = Message(RecordDict({"arrays": arrays}), dst_node_id=1, message_type="train")
    ctx = Context(run_id=1, node_id=1, node_config={"partition-id": 0}, state=RecordDict(), run_config={})

    def handler(m: Message, c: Context) -> Message:
        return Message(RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 1})}), reply_to=m)

    def timed(fn, reps: int = 30) -> float:
        samples = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
        return statistics.median(samples)

    # a reply must look like it came back from the SuperLink for `reply_to`; give msg an id
    msg.metadata.__dict__["_message_id"] = "x" * 64
    plain = timed(lambda: handler(msg, ctx))
    modded = timed(lambda: flsim_client_mod(msg, ctx, handler))
    count = timed(lambda: message_bytes(msg))
    # the node's check that a reply's objects are all in its store before send_start (one per reply)
    from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree

    from integrations.flower.supernode import reply_objects_stored

    reply = handler(msg, ctx)
    tree, store = get_object_tree(reply), {k: b"x" for k in get_all_nested_objects(reply)}
    ready_check = timed(lambda: reply_objects_stored(store, tree))
    # per round: server marks (round_start, 2x stage_start, 2x aggregate_start/end, round_end = 8) plus per
    # client and stage 3 server + 4 client marks and 2 byte counts (push, reply); node: 4 marks
    server_marks = 8 + clients * 2 * (3 + 4)
    per_round_server = server_marks * mark_s + clients * 2 * 2 * count
    per_round_client = 2 * (max(modded - plain, 0.0) + ready_check) + 2 * 4 * mark_s  # per stage + node marks
    out = {"mark_us": mark_s * 1e6, "client_mod_extra_ms": (modded - plain) * 1e3,
           "message_bytes_count_ms": count * 1e3, "reply_ready_check_ms": ready_check * 1e3,
           "per_round_server_ms": per_round_server * 1e3,
           "per_round_client_ms": per_round_client * 1e3, "clients": clients}
    if run_dir is not None:
        summary = json.loads((run_dir / "summary.json").read_text())
        rounds = [r["seconds"] for r in summary["rounds"]]
        round_s = statistics.median(rounds)
        out.update(run=str(run_dir), profile=summary["profile"]["name"], median_round_s=round_s,
                   overhead_pct=100 * (per_round_server + per_round_client) / round_s)
    return out


def links(quick: bool) -> list[dict]:
    from netsim.fabric import AccessLink, LinkSpec
    from netsim.fabric.probe import measure

    rows = []
    rates = [1, 10, 50, 100, 200] if not quick else [1, 50]
    for i, mbit in enumerate(rates):
        with AccessLink("flsb", 20 + i, LinkSpec(down_bps=mbit * 1e6, up_bps=mbit * 1e6)) as link:
            nbytes = int(mbit * 1e6 / 8 * 3)  # ~3 s per transfer
            up = measure(link.exec_prefix(), link.server_ip, "up", nbytes)["goodput_bps"]
            down = measure(link.exec_prefix(), link.server_ip, "down", nbytes)["goodput_bps"]
        # tbf counts IP packets: 1500-byte MTU, 52 bytes of IP+TCP headers (timestamps) per packet
        ip_factor = 1500 / 1448
        rows.append({"kind": "rate", "configured_mbit": mbit, "up_ip_mbit": up * ip_factor / 1e6,
                     "down_ip_mbit": down * ip_factor / 1e6,
                     "up_err_pct": 100 * (up * ip_factor / (mbit * 1e6) - 1),
                     "down_err_pct": 100 * (down * ip_factor / (mbit * 1e6) - 1)})
    for j, delay in enumerate([5.0, 20.0] if not quick else [10.0]):
        spec = LinkSpec(down_bps=100e6, up_bps=100e6, down_delay_ms=delay, up_delay_ms=delay)
        with AccessLink("flsb", 40 + j, spec) as link:
            rtt = measure(link.exec_prefix(), link.server_ip, "rtt", 21)["rtt_s"]
        rows.append({"kind": "delay", "configured_one_way_ms": delay, "measured_one_way_ms": rtt * 1e3 / 2,
                     "err_ms": rtt * 1e3 / 2 - delay})
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    o = sub.add_parser("overhead")
    o.add_argument("--run", type=Path, default=None)
    o.add_argument("--clients", type=int, default=3)
    sub.add_parser("links").add_argument("--quick", action="store_true")
    a = p.parse_args()
    result = overhead(a.run, a.clients) if a.cmd == "overhead" else links(a.quick)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
