"""ByteDance's ByteCheckpoint 0.0.2 on the benchmark's state, run by the python of its own venv.

Started by tools/bench_checkpoint.py (``--peers bytecheckpoint``) with the working directory outside
the repo and no PYTHONPATH, so ``import bytecheckpoint`` is ByteDance's package, not ours. It
spawns its own group of ranks through the shared harness (same seed, same architecture, same values)
and runs, interleaved: the disk floor, DCP ``save`` (the bridge to the main run's figures), and
ByteCheckpoint's ``save`` / ``load`` with ``framework="fsdp2"``, plain and with ``fast_saving`` /
``fast_loading``; then the resharded loads at half the ranks. Writes JSON to ``config["result"]``.

    <venv>/bin/python tools/bench_peers/bytecheckpoint_runner.py CONFIG.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import harness as H

REPO = Path(__file__).resolve().parents[2]


def peer_systems(ctx: H.Ctx) -> list[H.System]:
    import bytecheckpoint as peer

    def state() -> dict:
        return {"model": ctx.model, "optimizer": ctx.optim}

    def settle() -> None:
        """Wait for the write futures its fast_saving may leave behind (model and optimizer)."""
        from bytecheckpoint.engine import _store_engine

        for name in ("model", "optimizer"):
            _store_engine.sync_io_futures(name, "fsdp2", "")

    def save(fast: bool):
        def run(path: Path) -> H.Pending | None:
            peer.save(str(path), state(), framework="fsdp2", fast_saving=fast)
            return H.Pending(settle) if fast else None
        return run

    def load(fast: bool):
        def run(path: Path) -> None:
            peer.load(str(path), state(), framework="fsdp2", fast_loading=fast)
        return run

    return [
        H.raw_system(ctx),
        *H.dcp_systems(ctx, asyncs=False),
        H.System("bcp002", "ByteCheckpoint 0.0.2 save / load", save(False), load(False), "bcp002", reshard=True),
        H.System("bcp002_fast", "ByteCheckpoint 0.0.2 fast_saving / fast_loading", save(True), load(True), "bcp002",
                 is_async=True),
        # resharded: fast_loading on the checkpoint of the plain save (the same format)
        H.System("bcp002_fastload", "ByteCheckpoint 0.0.2 fast_loading (resharded only)", None, load(True), "bcp002",
                 reshard=True, ckpt="bcp002"),
    ]


def main() -> None:
    cfg = json.loads(Path(sys.argv[1]).read_text())
    import importlib.metadata

    import torch

    import bytecheckpoint

    where = Path(bytecheckpoint.__file__).resolve()
    if where.parent == REPO / "bytecheckpoint":
        sys.exit(f"imported the repo's bytecheckpoint ({where}), not ByteDance's: run outside the repo, no PYTHONPATH")
    out = {"version": f"bytecheckpoint {importlib.metadata.version('bytecheckpoint')} ({where.parent}), "
                      f"torch {torch.__version__}",
           "env": {k: os.environ.get(k) for k in ("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "BYTECHECKPOINT_LOGGING_LEVEL")}}
    scratch = Path(cfg["root"]).parent
    ranks = cfg["ranks"]
    print(f"peer: {out['version']}; {ranks} ranks", flush=True)
    out["main"] = H.launch(ranks, {**cfg, "phase": "main", "systems": []}, peer_systems, scratch)
    if cfg.get("reshard"):
        out["reshard"] = H.launch(ranks // 2, {**cfg, "phase": "reshard", "saved_world": ranks, "systems": [],
                                               "rounds": cfg.get("reshard_rounds") or cfg["rounds"]},
                                  peer_systems, scratch)
    Path(cfg["result"]).write_text(json.dumps(out))


if __name__ == "__main__":
    main()
