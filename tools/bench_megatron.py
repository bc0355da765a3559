"""``bench_checkpoint.py --mode megatron``: ours against Megatron-Core's own dist_checkpointing
(torch_dist format, fully parallel save and load) on the same GPTModel in the same run.

A GPT (``--layers`` layers, hidden ``--hidden``, vocab 32000) with the distributed optimizer is
built at TP2 x PP1 x DP2 on 4 gloo ranks (CPU; Megatron's CUDA calls mapped by
integrations.megatron.cpu_shims) and trained one step. Each round saves model + optimizer with both
systems (order alternating, old checkpoint deleted and its page cache dropped first) and loads each
back at the same layout. Then both load at TP4 x PP1 x DP1: ours loads model and optimizer (checked
element by element against the saved model); Megatron's distributed-optimizer format
(``dp_reshardable``, the one that works on CPU) cannot change TP, which is recorded with its error, and
its model-only resharded load is timed for reference. Times are the slowest rank's; medians over rounds.
Megatron's save needs ``psutil`` (not among megatron-core's declared dependencies).
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE / "bench_peers"))

import torch
import torch.distributed as dist

import bytecheckpoint as bcp

SAVE_LAYOUT, RESHARD_LAYOUT = (2, 1, 2), (4, 1, 1)


def _slowest(seconds: float) -> float:
    t = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def _timed(fn) -> float:
    dist.barrier()
    start = time.perf_counter()
    fn()
    return _slowest(time.perf_counter() - start)


def _fresh(path: Path, create: bool) -> None:
    """No checkpoint at ``path`` (the old one deleted, its page cache gone with it); an empty folder
    there when ``create`` (Megatron's save wants one)."""
    if dist.get_rank() == 0:
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True) if create else path.parent.mkdir(parents=True, exist_ok=True)
        os.sync()
    dist.barrier()


def _drop_cache(path: Path) -> None:
    if dist.get_rank() == 0:
        import harness

        harness.drop_cache(path)
    dist.barrier()


def _progress(rank: int, what: str) -> None:
    if rank == 0:
        print(f"[{time.strftime('%H:%M:%S')}] {what}", file=sys.stderr, flush=True)


def _megatron_state(ddp, opt, loading: bool, with_optimizer: bool = True) -> dict:
    model_sd = ddp.module.sharded_state_dict()
    state = {"model": model_sd}
    if with_optimizer:
        state["optimizer"] = opt.sharded_state_dict(
            model_sd, is_loading=loading, metadata={"distrib_optim_sharding_type": "dp_reshardable"}
        )
    return state


def _megatron_strategies():
    from megatron.core import parallel_state
    from megatron.core.dist_checkpointing.strategies.fully_parallel import (
        FullyParallelLoadStrategyWrapper,
        FullyParallelSaveStrategyWrapper,
    )
    from megatron.core.dist_checkpointing.strategies.torch import (
        TorchDistLoadShardedStrategy,
        TorchDistSaveShardedStrategy,
    )

    group = parallel_state.get_data_parallel_group(with_context_parallel=True)
    return (FullyParallelSaveStrategyWrapper(TorchDistSaveShardedStrategy("torch_dist", 1), group),
            FullyParallelLoadStrategyWrapper(TorchDistLoadShardedStrategy(), group))


def _megatron_save(ddp, opt, path: Path) -> None:
    from megatron.core import dist_checkpointing

    dist_checkpointing.save(_megatron_state(ddp, opt, False), str(path), _megatron_strategies()[0])


def _megatron_load(ddp, opt, path: Path, with_optimizer: bool = True) -> None:
    from megatron.core import dist_checkpointing

    loaded = dist_checkpointing.load(_megatron_state(ddp, opt, True, with_optimizer), str(path), _megatron_strategies()[1])
    with torch.no_grad():  # its fp32 distributed-optimizer path copies into views of leaf parameters
        ddp.module.load_state_dict(loaded["model"])
        if with_optimizer:
            opt.load_state_dict(loaded["optimizer"])


def _ours(ddp, opt, sched) -> dict:
    return {"model": ddp, "optimizer": opt, "scheduler": sched}


def _worker(rank: int, world: int, cfg: dict) -> dict:
    from integrations.megatron.tiny_gpt import Arch, Layout, build, full_model, train

    arch = Arch(layers=cfg["layers"], hidden=cfg["hidden"], heads=8, query_groups=8, ffn=4 * cfg["hidden"],
                vocab=32000, vocab_divisible_by=64)  # 32000 rows at TP2 and TP4
    import multiprocessing

    # Megatron's torch_dist save starts a multiprocessing Manager, which a daemonic process may not
    multiprocessing.current_process()._config["daemon"] = False
    _progress(rank, "building the model")
    ddp, opt, sched = build(Layout(*SAVE_LAYOUT, True), arch)
    train(ddp, opt, sched, range(1), arch)
    saved = full_model(ddp)
    _progress(rank, "built and trained one step")
    state_bytes = sum(p.numel() * p.element_size() for p in ddp.module.parameters()) * 3  # params + 2 moments
    root = Path(cfg["root"])
    paths = {"ours": root / "ours", "megatron": root / "megatron"}
    save = {"ours": lambda p: bcp.save(p, _ours(ddp, opt, sched), framework="megatron", timeout=cfg["timeout"]),
            "megatron": lambda p: _megatron_save(ddp, opt, p)}
    load = {"ours": lambda p: bcp.load(p, _ours(ddp, opt, sched), framework="megatron", timeout=cfg["timeout"]),
            "megatron": lambda p: _megatron_load(ddp, opt, p)}
    times: dict[str, dict[str, list[float]]] = {s: {"save_s": [], "load_s": []} for s in paths}
    for r in range(cfg["rounds"]):
        for system in (("ours", "megatron") if r % 2 == 0 else ("megatron", "ours")):
            path = paths[system] / "ck"
            _fresh(path, create=system == "megatron")
            times[system]["save_s"].append(_timed(lambda s=system, p=path: save[s](p)))
            _drop_cache(path)
            times[system]["load_s"].append(_timed(lambda s=system, p=path: load[s](p)))
            _progress(rank, f"round {r}: {system} save {times[system]['save_s'][-1]:.2f} s, "
                      f"load {times[system]['load_s'][-1]:.2f} s")
    # resharded: TP2 x DP2 -> TP4 x DP1, model and distributed optimizer
    ddp, opt, sched = build(Layout(*RESHARD_LAYOUT, True), arch, seed=7)
    reshard: dict[str, Any] = {}
    for r in range(cfg["reshard_rounds"]):
        _drop_cache(paths["ours"])
        reshard.setdefault("ours_s", []).append(_timed(lambda: load["ours"](paths["ours"] / "ck")))
    loaded = full_model(ddp)
    reshard["ours_checked"] = all(torch.equal(loaded[k], v) for k, v in saved.items())
    from torch.distributed.checkpoint.api import CheckpointException  # a BaseException

    _drop_cache(paths["megatron"])
    try:
        _megatron_load(ddp, opt, paths["megatron"] / "ck")
        reshard["megatron_optimizer"] = "loaded"
    except (Exception, CheckpointException) as exc:  # noqa: BLE001 - Megatron's failure is the figure
        cause = next(iter(getattr(exc, "failures", {}).values()), exc)  # DCP's CheckpointException wraps each rank's
        cause = cause[0] if isinstance(cause, tuple) else cause  # (exception, traceback frames)
        reshard["megatron_optimizer"] = f"fails: {type(cause).__name__}: {str(cause).splitlines()[0][:300]}"
    dist.barrier()
    for r in range(cfg["reshard_rounds"]):
        _drop_cache(paths["megatron"])
        reshard.setdefault("megatron_model_only_s", []).append(
            _timed(lambda: _megatron_load(ddp, opt, paths["megatron"] / "ck", with_optimizer=False)))
    loaded = full_model(ddp)
    reshard["megatron_model_only_checked"] = all(torch.equal(loaded[k], v) for k, v in saved.items())
    sizes = {s: sum(f.stat().st_size for f in (p / "ck").rglob("*") if f.is_file()) for s, p in paths.items()}
    return {"times": times, "reshard": reshard, "state_bytes": state_bytes, "checkpoint_bytes": sizes}


def _median(xs: list[float]) -> float:
    return statistics.median(xs)


def run(rounds: int, out: str, scratch_dir: str | None, layers: int, hidden: int, timeout: float) -> dict:
    """Run the comparison on 4 spawned gloo ranks; print a table and write JSON to ``out``."""
    import tempfile

    from bench_report import machine_info, render_table, write_json

    from integrations.local_ranks import run_ranks

    scratch = Path(tempfile.mkdtemp(prefix="bcp-megatron-", dir=scratch_dir))
    cfg = {"root": str(scratch), "rounds": rounds, "reshard_rounds": max(1, rounds), "layers": layers,
           "hidden": hidden, "timeout": timeout}
    started = time.perf_counter()
    try:
        per_rank = run_ranks(4, _worker, cfg, timeout=timeout * 4)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    res = per_rank[0]
    state_gb = sum(r["state_bytes"] for r in per_rank) / 1e9
    rows = []
    for system, label in (("ours", "ours (framework='megatron')"), ("megatron", "Megatron dist_checkpointing torch_dist")):
        t = res["times"][system]
        rows.append([label, f"{_median(t['save_s']):.2f}", f"{_median(t['load_s']):.2f}",
                     f"{res['checkpoint_bytes'][system] / 1e9:.3f}"])
    print(f"GPT {layers} layers, hidden {hidden}, vocab 32000, distributed optimizer; TP2 x PP1 x DP2 on 4 gloo ranks "
          f"(CPU); model + Adam state {state_gb:.2f} GB (replicas counted); {rounds} rounds, medians")
    print(render_table(["system", "save s", "load s", "checkpoint GB"], rows))
    rs = res["reshard"]
    print(f"resharded load at TP4 x PP1 x DP1 (model + optimizer): ours {_median(rs['ours_s']):.2f} s "
          f"(checked: {rs['ours_checked']}); Megatron's distributed optimizer (dp_reshardable): {rs['megatron_optimizer']}")
    print(f"  Megatron model-only resharded load (reference): {_median(rs['megatron_model_only_s']):.2f} s "
          f"(checked: {rs['megatron_model_only_checked']})")
    result = {"benchmark": "checkpoint_megatron", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": [sys.executable, *sys.argv], "machine": machine_info(),
              "config": {k: v for k, v in cfg.items() if k != "root"}, "state_gb": state_gb,
              "save_layout": SAVE_LAYOUT, "reshard_layout": RESHARD_LAYOUT, **res,
              "wall_s": time.perf_counter() - started}
    write_json(out, result)
    return result
