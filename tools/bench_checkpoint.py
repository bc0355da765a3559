"""Side-by-side checkpoint benchmark: ours (sync and async) against PyTorch DCP (save, async_save in
thread and process mode), optionally ByteDance's ByteCheckpoint 0.0.2 (its own venv), and the
floors of the machine, on the same state, in one run.

States (the same for every system; values are a deterministic function of tensor and global index,
so every load is checked element by element, in any layout):
  --mode plain   one process, --mib MiB of float32 in --tensors tensors (a plain state dict)
  --mode fsdp2   --ranks processes (gloo on CPU, NCCL on GPU), a stack of --layers Linear layers
                 fully_shard-ed, AdamW after one step; parameters + moments ~ --mib-per-rank each

Each round runs every system in turn, the order rotating (A B C, B C A, ...): the old checkpoint is
deleted and the disk synced first (not charged), the save is timed on every rank (stall: the save
call; save: until wait()/result() returns, i.e. committed), the page cache of its files dropped,
then (sync rows every round, async rows in the last round) it is loaded back into zeroed tensors and
checked. The figure of a round is the slowest rank's; the table shows medians over rounds. Peak host
memory is the rise of RSS over the start of the operation (the rank's VmHWM plus sampled children),
the largest rank's in the largest round (buffers kept between saves show in the first one). Floors, in the same rounds: the same bytes written raw to one fsync'd file per
rank and read back cold; on GPU also pinned device-to-host / host-to-device copies. With fsdp2 and
an even --ranks, a second launch of --ranks/2 processes loads each format's last checkpoint
resharded (N -> N/2) and checks every tensor.

    python tools/bench_checkpoint.py --mode plain --mib 1024 --tensors 32 --rounds 5
    python tools/bench_checkpoint.py --mode fsdp2 --ranks 4 --mib-per-rank 384 --rounds 5
    python tools/bench_checkpoint.py --mode fsdp2 --ranks 4 --mib-per-rank 384 --peers bytecheckpoint
    python tools/bench_checkpoint.py --mode plain --device cuda --mib 8192        # one GPU
    python tools/bench_checkpoint.py --mode fsdp2 --device cuda --ranks 2 --mib-per-rank 3072
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "bench_peers"))

import bytecheckpoint_env
import harness as H
from bench_report import machine_info, render_table, write_json

H.quiet_dcp_daemon_logs()  # also runs in DCP's process-mode daemon, which imports this module

GB = 1e9
PEER_RUNNER = HERE / "bench_peers" / "bytecheckpoint_runner.py"
MEGATRON = "Megatron-Core dist_checkpointing: compared with --mode megatron (tools/bench_megatron.py)"


# ---------------------------------------------------------------------------------------------
# our systems (run inside the ranks)


def ours_systems(ctx: H.Ctx) -> list[H.System]:
    import bytecheckpoint as bcp

    fw = "fsdp2" if ctx.mode == "fsdp2" else None
    state = {"model": ctx.model, "optimizer": ctx.optim} if ctx.mode == "fsdp2" else ctx.state

    def phases(summary: Any) -> dict:
        return {"phases": dict(getattr(summary, "phase_seconds", {}) or {})}

    def save(path: Path) -> dict:
        return phases(bcp.save(path, state, framework=fw))

    def async_save(path: Path) -> H.Pending:
        try:
            handle = bcp.save(path, state, framework=fw, async_save=True)
        except TypeError as exc:
            if "async_save" in str(exc):
                raise H.Unsupported("n/a (not supported by this build)") from None
            raise
        pending = H.Pending()

        def wait() -> None:
            pending.extra.update(phases(handle.wait()))

        pending._wait = wait
        return pending

    def load(path: Path) -> dict:
        return phases(bcp.load(path, state, framework=fw))

    return [H.System("ours", "ours (sync)", save, load, "ours", reshard=True),
            H.System("ours_async", "ours (async)", async_save, load, "ours", is_async=True, load_every_round=False,
                     # the first async save allocates the reused (pinned) host buffer; later ones reuse it
                     warmup=lambda p: async_save(p).wait())]


def make_systems(ctx: H.Ctx) -> list[H.System]:
    systems = [H.raw_system(ctx), *ours_systems(ctx), *H.dcp_systems(ctx)]
    chosen = ctx.config.get("systems")
    return [s for s in systems if not chosen or s.name in chosen or s.name == "raw"]


# ---------------------------------------------------------------------------------------------
# aggregation


def per_round(records: list[dict], phase: str, system: str, op: str, key: str) -> list[float]:
    """The slowest (largest) rank's value in each round, for the rounds where every rank succeeded."""
    by_round: dict[int, list[float]] = defaultdict(list)
    for r in records:
        if r["phase"] == phase and r["system"] == system and r["op"] == op and r["ok"] and key in r:
            by_round[r["round"]].append(r[key])
    return [max(v) for _, v in sorted(by_round.items())]


def med(xs: list[float]) -> float | None:
    return statistics.median(xs) if xs else None


def summarize(result: dict, reshard: dict | None, systems: list[tuple[str, str, bool]]) -> dict:
    """Medians per system: stall, save (end to end), load, resharded load, peak host memory."""
    recs = result["records"] + (reshard["records"] if reshard else [])
    rows: dict[str, dict] = {}
    for name, label, is_async in systems:
        row: dict[str, Any] = {"label": label, "async": is_async}
        for key, (phase, op, field) in {
            "stall_s": ("main", "save", "stall"), "stall_synced_s": ("main", "save", "stall_synced"),
            "save_s": ("main", "save", "e2e"), "save_peak_rss_mib": ("main", "save", "peak_rss_mib"),
            "load_s": ("main", "load", "seconds"), "load_peak_rss_mib": ("main", "load", "peak_rss_mib"),
            "reshard_load_s": ("reshard", "load", "seconds"),
            "reshard_peak_rss_mib": ("reshard", "load", "peak_rss_mib"),
        }.items():
            values = per_round(recs, phase, name, op, field)
            # times: the median round; memory: the largest round (a buffer kept for later saves is
            # allocated in the first one only)
            row[key] = max(values, default=None) if "rss" in key else med(values)
            row[key.removesuffix("_s") + "_rounds"] = values if key.endswith("_s") else None
        for phase in ("main", "reshard"):
            checked = [r.get("verified") for r in recs if r["phase"] == phase and r["system"] == name
                       and r["op"] == "load" and r["ok"] and "verified" in r]
            row[f"{phase}_load_verified"] = (all(checked) if checked else None)
        row = {k: v for k, v in row.items() if v is not None or k.endswith(("_s", "verified"))}
        why = result["status"].get(name) or (reshard or {}).get("status", {}).get(name)
        if why:
            row["status"] = why
        rows[name] = row
    return rows


def floors(result: dict, reshard: dict | None) -> dict:
    recs = result["records"] + (reshard["records"] if reshard else [])
    out = {"disk_write_s": med(per_round(recs, "main", "raw", "save", "write")),
           "disk_read_s": med(per_round(recs, "main", "raw", "load", "read")),
           "pinned_d2h_s": med(per_round(recs, "main", "d2h", "d2h", "d2h")),
           "pinned_h2d_s": med(per_round(recs, "main", "raw", "load", "h2d")),
           "reshard_disk_read_s": med(per_round(recs, "reshard", "raw", "load", "read"))}
    return {k: v for k, v in out.items() if v is not None}


# ---------------------------------------------------------------------------------------------
# the table, ratios and targets


def fs(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.2f}"


def fx(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def fm(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def table_rows(rows: dict, fl: dict, total_bytes: int, dcp_key: str = "dcp") -> tuple[list[list[str]], list[str]]:
    dcp = rows.get(dcp_key, {})
    out, notes = [], []
    star = False
    for name, row in rows.items():
        label = row["label"]
        if row.get("status") and row.get("save_s") is None:
            notes.append(f"[{len(notes) + 1}] {label}: {row['status']}")
            out.append([label, f"n/a [{len(notes)}]"] + ["-"] * 9)
            continue
        if row.get("status"):
            notes.append(f"[{len(notes) + 1}] {label}: {row['status']}")
            label += f" [{len(notes)}]"
        bad = [p for p in ("main", "reshard") if row.get(f"{p}_load_verified") is False]
        if bad:
            label += " MISMATCH(" + ",".join(bad) + ")"
        if name == "raw":
            save, load = fl.get("disk_write_s"), fl.get("disk_read_s")
            stall = "-"
        else:
            save, load = row.get("save_s"), row.get("load_s")
            stall = fs(row.get("stall_s"))
        once = len(row.get("load_rounds") or []) < len(row.get("save_rounds") or []) and name != "raw"
        star = star or once
        out.append([
            label, stall, fs(save), f"{total_bytes / save / GB:.2f}" if save else "-",
            fx(save, fl.get("disk_write_s")), fs(load) + ("*" if once else ""),
            fx(load, dcp.get("load_s")) if name != "raw" and not once else "-",
            fs(row.get("reshard_load_s")), fx(row.get("reshard_load_s"), dcp.get("reshard_load_s")) if name != "raw" else "-",
            fm(row.get("save_peak_rss_mib")), fm(row.get("load_peak_rss_mib")),
        ])
    if star:
        notes.append("* one load (last round): it checks that row's checkpoint; the format loads with the same "
                     "code as its sync row, whose figure is the median")
    return out, notes


HEADERS = ["system", "stall s", "save s", "GB/s", "save/disk", "load s", "load/DCP", "reshard s",
           "reshard/DCP", "peak MiB save", "peak MiB load"]


def verdict(ok: bool | None) -> str:
    return {True: "MET   ", False: "MISSED", None: "n/a   "}[ok]


def targets(scenario: str, rows: dict, fl: dict) -> list[dict]:
    """The issue's targets for this scenario: each {target, verdict, detail}."""
    ours, ours_a, dcp = rows.get("ours", {}), rows.get("ours_async", {}), rows.get("dcp", {})
    a_stall, a_save = ours_a.get("stall_s"), ours_a.get("save_s")
    a_why = ours_a.get("status", "not run")
    dcp_async = [(rows[k]["stall_s"], rows[k]["label"]) for k in ("dcp_async_thread", "dcp_async_process")
                 if rows.get(k, {}).get("stall_s") is not None]
    out: list[dict] = []

    def add(target: str, ok: bool | None, detail: str) -> None:
        out.append({"target": target, "met": ok, "detail": detail})

    def le(a: float | None, b: float | None) -> bool | None:
        return None if a is None or b is None else a <= b

    disk = fl.get("disk_write_s")
    if scenario == "cpu":
        best = min(dcp_async) if dcp_async else (None, "DCP async_save")
        add("stall <= DCP async_save's stall", le(a_stall, best[0]),
            f"ours async {fs(a_stall)} s vs {best[1]} {fs(best[0])} s" if a_stall is not None
            else f"ours async {a_why}; ours sync stall (the whole save) {fs(ours.get('stall_s'))} s vs {best[1]} {fs(best[0])} s")
        add("sync save >= DCP's speed", le(ours.get("save_s"), dcp.get("save_s")),
            f"ours {fs(ours.get('save_s'))} s vs DCP {fs(dcp.get('save_s'))} s ({fx(dcp.get('save_s'), ours.get('save_s'))} DCP's speed)")
        r_o, r_d = ours.get("reshard_load_s"), dcp.get("reshard_load_s")
        add("resharded load >= 3x faster than DCP's", None if r_o is None or r_d is None else r_d / r_o >= 3,
            f"ours {fs(r_o)} s vs DCP {fs(r_d)} s ({fx(r_d, r_o)} faster)")
    elif scenario == "gpu1":
        add("stall <= 0.3 s", le(a_stall, 0.3), f"ours async {fs(a_stall)} s" if a_stall is not None
            else f"ours async {a_why}; ours sync stall (the whole save) {fs(ours.get('stall_s'))} s")
        e2e = a_save if a_save is not None else ours.get("save_s")
        which = "async" if a_save is not None else "sync (async n/a)"
        add("save end to end <= 1.15x raw fsync'd disk floor", le(e2e, None if disk is None else 1.15 * disk),
            f"ours {which} {fs(e2e)} s vs disk floor {fs(disk)} s ({fx(e2e, disk)})")
        add("load faster than DCP", None if ours.get("load_s") is None or dcp.get("load_s") is None
            else ours["load_s"] < dcp["load_s"], f"ours {fs(ours.get('load_s'))} s vs DCP {fs(dcp.get('load_s'))} s")
        add("resharded load faster than DCP", None, "n/a in a one-process run: see the 2-GPU run (2 -> 1)")
    elif scenario == "gpu2":
        add("stall <= 0.2 s per rank", le(a_stall, 0.2), f"ours async, slowest rank {fs(a_stall)} s"
            if a_stall is not None else f"ours async {a_why}; ours sync stall (the whole save) {fs(ours.get('stall_s'))} s")
        ok = ours.get("reshard_load_verified")
        add("saved at 2 GPUs, loaded resharded at 1 GPU, tensors equal", ok,
            f"resharded load {fs(ours.get('reshard_load_s'))} s, every tensor checked: {ok}")
        add("load faster than DCP", None if ours.get("load_s") is None or dcp.get("load_s") is None
            else ours["load_s"] < dcp["load_s"], f"ours {fs(ours.get('load_s'))} s vs DCP {fs(dcp.get('load_s'))} s")
        r_o, r_d = ours.get("reshard_load_s"), dcp.get("reshard_load_s")
        add("resharded load faster than DCP", None if r_o is None or r_d is None else r_o < r_d,
            f"ours {fs(r_o)} s vs DCP {fs(r_d)} s")
        e2e = a_save if a_save is not None else ours.get("save_s")
        add("(1-GPU target, here per rank) save end to end <= 1.15x disk floor",
            le(e2e, None if disk is None else 1.15 * disk), f"ours {fs(e2e)} s vs disk floor {fs(disk)} s ({fx(e2e, disk)})")
    return out


# ---------------------------------------------------------------------------------------------
# the ByteCheckpoint 0.0.2 peer (own venv, own spawn group)


def run_peer(args: argparse.Namespace, cfg: dict, scratch: Path) -> dict:
    info: dict[str, Any] = {"name": "ByteCheckpoint 0.0.2 (PyPI bytecheckpoint==0.0.2)", "venv": args.peer_venv}
    if args.mode != "fsdp2":
        info["skipped"] = ("n/a: ByteCheckpoint 0.0.2 saves ddp/fsdp/fsdp2 model + optimizer states only, "
                           "not plain tensor dicts (run --mode fsdp2)")
        return info
    try:
        python = bytecheckpoint_env.ensure(Path(args.peer_venv), args.peer_wheels, log=lambda m: print(f"[peer] {m}"))
    except Exception as exc:  # noqa: BLE001 - recorded: the benchmark goes on without the peer
        info["skipped"] = f"could not set up its venv: {exc}"
        return info
    work = scratch / "peer"
    work.mkdir(parents=True, exist_ok=True)
    peer_cfg = {**cfg, "root": str(work / "ckpt"), "ranks": args.ranks, "reshard": cfg["reshard"], "reshard_rounds": args.reshard_rounds,
                "result": str(work / "result.json")}
    (work / "config.json").write_text(json.dumps(peer_cfg))
    env = bytecheckpoint_env.clean_env()
    env.setdefault("BYTECHECKPOINT_LOGGING_LEVEL", "WARNING")
    start = time.perf_counter()
    print(f"[peer] running {PEER_RUNNER.name} with {python} ({args.ranks} ranks)", flush=True)
    with open(work / "log.txt", "w") as log:
        try:
            proc = subprocess.run([str(python), str(PEER_RUNNER), str(work / "config.json")], cwd=work, env=env,
                                  stdout=log, stderr=subprocess.STDOUT, timeout=args.peer_timeout, check=False)
            rc: int | str = proc.returncode
        except subprocess.TimeoutExpired:
            rc = f"timed out after {args.peer_timeout} s"
    info["wall_s"] = time.perf_counter() - start
    tail = (work / "log.txt").read_text(errors="replace")[-4000:]
    if rc != 0 or not (work / "result.json").exists():
        info["failed"] = f"runner exit {rc}: {tail[-1500:]}"
        print(f"[peer] failed ({rc}); log tail:\n{tail}", flush=True)
        return info
    info.update(json.loads((work / "result.json").read_text()))
    info["log_tail"] = tail[-1500:]
    return info


# ---------------------------------------------------------------------------------------------


def report(args: argparse.Namespace, cfg: dict, state_desc: str, scenario: str, reshard_why: str | None,
           main_res: dict, reshard_res: dict | None, peer: dict | None, wall: float, say=print) -> dict:
    """Print the tables, floors, peer comparison and target lines (through ``say``); the JSON result."""
    ranks = cfg["ranks"]
    total = sum(main_res["bytes_per_rank"])
    names = [(s["name"], s["label"], s["async"]) for s in main_res["systems"]]
    rows = summarize(main_res, reshard_res, names)
    fl = floors(main_res, reshard_res)
    rows_txt, notes = table_rows(rows, fl, total)
    per_rank = max(main_res["bytes_per_rank"])
    say(f"\n{state_desc}\n{total / 2**20:.0f} MiB in all, {per_rank / 2**20:.0f} MiB on the largest rank "
          f"({main_res['tensors_per_rank']} tensors per rank); medians of {main_res['rounds_done']} interleaved rounds; "
          f"each figure is the slowest rank's; loads checked element by element")
    say(render_table(HEADERS, rows_txt))
    if args.markdown:
        say("\n" + render_table(HEADERS, rows_txt, markdown=True))
    for n in notes:
        say(n)
    say("floors (same run, same bytes):")
    if "disk_write_s" in fl:
        say(f"  fsync'd raw write {fs(fl['disk_write_s'])} s ({per_rank / fl['disk_write_s'] / GB:.2f} GB/s per rank), "
              f"cold raw read {fs(fl.get('disk_read_s'))} s")
    if "pinned_d2h_s" in fl:
        say(f"  pinned device-to-host {fs(fl['pinned_d2h_s'])} s ({per_rank / fl['pinned_d2h_s'] / GB:.1f} GB/s per rank), "
              f"host-to-device {fs(fl.get('pinned_h2d_s'))} s")
    if "reshard_disk_read_s" in fl:
        say(f"  resharded: {ranks // 2} ranks read all {ranks} raw files cold in {fs(fl['reshard_disk_read_s'])} s")
    if reshard_why:
        say(f"resharded load: {reshard_why}")
    for name, label, _ in names:
        warm = per_round(main_res["records"], "main", name, "warmup", "seconds")
        if warm:
            rows[name]["warmup_s"] = warm[0]
            say(f"{label}: one-time start-up before the rounds (not in its row) {fs(warm[0])} s")
    say(MEGATRON)

    peer_rows = None
    if peer is not None:
        say("\nByteCheckpoint 0.0.2 (its own venv and spawn group, after the run above; DCP and the disk floor "
              "rerun beside it as the bridge between the two runs):")
        if peer.get("main"):
            p_total = sum(peer["main"]["bytes_per_rank"])
            p_names = [(s["name"], s["label"], s["async"]) for s in peer["main"]["systems"]]
            peer_rows = summarize(peer["main"], peer.get("reshard"), p_names)
            p_fl = floors(peer["main"], peer.get("reshard"))
            p_txt, p_notes = table_rows(peer_rows, p_fl, p_total)
            say(f"peer venv: {peer.get('version', '?')}; {peer['main']['rounds_done']} rounds")
            say(render_table(HEADERS, p_txt))
            if args.markdown:
                say("\n" + render_table(HEADERS, p_txt, markdown=True))
            for n in p_notes:
                say(n)
            o, d, b = rows.get("ours", {}), rows.get("dcp", {}), peer_rows.get("bcp002", {})
            pd = peer_rows.get("dcp", {})
            for what, key in (("save", "save_s"), ("load", "load_s"), ("resharded load", "reshard_load_s")):
                say(f"  {what} time / DCP's in the same run: ours {fx(o.get(key), d.get(key))}, "
                      f"ByteCheckpoint 0.0.2 {fx(b.get(key), pd.get(key))}")
        else:
            say(f"  not run: {peer.get('skipped') or peer.get('failed')}")

    tg = targets(scenario, rows, fl)
    if tg:
        say(f"\ntargets ({scenario}):")
        for t in tg:
            say(f"  {verdict(t['met'])} {t['target']}: {t['detail']}")
    say(f"(wall time {wall:.0f} s)")

    result = {
        "benchmark": "checkpoint_side_by_side",
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "command": [sys.executable, *sys.argv],
        "machine": {**machine_info(), **main_res.get("device_info", {})},
        "state": state_desc,
        "config": {k: v for k, v in cfg.items() if k not in ("root",)} | {"scenario": scenario},
        "rounds_done": main_res["rounds_done"],
        "bytes_total": total,
        "bytes_per_rank": main_res["bytes_per_rank"],
        "floors_s": fl,
        "rows": rows,
        "reshard": {"from_ranks": ranks, "to_ranks": ranks // 2} if reshard_res else reshard_why,
        "targets": tg,
        "megatron": MEGATRON,
        "peers": ({"bytecheckpoint": {**{k: v for k, v in peer.items() if k not in ("main", "reshard")},
                                      "rows": peer_rows,
                                      "floors_s": floors(peer["main"], peer.get("reshard")) if peer.get("main") else None,
                                      "records": {"main": peer.get("main", {}).get("records"),
                                                  "reshard": (peer.get("reshard") or {}).get("records")}}}
                  if peer is not None else {}),
        "wall_s": wall,
        "records": {"main": main_res["records"], "reshard": reshard_res["records"] if reshard_res else None},
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("plain", "fsdp2", "megatron"), default="plain",
                        help="megatron: ours vs Megatron dist_checkpointing on a GPT, 4 ranks (tools/bench_megatron.py)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where the state lives")
    parser.add_argument("--mib", type=float, default=1024, help="plain: MiB of float32 state")
    parser.add_argument("--tensors", type=int, default=32, help="plain: number of tensors")
    parser.add_argument("--ranks", type=int, default=4, help="fsdp2: processes (one GPU each on cuda)")
    parser.add_argument("--mib-per-rank", type=float, default=384, help="fsdp2: state (params + AdamW moments) per rank")
    parser.add_argument("--layers", type=int, default=8, help="fsdp2: Linear layers; megatron: transformer layers")
    parser.add_argument("--megatron-hidden", type=int, default=256, help="megatron: hidden size")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=None,
                        help="stop the save/load rounds early (at least one) when the next would pass this many seconds")
    parser.add_argument("--systems", default="", help="comma list of rows to run (default all): "
                        "ours,ours_async,dcp,dcp_async_thread,dcp_async_process (raw always runs)")
    parser.add_argument("--no-reshard", action="store_true", help="fsdp2: skip the N -> N/2 resharded loads")
    parser.add_argument("--reshard-rounds", type=int, default=None, help="rounds of resharded loads (default --rounds)")
    parser.add_argument("--peers", default="", help="comma list of peers in venvs of their own: bytecheckpoint")
    parser.add_argument("--peer-venv", default=str(bytecheckpoint_env.DEFAULT_VENV))
    parser.add_argument("--peer-wheels", default=None, help="install the peer from these wheels (no registry)")
    parser.add_argument("--peer-timeout", type=float, default=3600)
    parser.add_argument("--pg-timeout", type=float, default=900, help="seconds for collectives before giving up")
    parser.add_argument("--dir", default=None, help="scratch directory on the disk to measure (default: temp)")
    parser.add_argument("--out", default="bench-results/checkpoint.json")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown too")
    args = parser.parse_args()
    if args.mode == "megatron":
        import bench_megatron

        bench_megatron.run(args.rounds, args.out, args.dir, args.layers, args.megatron_hidden, args.pg_timeout)
        return

    ranks = 1 if args.mode == "plain" else args.ranks
    cfg: dict[str, Any] = {"mode": args.mode, "device": args.device, "rounds": args.rounds, "budget_s": args.budget_s,
                           "pg_timeout": args.pg_timeout, "layers": args.layers, "mib": args.mib,
                           "tensors": args.tensors, "phase": "main",
                           "systems": [s for s in args.systems.split(",") if s]}
    if args.mode == "fsdp2":
        cfg["width"] = H.fsdp2_width(args.mib_per_rank, ranks, args.layers)
        state_desc = (f"FSDP2 + AdamW (1 step), {args.layers} x Linear({cfg['width']}, {cfg['width']}), "
                      f"{ranks} ranks on {args.device} ({'NCCL' if args.device == 'cuda' else 'gloo'})")
    else:
        state_desc = f"plain state dict: {args.mib:.0f} MiB in {args.tensors} float32 tensors on {args.device}, 1 process"
    reshard_why = None
    if args.mode != "fsdp2":
        reshard_why = "n/a: one process (resharding is measured with --mode fsdp2)"
    elif args.no_reshard:
        reshard_why = "skipped (--no-reshard)"
    elif ranks < 2 or ranks % 2:
        reshard_why = f"n/a: {ranks} ranks (needs an even number >= 2 for N -> N/2)"
    cfg["reshard"] = reshard_why is None
    cfg["ranks"] = ranks
    scenario = {("cuda", "plain"): "gpu1", ("cuda", "fsdp2"): "gpu2", ("cpu", "fsdp2"): "cpu"}.get((args.device, args.mode), "none")

    scratch = Path(tempfile.mkdtemp(prefix="bcp-bench-", dir=args.dir))
    cfg["root"] = str(scratch / "ckpt")
    print(f"state: {state_desc}; {args.rounds} rounds; scratch {scratch}", flush=True)
    started = time.perf_counter()
    try:
        main_res = H.launch(ranks, cfg, make_systems, scratch)
        partial = report(args, cfg, state_desc, scenario, reshard_why, main_res, None, None,
                         time.perf_counter() - started, say=lambda *a, **k: None)
        write_json(args.out, {**partial, "partial": "written after the save/load rounds; the run went on"})
        reshard_res = None
        if cfg["reshard"]:
            print(f"resharded loads: {ranks} -> {ranks // 2} ranks", flush=True)
            try:
                reshard_res = H.launch(ranks // 2, {**cfg, "phase": "reshard", "saved_world": ranks,
                                                    "rounds": args.reshard_rounds or args.rounds}, make_systems, scratch)
            except Exception as exc:  # noqa: BLE001 - the save/load figures still get reported
                reshard_why = f"failed: {type(exc).__name__}: {str(exc)[-800:]}"
                print(f"resharded loads {reshard_why}", flush=True)
        H.remove(scratch / "ckpt")
        peer = run_peer(args, cfg, scratch) if "bytecheckpoint" in args.peers.split(",") else None
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    wall = time.perf_counter() - started

    write_json(args.out, report(args, cfg, state_desc, scenario, reshard_why, main_res, reshard_res, peer, wall))


if __name__ == "__main__":
    main()
