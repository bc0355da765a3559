"""Save/load throughput on local disk against the physical limit and against PyTorch DCP.

In each round, interleaved (A B C, then B C A, ...), on the same state, old files deleted and
the disk synced before each save:
  raw write  - the same bytes written to one file and fsync'd (the disk's limit)
  bcp save   - bytecheckpoint.save (fsync'd, checksummed)
  dcp save   - torch.distributed.checkpoint.save
  raw read / bcp load / dcp load - cold reads (page cache dropped for the files with fadvise)
Medians over rounds are printed with ratios and written as JSON.

    python tools/bench_checkpoint.py --mib 1024 --tensors 32 --rounds 5 --out bench-results/checkpoint.json
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from bench_report import report

import bytecheckpoint as bcp


def make_state(mib: int, tensors: int, device: str = "cpu") -> dict[str, torch.Tensor]:
    numel = mib * (1 << 20) // 4 // tensors
    g = torch.Generator().manual_seed(0)
    return {f"layer{i}.weight": torch.randn(numel, generator=g).to(device) for i in range(tensors)}


def drop_cache(root: Path) -> None:
    for path in [root] if root.is_file() else root.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def raw_write(state: dict[str, torch.Tensor], path: Path) -> None:
    """The bytes to disk, fsync'd (after a device-to-host copy for GPU tensors)."""
    with open(path, "wb", buffering=0) as f:
        f.writelines(memoryview(t.cpu().numpy()).cast("B") for t in state.values())
        os.fsync(f.fileno())


def raw_read(state: dict[str, torch.Tensor], path: Path) -> None:
    """The bytes from disk into the tensors (through a host buffer for GPU tensors)."""
    with open(path, "rb", buffering=0) as f:
        for t in state.values():
            host = t if t.device.type == "cpu" else torch.empty_like(t, device="cpu")
            f.readinto(memoryview(host.numpy()).cast("B"))
            if host is not t:
                t.copy_(host)


def timed(fn: Callable[[], object]) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--tensors", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--dir", default=None, help="scratch directory on the disk to measure (default: temp)")
    parser.add_argument("--out", default="bench-results/checkpoint.json")
    parser.add_argument("--device", default="cpu", help="where the state lives: cpu or cuda")
    args = parser.parse_args()

    state = make_state(args.mib, args.tensors, args.device)
    target = {k: torch.empty_like(v) for k, v in state.items()}
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    scratch = Path(tempfile.mkdtemp(prefix="bcp-bench-", dir=args.dir))
    paths = {"raw": scratch / "raw.bin", "bcp": scratch / "bcp", "dcp": scratch / "dcp"}
    save_ops: dict[str, Callable[[], object]] = {
        "raw": lambda: raw_write(state, paths["raw"]),
        "bcp": lambda: bcp.save(paths["bcp"], state),
        "dcp": lambda: dcp.save(state, checkpoint_id=str(paths["dcp"])),
    }
    load_ops: dict[str, Callable[[], object]] = {
        "raw": lambda: raw_read(target, paths["raw"]),
        "bcp": lambda: bcp.load(paths["bcp"], target),
        "dcp": lambda: dcp.load(target, checkpoint_id=str(paths["dcp"])),
    }
    times: dict[str, list[float]] = {f"{k}_{op}": [] for k in save_ops for op in ("save", "load")}
    try:
        names = list(save_ops)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[: r % len(names)]  # rotate who goes first
            for name in order:
                if paths[name].is_dir():
                    shutil.rmtree(paths[name])
                elif paths[name].exists():
                    paths[name].unlink()
                os.sync()  # every save starts on a quiet disk: the deletion is not charged to it
                times[f"{name}_save"].append(timed(save_ops[name]))
                drop_cache(paths[name])
            for name in order:
                times[f"{name}_load"].append(timed(load_ops[name]))
            assert all(torch.equal(target[k], state[k]) for k in state), "loaded values differ"
            print(f"round {r + 1}/{args.rounds}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()))
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    report(
        "checkpoint_local_disk",
        times,
        list(save_ops),
        nbytes,
        {
            "bcp_save_vs_raw_throughput": ("raw_save", "bcp_save"),
            "bcp_load_vs_raw_throughput": ("raw_load", "bcp_load"),
            "dcp_save_time_over_bcp": ("dcp_save", "bcp_save"),
            "dcp_load_time_over_bcp": ("dcp_load", "bcp_load"),
        },
        f"state: {nbytes / 2**20:.0f} MiB in {args.tensors} float32 tensors on {args.device}; "
        f"medians of {args.rounds} rounds",
        args.out,
        {"tensors": args.tensors, "rounds": args.rounds,
         "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu"},
    )


if __name__ == "__main__":
    main()
