"""Flows, jobs and placements: what the engine is asked to carry.

A :class:`FlowSet` is one step's flows (all start together). A :class:`Job` is a sequence of steps; step
``k + 1`` starts when every flow of step ``k`` has finished. Steps that repeat the same pattern share one
FlowSet object, which lets policies and the engine reuse work (see :mod:`netsim.engine`).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from netsim.errors import TrafficError

PORT_BASE = 49152


@dataclass(frozen=True, eq=False)
class FlowSet:
    """Flows that start together: sources, destinations (rank or host ids) and sizes in bytes.

    ``port`` is each flow's transport source port; together with src and dst it is the 5-tuple ECMP
    hashes. Collectives keep the same ports across steps, like persistent NCCL connections.
    """

    src: np.ndarray
    dst: np.ndarray
    size: np.ndarray
    port: np.ndarray

    @staticmethod
    def build(src: Sequence[int] | np.ndarray, dst: Sequence[int] | np.ndarray,
              size: Sequence[float] | np.ndarray | float, port: Sequence[int] | np.ndarray | None = None,
              ) -> FlowSet:
        """Validate and freeze arrays into a FlowSet (``size`` may be a scalar)."""
        src_a = np.asarray(src, dtype=np.int64).reshape(-1)
        dst_a = np.asarray(dst, dtype=np.int64).reshape(-1)
        size_a = np.broadcast_to(np.asarray(size, dtype=np.float64), src_a.shape).copy()
        if src_a.shape != dst_a.shape:
            raise TrafficError(f"src and dst must have equal length, found {src_a.size} and {dst_a.size}")
        if (src_a < 0).any() or (dst_a < 0).any():
            raise TrafficError("flow endpoints must be non-negative ids")
        if (src_a == dst_a).any():
            i = int(np.flatnonzero(src_a == dst_a)[0])
            raise TrafficError(f"flow {i} goes from {src_a[i]} to itself")
        if not np.isfinite(size_a).all() or (size_a <= 0).any():
            raise TrafficError("flow sizes must be finite and > 0 bytes")
        port_a = (np.full(src_a.shape, PORT_BASE, dtype=np.int64) if port is None
                  else np.asarray(port, dtype=np.int64).reshape(-1))
        if port_a.shape != src_a.shape:
            raise TrafficError(f"port must have one entry per flow, found {port_a.size} for {src_a.size}")
        for a in (src_a, dst_a, size_a, port_a):
            a.setflags(write=False)
        return FlowSet(src_a, dst_a, size_a, port_a)

    def __len__(self) -> int:
        return int(self.src.size)

    def on_hosts(self, hosts: np.ndarray, job_index: int = 0) -> FlowSet:
        """Map rank ids to host ids (``hosts[rank]``); ports become distinct per job and rank pair."""
        src, dst = hosts[self.src], hosts[self.dst]
        port = PORT_BASE + (src * 7919 + dst * 104729 + job_index * 1299709 + self.port) % 16384
        return FlowSet.build(src, dst, self.size, port)


@dataclass(frozen=True)
class Job:
    """A named sequence of steps on hosts, started at ``start`` seconds."""

    name: str
    steps: tuple[FlowSet, ...]
    start: float = 0.0

    def max_host(self) -> int:
        """Largest host id any step uses (-1 for a job with no flows)."""
        return max((int(max(s.src.max(), s.dst.max())) for s in self.steps if len(s)), default=-1)


def place(n_ranks: int, hosts: int, how: str, rng: np.random.Generator | None = None,
          given: Sequence[int] | None = None) -> np.ndarray:
    """Choose the host of every rank: ``packed`` (rank i on host i), ``random`` or ``given``."""
    if n_ranks < 2:
        raise TrafficError(f"a collective needs at least 2 ranks, found {n_ranks}")
    if n_ranks > hosts:
        raise TrafficError(f"{n_ranks} ranks do not fit on {hosts} hosts")
    if how == "packed":
        return np.arange(n_ranks, dtype=np.int64)
    if how == "random":
        rng = rng if rng is not None else np.random.default_rng(0)
        return rng.permutation(hosts)[:n_ranks].astype(np.int64)
    if how == "given":
        if given is None or len(given) != n_ranks:
            raise TrafficError(f"placement 'given' needs {n_ranks} host ids, found "
                               f"{0 if given is None else len(given)}")
        out = np.asarray(given, dtype=np.int64)
        if len(set(out.tolist())) != n_ranks or out.min() < 0 or out.max() >= hosts:
            raise TrafficError(f"given placement must be {n_ranks} distinct hosts in 0..{hosts - 1}")
        return out
    raise TrafficError(f"unknown placement {how!r}; expected one of packed, random, given")


def _rows_to_job(rows: list[dict[str, object]], where: str, name: str) -> Job:
    by_step: dict[int, tuple[list[int], list[int], list[float]]] = {}
    for i, row in enumerate(rows):
        try:
            src, dst = int(row["src"]), int(row["dst"])  # type: ignore[call-overload]
            size = float(row["bytes"])  # type: ignore[arg-type]
            step = int(row.get("step", 0) or 0)  # type: ignore[call-overload]
        except KeyError as exc:
            raise TrafficError(f"{where}: flow {i + 1} lacks field {exc.args[0]!r} "
                               "(expected src, dst, bytes and optional step)") from None
        except (TypeError, ValueError):
            raise TrafficError(f"{where}: flow {i + 1} has a non-numeric field: {row}") from None
        if src < 0 or dst < 0 or src == dst or not size > 0 or step < 0:
            raise TrafficError(f"{where}: flow {i + 1} is invalid (need distinct hosts >= 0, bytes > 0, "
                               f"step >= 0), found {row}")
        s, d, b = by_step.setdefault(step, ([], [], []))
        s.append(src)
        d.append(dst)
        b.append(size)
    if not by_step:
        raise TrafficError(f"{where}: no flows found")
    steps = tuple(FlowSet.build(*by_step[k], port=PORT_BASE + np.arange(len(by_step[k][0])) % 16384)
                  for k in sorted(by_step))
    return Job(name, steps)


def load_matrix(path: str | Path, name: str | None = None) -> Job:
    """Read a traffic matrix from CSV (header ``src,dst,bytes[,step]``) or JSON.

    JSON is either a list of ``{"src", "dst", "bytes", "step"?}`` objects or ``{"flows": [...]}``.
    Flows of the same step start together; steps run in increasing order.
    """
    path = Path(path)
    name = name or path.stem
    try:
        text = path.read_text()
    except OSError as exc:
        raise TrafficError(f"cannot read traffic matrix {path}: {exc.strerror}") from None
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise TrafficError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
        flows = data.get("flows") if isinstance(data, dict) else data
        if not isinstance(flows, list) or not all(isinstance(f, dict) for f in flows):
            raise TrafficError(f"{path}: expected a list of flow objects or {{\"flows\": [...]}}")
        return _rows_to_job(flows, str(path), name)
    reader = csv.DictReader(text.splitlines())
    missing = {"src", "dst", "bytes"} - set(reader.fieldnames or [])
    if missing:
        raise TrafficError(f"{path}: CSV header lacks {sorted(missing)}; found {reader.fieldnames}")
    return _rows_to_job(list(reader), str(path), name)
