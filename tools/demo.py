"""Demo: 4 gloo ranks save a sharded training-like state to local disk; 2 ranks load it
resharded, check every element, and print sizes, times and throughput.

    python tools/demo.py [--dir out/demo-ckpt] [--mib 256]
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from rich.console import Console
from rich.table import Table
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import Shard, distribute_tensor

import bytecheckpoint as bcp

LAYERS = 8


def layer_shapes(mib: int) -> tuple[int, int]:
    """Rows and columns of each weight so that weights + two optimizer moments total ~``mib`` MiB."""
    per_layer = mib * (1 << 20) // (LAYERS * 3 * 4)
    cols = 1024
    return max(1, per_layer // cols) + 3, cols  # +3: rows not divisible by the world sizes


def global_weight(layer: int, shape: tuple[int, int]) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(layer))


def build_state(rank: int, world: int, mib: int, fill: bool) -> dict:
    """FSDP2-like weights (DTensor Shard(0)) and FSDP1-like flat optimizer moments."""
    mesh = init_device_mesh("cpu", (world,))
    shape = layer_shapes(mib)
    numel = shape[0] * shape[1]
    lo, hi = numel * rank // world, numel * (rank + 1) // world
    state: dict = {"model": {}, "optim": {}, "extra": {"step": 1000, "lr": 3e-4} if fill else None}
    for layer in range(LAYERS):
        w = global_weight(layer, shape) if fill else torch.zeros(shape)
        state["model"][f"layers.{layer}.weight"] = distribute_tensor(w, mesh, [Shard(0)])
        flat = w.reshape(-1)[lo:hi].clone() if fill else torch.zeros(hi - lo)
        state["optim"][f"layers.{layer}.exp_avg"] = bcp.FlatShard(flat * 0.5, shape, lo)
        state["optim"][f"layers.{layer}.exp_avg_sq"] = bcp.FlatShard(flat * flat, shape, lo)
    return state


def check(state: dict, mib: int) -> int:
    shape = layer_shapes(mib)
    checked = 0
    for layer in range(LAYERS):
        ref = global_weight(layer, shape)
        dt = state["model"][f"layers.{layer}.weight"]
        assert torch.equal(dt.full_tensor(), ref), f"weight {layer} differs"
        for name, expect in (("exp_avg", ref * 0.5), ("exp_avg_sq", ref * ref)):
            shard: bcp.FlatShard = state["optim"][f"layers.{layer}.{name}"]
            piece = expect.reshape(-1)[shard.flat_offset : shard.flat_offset + shard.data.numel()]
            assert torch.equal(shard.data, piece), f"{name} {layer} differs"
            checked += shard.data.numel()
        checked += dt.to_local().numel()
    assert state["extra"] == {"step": 1000, "lr": 3e-4}
    return checked


def worker(rank: int, world: int, store: str, path: str, mib: int, mode: str, results: dict) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=300))
    try:
        state = build_state(rank, world, mib, fill=mode == "save")
        dist.barrier()
        start = time.perf_counter()
        if mode == "save":
            summary = bcp.save(path, state)
            elapsed = time.perf_counter() - start
            results[rank] = {"seconds": elapsed, "bytes": summary.bytes_written, "total": summary.total_bytes}
        else:
            summary = bcp.load(path, state)
            elapsed = time.perf_counter() - start
            results[rank] = {"seconds": elapsed, "bytes": summary.bytes_read, "checked": check(state, mib)}
    finally:
        dist.destroy_process_group()


def run(world: int, path: str, mib: int, mode: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp, mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(worker, args=(world, os.path.join(tmp, "store"), path, mib, mode, results), nprocs=world)
        return dict(results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", default="out/demo-ckpt", help="checkpoint directory (replaced)")
    parser.add_argument("--mib", type=int, default=192, help="approximate state size in MiB")
    args = parser.parse_args()
    shutil.rmtree(args.dir, ignore_errors=True)
    console = Console(width=110)
    console.print(f"[bold]bytecheckpoint demo[/]: 4 ranks save ~{args.mib} MiB to {args.dir}, 2 ranks load it resharded")

    saved = run(4, args.dir, args.mib, "save")
    report = bcp.verify(args.dir)
    loaded = run(2, args.dir, args.mib, "load")

    total = report.bytes_verified
    save_s = max(r["seconds"] for r in saved.values())
    load_s = max(r["seconds"] for r in loaded.values())
    table = Table(title="checkpoint summary")
    for col in ("phase", "ranks", "bytes per rank (MiB)", "wall time (s)", "throughput (MiB/s)"):
        table.add_column(col, justify="right")
    mib = 1 << 20
    table.add_row("save (4 ranks, DTensor + FlatShard)", "4",
                  " / ".join(f"{saved[r]['bytes'] / mib:.1f}" for r in sorted(saved)), f"{save_s:.3f}",
                  f"{total / mib / save_s:.0f}")
    table.add_row("load (2 ranks, resharded)", "2",
                  " / ".join(f"{loaded[r]['bytes'] / mib:.1f}" for r in sorted(loaded)), f"{load_s:.3f}",
                  f"{total / mib / load_s:.0f}")
    console.print(table)
    checked = sum(r["checked"] for r in loaded.values())
    console.print(f"checkpoint: {total / mib:.1f} MiB in {len(report.data_files)} data files, "
                  f"{report.tensors} tensors, {report.chunks} chunks; checksums verified")
    console.print(f"[green]OK[/]: every one of {checked:,} loaded elements equals the saved value")


if __name__ == "__main__":
    main()
