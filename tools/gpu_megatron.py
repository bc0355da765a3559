"""The Megatron part of the GPU run (tools/gpu_run.sh, GPU_RUN_PARTS=megatron): a GPT (local layer
spec, distributed optimizer) trains 2 steps at TP2 on 2 GPUs over NCCL and saves with
``framework="megatron"``; the checkpoint loads at TP1 on 1 GPU and at TP2 on 2 GPUs again, and each
load's loss on a held-out batch must equal the saver's (to float rounding across layouts).

    python tools/gpu_megatron.py --dir /scratch/megatron [--out result.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

ARCH = {"layers": 3, "hidden": 256, "heads": 8, "query_groups": 4, "ffn": 1024, "vocab": 50257, "vocab_divisible_by": 64}
EVAL_STEP = 100


def _rank(rank: int, world: int, phase: str, path: str, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", rank=rank, world_size=world, timeout=timedelta(seconds=120))
    try:
        import bytecheckpoint as bcp
        from integrations.megatron.adapter import declare_vocab_size
        from tests.integrations.megatron_gpt import Arch, Layout, build, eval_loss, train

        arch = Arch(**ARCH)
        ddp, opt, sched = build(Layout(tp=world), arch, seed=0 if phase == "save" else 7)
        declare_vocab_size(ddp, arch.vocab)  # 50257 pads to 50304 at TP1 and TP2
        state = {"model": ddp, "optimizer": opt, "scheduler": sched}
        start = time.perf_counter()
        if phase == "save":
            train(ddp, opt, sched, range(2), arch)
            torch.cuda.synchronize()
            start = time.perf_counter()
            bcp.save(path, state, framework="megatron", timeout=120)
        else:
            bcp.load(path, state, framework="megatron", timeout=120)
        seconds = time.perf_counter() - start
        loss = eval_loss(ddp, EVAL_STEP, arch)
        if rank == 0:
            Path(out).write_text(json.dumps({"phase": phase, "world": world, "loss": loss, "seconds": seconds,
                                             "device": torch.cuda.get_device_name(0)}))
    finally:
        dist.destroy_process_group()


def _phase(phase: str, world: int, path: str, port: int, out: Path) -> dict:
    mp.start_processes(_rank, args=(world, phase, path, port, str(out)), nprocs=world, start_method="spawn")
    return json.loads(out.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", required=True, help="scratch directory for the checkpoint")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args()
    if torch.cuda.device_count() < 2:
        sys.exit(f"error: this part needs 2 GPUs, found {torch.cuda.device_count()}")
    scratch = Path(args.dir)
    scratch.mkdir(parents=True, exist_ok=True)
    path = str(scratch / "megatron-ck")
    results = [
        _phase("save", 2, path, 29511, scratch / "save.json"),
        _phase("load", 1, path, 29512, scratch / "load-tp1.json"),
        _phase("load", 2, path, 29513, scratch / "load-tp2.json"),
    ]
    ref = results[0]["loss"]
    ok = all(abs(r["loss"] - ref) <= 1e-4 * max(1.0, abs(ref)) for r in results[1:])
    for r in results:
        print(f"{r['phase']:>4} at TP{r['world']} on {r['world']} GPU(s) ({r['device']}): {r['seconds']:.2f} s, "
              f"held-out loss {r['loss']:.6f}")
    print(f"equal outputs after TP2 -> TP1 and TP2 -> TP2: {'OK' if ok else 'MISMATCH'}")
    if args.out:
        Path(args.out).write_text(json.dumps({"results": results, "ok": ok}, indent=2))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
