"""Demo: a Megatron-Core GPT (3 layers, vocab 301: neither divides evenly) trains on 4 gloo ranks at
TP2 x PP2 x DP1 with the distributed optimizer, checkpoints with ``framework="megatron"`` after
--stop-at steps and goes on (the uninterrupted run); then the checkpoint resumes at TP1 x PP1 x DP4,
and at TP4 x PP1 x DP1 from a copy resharded offline for that layout (what ``bytecheckpoint reshard
--tp 4`` writes: one file per rank). Every resumed loss must equal the uninterrupted run's (to float rounding:
another layout sums in another order).

    python tools/demo_megatron.py [--steps 8] [--stop-at 4]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch.distributed

import bytecheckpoint as bcp
from bytecheckpoint.reshard_offline import reshard_checkpoint
from bytecheckpoint.storage import LocalStorage
from integrations.local_ranks import run_ranks
from integrations.megatron.offline_layout import MegatronTarget, megatron_layout
from integrations.megatron.tiny_gpt import Layout

SOURCE = Layout(2, 2, 1, True)
TARGETS = (Layout(1, 1, 4, True), Layout(4, 1, 1, False))
OFFLINE = TARGETS[1]  # loads the offline-resharded copy


def _run(rank: int, world: int, path: str, steps: int, stop_at: int) -> dict[str, list]:
    from integrations.megatron.tiny_gpt import build, train

    ddp, opt, sched = build(SOURCE)
    losses = {str(SOURCE): train(ddp, opt, sched, range(stop_at))}
    saved_at = time.perf_counter()
    bcp.save(path, {"model": ddp, "optimizer": opt, "scheduler": sched, "extra_state": {"step": stop_at}},
             framework="megatron", timeout=120)
    save_s = time.perf_counter() - saved_at
    if rank == 0:
        target = MegatronTarget(OFFLINE.tp, OFFLINE.pp, OFFLINE.dp)
        reshard_checkpoint(LocalStorage(path), LocalStorage(f"{path}-offline"), partial(megatron_layout, target=target))
    torch.distributed.barrier()
    losses[str(SOURCE)] += train(ddp, opt, sched, range(stop_at, steps))
    for target in TARGETS:
        ddp, opt, sched = build(target, seed=123, lr=0.5)  # only the checkpoint can make it right
        state = {"model": ddp, "optimizer": opt, "scheduler": sched, "extra_state": None}
        bcp.load(f"{path}-offline" if target == OFFLINE else path, state, framework="megatron", timeout=120)
        losses[str(target)] = [None] * state["extra_state"]["step"] + train(ddp, opt, sched, range(stop_at, steps))
    return {"losses": losses, "save_s": save_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--stop-at", type=int, default=4)
    args = parser.parse_args()
    if not 0 < args.stop_at < args.steps:
        parser.error(f"--stop-at must be between 1 and --steps - 1, got {args.stop_at}")
    print("starting 4 ranks (importing megatron-core takes a while)...", file=sys.stderr, flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        results = run_ranks(4, _run, f"{tmp}/ck", args.steps, args.stop_at, timeout=600)
    # every loss comes from a last pipeline stage; take each run's from any rank that has it
    losses: dict[str, list] = {}
    for r in results:
        for layout, values in r["losses"].items():
            merged = losses.setdefault(layout, [None] * len(values))
            losses[layout] = [m if v is None else v for m, v in zip(merged, values)]
    names = list(losses)
    print(f"checkpoint saved at step {args.stop_at} by {SOURCE} in {max(r['save_s'] for r in results):.2f} s")
    print("step  " + "  ".join(f"{n:>22}" for n in names))
    worst = 0.0
    for step in range(args.steps):
        row = [losses[n][step] for n in names]
        print(f"{step:4d}  " + "  ".join(f"{'-' if v is None else f'{v:.6f}':>22}" for v in row))
        if step >= args.stop_at:
            worst = max(worst, *(abs(v - row[0]) for v in row[1:]))
    ok = worst < 1e-4
    print(f"resumed at {', '.join(map(str, TARGETS))} ({OFFLINE} from the offline-resharded copy): largest loss difference from the uninterrupted run "
          f"{worst:.2e} -> {'OK' if ok else 'MISMATCH'}")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
