"""The Megatron part of the GPU run (tools/gpu_run.sh, GPU_RUN_PARTS=megatron): a GPT (local layer
spec, distributed optimizer) trains 2 steps and saves with ``framework="megatron"`` at the source
layout of the largest plan that fits the GPUs, then goes on 2 more steps (the reference); every target
layout loads the checkpoint (built with another seed and learning rate), and its held-out loss and its
next 2 training losses must equal the saver's (rel 1e-4: other layouts sum in another order).

Plans, by GPUs (NCCL, one rank per GPU):
  2: TP2 saves; loads at TP1 (1 GPU) and TP2 (2 GPUs)
  4: TP2·PP2 saves; loads at TP1·PP1·DP2 (2 GPUs) and TP4 (4 GPUs)
  8: TP2·PP2·DP2 saves; loads at TP1·PP1·DP4 (4 GPUs), TP4·PP1·DP2 (8 GPUs) and TP1 (1 GPU)
``--device cpu --ranks N`` runs the plan for N on gloo (a check of this script without GPUs).

    python tools/gpu_megatron.py --dir /scratch/megatron [--out result.json] [--device cpu --ranks 4 --small]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from datetime import timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from integrations.megatron.tiny_gpt import Layout

# vocab 50176 = 512 * 98: the padded vocabulary is the same at TP 1, 2, 4 and 8 (equal outputs need that)
ARCH = {"layers": 4, "hidden": 256, "heads": 8, "query_groups": 4, "ffn": 1024, "vocab": 50176, "vocab_divisible_by": 64}
SMALL = {"layers": 4, "hidden": 32, "heads": 4, "query_groups": 4, "ffn": 64, "vocab": 1024, "vocab_divisible_by": 64}
PLANS = {
    2: (Layout(2, 1, 1, True), [Layout(1, 1, 1, True), Layout(2, 1, 1, True)]),
    4: (Layout(2, 2, 1, True), [Layout(1, 1, 2, True), Layout(4, 1, 1, True)]),
    8: (Layout(2, 2, 2, True), [Layout(1, 1, 4, True), Layout(4, 1, 2, True), Layout(1, 1, 1, True)]),
}
EVAL_STEP, BEFORE, AFTER = 100, range(2), range(2, 4)


def _last_stage_value(value: object) -> object:
    """The value the last pipeline stage computed (losses are None elsewhere), on every rank."""
    everyone: list = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, value)
    computed = [v for v in everyone if v is not None and not (isinstance(v, list) and all(x is None for x in v))]
    return computed[0] if computed else None


def _rank(rank: int, world: int, phase: str, layout: Layout, path: str, port: int, out: str, arch_kw: dict,
          device: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if device == "cuda" else "gloo", rank=rank, world_size=world,
                            timeout=timedelta(seconds=120))
    try:
        import bytecheckpoint as bcp
        from integrations.megatron.adapter import declare_vocab_size
        from integrations.megatron.tiny_gpt import Arch, build, eval_loss, train

        arch = Arch(**arch_kw)
        ddp, opt, sched = build(layout, arch, seed=0 if phase == "save" else 7, lr=0.01 if phase == "save" else 0.05)
        declare_vocab_size(ddp, arch.vocab)
        state = {"model": ddp, "optimizer": opt, "scheduler": sched}
        if phase == "save":
            train(ddp, opt, sched, BEFORE, arch)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        if phase == "save":
            bcp.save(path, state, framework="megatron", timeout=120)
        else:
            bcp.load(path, state, framework="megatron", timeout=120)
        seconds = time.perf_counter() - start
        loss = _last_stage_value(eval_loss(ddp, EVAL_STEP, arch))
        after = _last_stage_value(train(ddp, opt, sched, AFTER, arch))
        if rank == 0:
            name = torch.cuda.get_device_name(0) if device == "cuda" else "cpu (gloo)"
            Path(out).write_text(json.dumps({"phase": phase, "layout": str(layout), "ranks": world, "loss": loss,
                                             "next_losses": after, "seconds": seconds, "device": name}))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _phase(phase: str, layout: Layout, path: str, out: Path, arch: dict, device: str) -> dict:
    args = (layout.world, phase, layout, path, _free_port(), str(out), arch, device)
    mp.start_processes(_rank, args=args, nprocs=layout.world, start_method="spawn")
    return json.loads(out.read_text())


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= 1e-4 * max(1.0, abs(b))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", required=True, help="scratch directory for the checkpoint")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    parser.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    parser.add_argument("--ranks", type=int, default=None, help="cpu: ranks to plan for (2, 4 or 8)")
    parser.add_argument("--small", action="store_true", help="a tiny GPT (hidden 32, vocab 1024), for CPU checks")
    args = parser.parse_args()
    available = torch.cuda.device_count() if args.device == "cuda" else (args.ranks or 2)
    fitting = [n for n in PLANS if n <= available]
    if not fitting:
        sys.exit(f"error: this part needs 2 GPUs or more, found {available}")
    source, targets = PLANS[max(fitting)]
    arch = SMALL if args.small else ARCH
    scratch = Path(args.dir)
    scratch.mkdir(parents=True, exist_ok=True)
    path = str(scratch / "megatron-ck")
    saved = _phase("save", source, path, scratch / "save.json", arch, args.device)
    loads = [_phase("load", t, path, scratch / f"load-{t}.json", arch, args.device) for t in targets]
    ok = all(_close(r["loss"], saved["loss"]) and all(map(_close, r["next_losses"], saved["next_losses"]))
             for r in loads)
    for r in (saved, *loads):
        print(f"{r['phase']:>4} at {r['layout']} on {r['ranks']} rank(s) ({r['device']}): {r['seconds']:.2f} s; "
              f"held-out loss {r['loss']:.6f}; next losses {', '.join(f'{x:.6f}' for x in r['next_losses'])}")
    print(f"equal held-out loss and next steps after {source} -> {', '.join(map(str, targets))}: "
          f"{'OK' if ok else 'MISMATCH'}")
    if args.out:
        Path(args.out).write_text(json.dumps({"source": str(source), "results": [saved, *loads], "ok": ok}, indent=2))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
