"""Storage backends: bytecheckpoint on S3 against raw s3fs, and fsspec-local against local disk.

In each round, interleaved (the order rotates between rounds), on the same state:
  s3 raw put / get   - s3fs ``pipe_file`` of the same bytes as one object / ``cat_file`` of it
                       (s3fs's own multipart upload and concurrent ranged reads)
  s3 bcp save / load - bytecheckpoint.save / load to ``s3://`` (S3Storage: multipart, retries,
                       checksums, metadata committed last)
  local / fsspec-local save / load - LocalStorage vs FsspecStorage("file://...") (both fsync'd)
The S3 server is a moto server process on loopback, started here unless ``--endpoint`` is given.
Medians over rounds are printed with throughput ratios and written as JSON.

    python tools/bench_storage.py --mib 256 --rounds 5 --out bench-results/storage.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
from bench_report import report

import bytecheckpoint as bcp
from bytecheckpoint.storage import LocalStorage
from bytecheckpoint.storage.fsspec import FsspecStorage


def make_state(mib: int, tensors: int) -> dict[str, torch.Tensor]:
    numel = mib * (1 << 20) // 4 // tensors
    g = torch.Generator().manual_seed(0)
    return {f"layer{i}.weight": torch.randn(numel, generator=g) for i in range(tensors)}


def start_moto() -> tuple[subprocess.Popen, str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(exe) if exe.exists() else "moto_server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                return proc, endpoint
        except OSError:
            time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    raise RuntimeError("moto_server did not start")


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256, help="state size")
    parser.add_argument("--tensors", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--part-mib", type=int, default=16, help="S3 multipart part size")
    parser.add_argument("--read-part-mib", type=int, default=64, help="S3 ranged GET size in MiB")
    parser.add_argument("--concurrency", type=int, default=8, help="S3 parts in flight")
    parser.add_argument("--endpoint", default=None, help="S3 endpoint (default: start a moto server)")
    parser.add_argument("--bucket", default="bcp-bench")
    parser.add_argument("--dir", default=None, help="scratch directory for the local comparison (default: temp)")
    parser.add_argument("--out", default="bench-results/storage.json")
    args = parser.parse_args()

    for k, v in {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"}.items():
        os.environ.setdefault(k, v)
    server, endpoint = (None, args.endpoint) if args.endpoint else start_moto()
    import s3fs

    from bytecheckpoint.storage.s3 import S3Storage

    state = make_state(args.mib, args.tensors)
    target = {k: torch.empty_like(v) for k, v in state.items()}
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    blob = b"".join(memoryview(t.numpy()).cast("B") for t in state.values())  # raw s3fs gets the same bytes
    raw_fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
    raw_fs.mkdir(args.bucket)
    run = uuid.uuid4().hex[:8]
    raw_key = f"{args.bucket}/raw-{run}.bin"
    read_part = args.read_part_mib << 20
    s3 = S3Storage(f"s3://{args.bucket}/bcp-{run}", endpoint_url=endpoint, part_size=args.part_mib << 20,
                   read_part_size=read_part, concurrency=args.concurrency)
    scratch = Path(tempfile.mkdtemp(prefix="bcp-bench-storage-", dir=args.dir))
    local = LocalStorage(scratch / "local")
    fss = FsspecStorage(f"file://{scratch / 'fsspec'}")

    def raw_get() -> None:
        got = raw_fs.cat_file(raw_key)
        assert len(got) == nbytes

    save_ops: dict[str, Callable[[], object]] = {
        "s3_raw": lambda: raw_fs.pipe_file(raw_key, blob),
        "s3_bcp": lambda: bcp.save(s3, state),
        "local": lambda: bcp.save(local, state),
        "fsspec_local": lambda: bcp.save(fss, state),
    }
    load_ops: dict[str, Callable[[], object]] = {
        "s3_raw": raw_get,
        "s3_bcp": lambda: bcp.load(s3, target),
        "local": lambda: bcp.load(local, target),
        "fsspec_local": lambda: bcp.load(fss, target),
    }
    times: dict[str, list[float]] = {f"{k}_{op}": [] for k in save_ops for op in ("save", "load")}
    try:
        names = list(save_ops)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[: r % len(names)]
            for name in order:
                times[f"{name}_save"].append(timed(save_ops[name]))
            for name in order:
                for t in target.values():
                    t.zero_()
                times[f"{name}_load"].append(timed(load_ops[name]))
                if name != "s3_raw":
                    assert all(torch.equal(target[k], state[k]) for k in state), f"{name}: loaded values differ"
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
                  flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            raw_fs.rm_file(raw_key)
            s3.delete_prefix("")
        except Exception as exc:  # noqa: BLE001 - the server may be gone
            print(f"cleanup of the bench objects failed: {exc}")
        if server is not None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()

    report(
        "storage_backends",
        times,
        list(save_ops),
        nbytes,
        {
            "s3_bcp_save_vs_raw_put_throughput": ("s3_raw_save", "s3_bcp_save"),
            "s3_bcp_load_vs_raw_get_throughput": ("s3_raw_load", "s3_bcp_load"),
            "fsspec_local_save_vs_local_throughput": ("local_save", "fsspec_local_save"),
            "fsspec_local_load_vs_local_throughput": ("local_load", "fsspec_local_load"),
        },
        f"state: {nbytes / 2**20:.0f} MiB in {args.tensors} float32 tensors; medians of {args.rounds} rounds; "
        f"S3 parts {args.part_mib} MiB up / {read_part >> 20} MiB down, {args.concurrency} in flight",
        args.out,
        {"tensors": args.tensors, "rounds": args.rounds, "part_bytes": args.part_mib << 20,
         "read_part_bytes": read_part, "concurrency": args.concurrency,
         "s3_server": "external" if args.endpoint else "moto_server (loopback)"},
    )


if __name__ == "__main__":
    main()
