"""Start the ranks of a measurement, wait for them (with a deadline), and collect their times.

Loopback: one process per rank on 127.0.0.1 (``mpiexec -n N`` for mpi). Fabric: rank r runs inside the
namespace of fabric host ``hosts[r]`` (``ip netns exec``), addressed by that host's IP. If any rank fails
or the deadline passes, every rank is ended and :class:`MeasureError` names the rank and its error.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import netsim
from netsim.fabric.leafspine import FabricDescription
from netsim.measure.backends import BackendName, CollectiveName, effective_size
from netsim.measure.errors import MeasureError
from netsim.transport import PathPolicyName

MASTER_PORT = 29500


@dataclass(frozen=True)
class MeasureConfig:
    """One sweep: a backend and collective over ``sizes`` (bytes) on ``ranks`` ranks."""

    backend: BackendName
    collective: CollectiveName
    ranks: int
    sizes: tuple[int, ...]
    iters: int = 5
    warmup: int = 1
    policy: PathPolicyName = PathPolicyName.minimal
    splits: int | None = None
    seed: int = 0
    timeout: float = 60.0
    hosts: tuple[int, ...] | None = None  # fabric host of each rank (None: ranks 0..N-1 on hosts 0..N-1)

    def __post_init__(self) -> None:
        if self.ranks < 2:
            raise MeasureError(f"--ranks must be >= 2, found {self.ranks}")
        if not self.sizes or any(s < 1 for s in self.sizes):
            raise MeasureError(f"--sizes must be positive byte counts, found {list(self.sizes)}")
        if self.iters < 1 or self.warmup < 0:
            raise MeasureError(f"need --iters >= 1 and --warmup >= 0, found {self.iters}, {self.warmup}")
        if self.splits is not None and self.splits < 1:
            raise MeasureError(f"--splits must be >= 1, found {self.splits}")
        if not self.timeout > 0:
            raise MeasureError(f"--timeout must be > 0 s, found {self.timeout}")
        if self.hosts is not None and len(self.hosts) != self.ranks:
            raise MeasureError(f"--hosts lists {len(self.hosts)} hosts for {self.ranks} ranks")

    def effective_sizes(self) -> tuple[int, ...]:
        """Sizes rounded down so every rank's block holds whole elements (as nccl-tests does)."""
        sizes = sorted({effective_size(self.collective, s, self.ranks) for s in self.sizes})
        if sizes[0] < 4:
            raise MeasureError(
                f"sizes must hold at least one float32 per rank block ({4 * self.ranks} bytes "
                f"for {self.collective.value} on {self.ranks} ranks), found {min(self.sizes)}"
            )
        return tuple(sizes)


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """``n`` distinct TCP ports that were free a moment ago on ``host``."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind((host, 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def rank_hosts(config: MeasureConfig, fabric: FabricDescription) -> tuple[int, ...]:
    """The fabric host of every rank, checked against the fabric."""
    hosts = config.hosts if config.hosts is not None else tuple(range(config.ranks))
    n = len(fabric.hosts)
    if len(set(hosts)) != len(hosts) or any(not 0 <= h < n for h in hosts):
        raise MeasureError(
            f"ranks need distinct fabric hosts in 0..{n - 1} (one rank per host), found "
            f"{list(hosts)}; fabric {fabric.spec.name} has {n} hosts"
        )
    return hosts


def _worker_configs(
    config: MeasureConfig, fabric: FabricDescription | None, out_dir: Path
) -> list[dict[str, Any]]:
    base: dict[str, Any] = {
        "backend": config.backend.value,
        "collective": config.collective.value,
        "world": config.ranks,
        "sizes": list(config.effective_sizes()),
        "iters": config.iters,
        "warmup": config.warmup,
        "timeout": config.timeout,
        "out_dir": str(out_dir),
        "policy": config.policy.value,
        "splits": config.splits,
        "seed": config.seed,
    }
    if fabric is None:
        ports = free_ports(config.ranks + 1)
        base.update(
            addresses=[["127.0.0.1", p] for p in ports[1:]],
            rank_leaf=None,
            spines=1,
            pinned_ports=[],
            ecmp_ports=[40000, 59999],
            master=["127.0.0.1", ports[0]],
            interface="lo",
        )
    else:
        hosts = [fabric.hosts[h] for h in rank_hosts(config, fabric)]
        base.update(
            addresses=[[h.address, fabric.listen_port] for h in hosts],
            rank_leaf=[h.leaf for h in hosts],
            spines=fabric.spec.spines,
            pinned_ports=[list(p) for p in fabric.pinned_ports],
            ecmp_ports=list(fabric.ecmp_ports),
            master=[hosts[0].address, MASTER_PORT],
            interface="eth0",
        )
    return [{**base, "rank": r} for r in range(config.ranks)]


def _commands(
    config: MeasureConfig, fabric: FabricDescription | None, cfgs: list[dict[str, Any]]
) -> list[list[str]]:
    worker = [sys.executable, "-m", "netsim.measure.worker"]
    if config.backend is BackendName.mpi:
        if fabric is not None:
            raise MeasureError(
                "the mpi backend runs on loopback only (mpiexec cannot start ranks inside the "
                "fabric's namespaces); drop --fabric or use gloo/split-tcp there"
            )
        mpiexec = Path(sys.executable).parent / "mpiexec"
        launcher = str(mpiexec) if mpiexec.exists() else shutil.which("mpiexec")
        if launcher is None:
            raise MeasureError("the mpi backend needs mpiexec (pip install mpi4py mpich)")
        return [[launcher, "-n", str(config.ranks), *worker, json.dumps(cfgs[0])]]
    if fabric is None:
        return [[*worker, json.dumps(c)] for c in cfgs]
    hosts = rank_hosts(config, fabric)
    return [
        ["ip", "netns", "exec", fabric.hosts[h].namespace, *worker, json.dumps(c)]
        for h, c in zip(hosts, cfgs)
    ]


def _tail(path: Path) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or [""])[-1]


def _end_all(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + 5
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def run_workers(
    config: MeasureConfig,
    fabric: FabricDescription | None,
    on_progress: Callable[[int], None] = lambda size: None,
) -> list[dict[str, Any]]:
    """Start every rank, wait for all of them, and return each rank's result dict (rank order)."""
    with tempfile.TemporaryDirectory(prefix="netsim-measure-") as tmp:
        out_dir = Path(tmp)
        os.chmod(out_dir, 0o777)
        cfgs = _worker_configs(config, fabric, out_dir)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(Path(netsim.__file__).resolve().parent.parent), os.environ.get("PYTHONPATH", "")]
            ).rstrip(os.pathsep),
            "PYTHONUNBUFFERED": "1",
            "OMP_NUM_THREADS": "1",
        }
        procs: list[subprocess.Popen[str]] = []
        errs = []
        try:
            for i, cmd in enumerate(_commands(config, fabric, cfgs)):
                err = out_dir / f"stderr{i}.txt"
                errs.append(err)
                procs.append(
                    subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err.open("w"), text=True, env=env)
                )
            reader = threading.Thread(target=_read_progress, args=(procs[0], on_progress), daemon=True)
            reader.start()
            budget = config.timeout * (2 + len(config.sizes)) + 30
            deadline = time.monotonic() + budget
            while any(p.poll() is None for p in procs):
                failed = [i for i, p in enumerate(procs) if p.returncode not in (None, 0)]
                if failed or time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            if any(p.poll() is None for p in procs) and not any(p.returncode for p in procs):
                raise MeasureError(
                    f"{config.backend.value} {config.collective.value}: ranks did not finish "
                    f"within {budget:.0f} s"
                )
            time.sleep(0.5)  # let the other ranks report their own errors
            failed = [i for i, p in enumerate(procs) if p.poll() not in (None, 0)]
            if failed:
                who = "mpiexec" if config.backend is BackendName.mpi else f"rank {failed[0]}"
                detail = "; ".join(
                    f"rank {i}: {_tail(errs[i]) or 'exit ' + str(procs[i].returncode)}" for i in failed
                )
                raise MeasureError(
                    f"{config.backend.value} {config.collective.value} failed on {who}: {detail}"
                )
        finally:
            _end_all(procs)
        results = []
        for r in range(config.ranks):
            path = out_dir / f"rank{r}.json"
            if not path.exists():
                raise MeasureError(f"rank {r} wrote no results ({_tail(errs[min(r, len(errs) - 1)])})")
            results.append(json.loads(path.read_text()))
        return results


def _read_progress(proc: subprocess.Popen[str], on_progress: Callable[[int], None]) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith("progress "):
            on_progress(int(line.split()[1]))
