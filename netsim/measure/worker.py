"""One measuring rank: ``python -m netsim.measure.worker CONFIG_JSON`` (see :mod:`netsim.measure.launch`).

For every size: ``warmup`` untimed runs, then ``iters`` runs each preceded by a barrier and timed on
this rank from the barrier's end to the collective's completion. Writes ``rank<R>.json`` (times per
size, and the subflow timings of split-tcp's last iteration) into ``out_dir``; rank 0 prints
``progress <size>`` lines on stdout. A failure prints one ``error: Type: message`` line and exits 1.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from netsim.measure.backends import (
    Backend,
    BackendName,
    CollectiveName,
    MpiBackend,
    SplitTcpBackend,
    TorchBackend,
    gloo_env,
)


def _start(cfg: dict[str, Any]) -> Backend:
    backend = BackendName(cfg["backend"])
    if backend is BackendName.mpi:
        return MpiBackend.start()
    rank, world = int(cfg["rank"]), int(cfg["world"])
    if backend is BackendName.split_tcp:
        from netsim.transport import PathPolicyName, SplitTcpTransport, plan_paths
        from netsim.transport.collectives import alltoall_pairs, ring_pairs

        pairs = alltoall_pairs(world) if cfg["collective"] == "alltoall" else ring_pairs(world)
        plan = plan_paths(
            pairs,
            cfg["rank_leaf"],
            int(cfg["spines"]),
            PathPolicyName(cfg["policy"]),
            cfg["splits"],
            int(cfg["seed"]),
            tuple(cfg["ecmp_ports"]),
        )
        transport = SplitTcpTransport(
            rank,
            [tuple(a) for a in cfg["addresses"]],
            plan,
            float(cfg["timeout"]),
            tuple(tuple(p) for p in cfg["pinned_ports"]),
            tuple(cfg["ecmp_ports"]),
        )
        return SplitTcpBackend(rank, world, transport)
    if backend is BackendName.gloo:
        gloo_env(cfg["interface"])
    return TorchBackend.start(backend.value, rank, world, tuple(cfg["master"]), float(cfg["timeout"]))


def measure(cfg: dict[str, Any]) -> dict[str, Any]:
    """Run the sweep in ``cfg`` on this rank; returns what is written to ``rank<R>.json``."""
    collective = CollectiveName(cfg["collective"])
    backend = _start(cfg)
    transport = getattr(backend, "transport", None)  # split-tcp: per-subflow timings
    times: dict[str, list[float]] = {}
    subflows: list[dict[str, Any]] = []
    try:
        for size in cfg["sizes"]:
            inp, out = backend.buffers(collective, int(size))
            for _ in range(int(cfg["warmup"])):
                backend.run(collective, inp, out)
            samples = []
            for _ in range(int(cfg["iters"])):
                backend.barrier()
                if transport is not None:
                    transport.pop_timings()
                t0 = time.perf_counter()
                backend.run(collective, inp, out)
                samples.append(time.perf_counter() - t0)
                if transport is not None:
                    subflows = [
                        {"size": int(size), **asdict(t), "start": t.start - t0, "end": t.end - t0}
                        for t in transport.pop_timings()
                    ]
            times[str(size)] = samples
            if backend.rank == 0:
                print(f"progress {size}", flush=True)
        backend.barrier()
    finally:
        backend.close()
    splits = transport.plan.default_k if transport is not None else None
    return {
        "rank": backend.rank,
        "world": backend.world,
        "times": times,
        "subflows": subflows,
        "splits": splits,
    }


def main(argv: list[str]) -> int:
    """Entry point: ``argv[0]`` is the JSON config."""
    try:
        cfg = json.loads(argv[0])
        result = measure(cfg)
        Path(cfg["out_dir"], f"rank{result['rank']}.json").write_text(json.dumps(result))
    except Exception as exc:  # noqa: BLE001 - one line for the launcher, which reports it
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
