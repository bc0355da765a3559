"""The schema of ``netsim measure --json``: one :class:`MeasuredRow` per (collective, size) measured.

``netsim measure`` writes a :class:`MeasureReport` (``{"schema": 1, "rows": [...]}``);
``netsim fit-transport`` reads it back with :func:`load_report`. Times are seconds, bandwidths bytes/s
(nccl-tests' definitions, :mod:`netsim.busbw`), sizes nccl-tests' per-rank buffer in bytes.

A row measured on an emulated fabric carries a :class:`FabricSummary`: the fabric's shape and link
rates, and the host of every rank, which is what the simulator needs to replay the run. Rows without
one (loopback, GPUs) can be reported but not fitted.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from netsim.errors import NetsimError

SCHEMA_VERSION = 1
BACKENDS = ("mpi", "gloo", "nccl", "split-tcp")
COLLECTIVES = ("allreduce", "allgather", "reducescatter", "alltoall")
QUANTILES = ("p50", "p95", "p99", "min", "max")


class MeasureSchemaError(NetsimError, ValueError):
    """A measurement file does not follow this schema."""


def _need(data: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in data:
        raise MeasureSchemaError(f"{where}: missing field {key!r}")
    value = data[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise MeasureSchemaError(f"{where}: field {key!r} must be {names}, found {value!r}")
    return value


@dataclass(frozen=True)
class SecondsStats:
    """Quantiles of one collective's completion time, across iterations and ranks (seconds)."""

    p50: float
    p95: float
    p99: float
    min: float
    max: float

    def __post_init__(self) -> None:
        values = [getattr(self, q) for q in QUANTILES]
        if not all(v > 0 for v in values):
            raise MeasureSchemaError(f"seconds must all be > 0, found {dict(zip(QUANTILES, values))}")
        if not self.min <= self.p50 <= self.p95 <= self.p99 <= self.max:
            raise MeasureSchemaError(f"seconds must satisfy min <= p50 <= p95 <= p99 <= max, found "
                                     f"{dict(zip(QUANTILES, values))}")

    @staticmethod
    def from_dict(data: dict[str, Any], where: str = "seconds") -> SecondsStats:
        """Parse and validate."""
        return SecondsStats(*(float(_need(data, q, (int, float), where)) for q in QUANTILES))


@dataclass(frozen=True)
class FabricSummary:
    """The emulated fabric a row ran on: shape, tbf rates (Mbit/s, on-wire bytes) and rank placement.

    ``rank_hosts[r]`` is the fabric host index of rank ``r`` (host ``h`` sits under leaf
    ``h // hosts_per_leaf``), as in :class:`netsim.topology.LeafSpine`.
    """

    name: str
    leaves: int
    hosts_per_leaf: int
    spines: int
    link_mbit: float
    spine_mbit: float
    rank_hosts: tuple[int, ...]
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("leaves", "hosts_per_leaf", "spines"):
            if getattr(self, key) < 1:
                raise MeasureSchemaError(f"fabric {self.name!r}: {key} must be >= 1, found {getattr(self, key)}")
        if not (self.link_mbit > 0 and self.spine_mbit > 0):
            raise MeasureSchemaError(f"fabric {self.name!r}: link rates must be > 0 Mbit/s, found "
                                     f"{self.link_mbit}, {self.spine_mbit}")
        hosts = self.leaves * self.hosts_per_leaf
        if len(set(self.rank_hosts)) != len(self.rank_hosts) or any(not 0 <= h < hosts for h in self.rank_hosts):
            raise MeasureSchemaError(f"fabric {self.name!r}: rank_hosts must be distinct hosts in 0..{hosts - 1}, "
                                     f"found {list(self.rank_hosts)}")

    @staticmethod
    def from_dict(data: dict[str, Any], where: str = "fabric") -> FabricSummary:
        """Parse and validate."""
        hosts = _need(data, "rank_hosts", list, where)
        if not all(isinstance(h, int) and not isinstance(h, bool) for h in hosts):
            raise MeasureSchemaError(f"{where}: rank_hosts must be integers, found {hosts!r}")
        return FabricSummary(
            name=_need(data, "name", str, where), leaves=_need(data, "leaves", int, where),
            hosts_per_leaf=_need(data, "hosts_per_leaf", int, where), spines=_need(data, "spines", int, where),
            link_mbit=float(_need(data, "link_mbit", (int, float), where)),
            spine_mbit=float(_need(data, "spine_mbit", (int, float), where)),
            rank_hosts=tuple(hosts), seed=int(data.get("seed", 0)))


@dataclass(frozen=True)
class MeasuredRow:
    """One measured (collective, size) point, with nccl-tests' columns.

    ``count`` is elements per rank buffer (``size_bytes / itemsize(dtype)``); ``algbw`` and ``busbw`` are
    computed from ``seconds.p50``. ``policy`` and ``splits`` describe split-tcp's path policy (``None``
    for other backends: they choose their own connections). ``paths`` is split-tcp's path plan when known:
    ``{"SRC->DST": [spine or None, ...]}`` in rank ids, one entry per subflow (None: left to ECMP hashing),
    as ``netsim.transport.paths.PathPlan.to_dict()["paths"]`` gives it with ports dropped.
    ``rank_seconds[r][i]`` is rank ``r``'s time in timed iteration ``i``: the samples the quantiles
    summarize (absent in reports written before it was added).
    """

    backend: str
    collective: str
    ranks: int
    size_bytes: int
    count: int
    dtype: str
    seconds: SecondsStats
    algbw: float
    busbw: float
    iters: int
    warmup: int
    policy: str | None = None
    splits: int | None = None
    fabric: FabricSummary | None = None
    paths: dict[str, tuple[int | None, ...]] | None = None
    rank_seconds: tuple[tuple[float, ...], ...] | None = None

    def __post_init__(self) -> None:
        where = f"row {self.backend}/{self.collective}/{self.size_bytes}"
        if self.backend not in BACKENDS:
            raise MeasureSchemaError(f"{where}: backend must be one of {', '.join(BACKENDS)}")
        if self.collective not in COLLECTIVES:
            raise MeasureSchemaError(f"{where}: collective must be one of {', '.join(COLLECTIVES)}")
        if self.ranks < 2 or self.size_bytes < 1 or self.count < 1 or self.iters < 1 or self.warmup < 0:
            raise MeasureSchemaError(f"{where}: need ranks >= 2, size_bytes >= 1, count >= 1, iters >= 1, "
                                     f"warmup >= 0; found {self.ranks}, {self.size_bytes}, {self.count}, "
                                     f"{self.iters}, {self.warmup}")
        if self.splits is not None and self.splits < 1:
            raise MeasureSchemaError(f"{where}: splits must be >= 1, found {self.splits}")
        for key, spines in (self.paths or {}).items():
            pair = key.split("->")
            if (len(pair) != 2 or not all(p.isdigit() and int(p) < self.ranks for p in pair) or not spines
                    or not all(s is None or (isinstance(s, int) and s >= 0) for s in spines)):
                raise MeasureSchemaError(f"{where}: paths entry {key!r}: {list(spines)!r} is not 'SRC->DST' (ranks "
                                         f"0..{self.ranks - 1}) with a non-empty list of spines or nulls")
        if self.fabric is not None and len(self.fabric.rank_hosts) != self.ranks:
            raise MeasureSchemaError(f"{where}: fabric.rank_hosts has {len(self.fabric.rank_hosts)} hosts for "
                                     f"{self.ranks} ranks")
        if self.rank_seconds is not None and (
                len(self.rank_seconds) != self.ranks
                or any(len(times) != self.iters or not all(t > 0 for t in times) for times in self.rank_seconds)):
            raise MeasureSchemaError(f"{where}: rank_seconds must hold {self.iters} positive times for each of "
                                     f"{self.ranks} ranks")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        out = asdict(self)
        if self.fabric is not None:
            out["fabric"]["rank_hosts"] = list(self.fabric.rank_hosts)
        if self.paths is not None:
            out["paths"] = {key: list(spines) for key, spines in self.paths.items()}
        if self.rank_seconds is not None:
            out["rank_seconds"] = [list(times) for times in self.rank_seconds]
        return out

    @staticmethod
    def from_dict(data: dict[str, Any], where: str = "row") -> MeasuredRow:
        """Parse and validate one row."""
        if not isinstance(data, dict):
            raise MeasureSchemaError(f"{where}: expected an object, found {type(data).__name__}")
        fabric = data.get("fabric")
        splits, policy, paths = data.get("splits"), data.get("policy"), data.get("paths")
        if paths is not None and not (isinstance(paths, dict) and all(isinstance(v, list) for v in paths.values())):
            raise MeasureSchemaError(f"{where}: paths must map 'SRC->DST' to lists of spines, found {paths!r}")
        rank_seconds = data.get("rank_seconds")
        if rank_seconds is not None and not (
                isinstance(rank_seconds, list) and all(isinstance(times, list) and all(
                    isinstance(t, (int, float)) and not isinstance(t, bool) for t in times) for times in rank_seconds)):
            raise MeasureSchemaError(f"{where}: rank_seconds must be a list of lists of seconds, one per rank")
        return MeasuredRow(
            backend=_need(data, "backend", str, where), collective=_need(data, "collective", str, where),
            ranks=_need(data, "ranks", int, where), size_bytes=_need(data, "size_bytes", int, where),
            count=_need(data, "count", int, where), dtype=_need(data, "dtype", str, where),
            seconds=SecondsStats.from_dict(_need(data, "seconds", dict, where), f"{where}.seconds"),
            algbw=float(_need(data, "algbw", (int, float), where)),
            busbw=float(_need(data, "busbw", (int, float), where)),
            iters=_need(data, "iters", int, where), warmup=_need(data, "warmup", int, where),
            policy=None if policy is None else _need(data, "policy", str, where),
            splits=None if splits is None else _need(data, "splits", int, where),
            fabric=None if fabric is None else FabricSummary.from_dict(
                _need(data, "fabric", dict, where), f"{where}.fabric"),
            paths=None if paths is None else {k: tuple(v) for k, v in paths.items()},
            rank_seconds=None if rank_seconds is None else tuple(tuple(map(float, t)) for t in rank_seconds))


@dataclass(frozen=True)
class MeasureReport:
    """What ``netsim measure --json`` prints: the schema version and the rows."""

    rows: tuple[MeasuredRow, ...]
    schema: int = SCHEMA_VERSION
    meta: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values."""
        return {"schema": self.schema, "meta": self.meta, "rows": [r.to_dict() for r in self.rows]}

    @staticmethod
    def from_dict(data: Any, where: str = "report") -> MeasureReport:
        """Parse and validate a whole report."""
        if not isinstance(data, dict):
            raise MeasureSchemaError(f"{where}: expected an object with 'schema' and 'rows'")
        schema = _need(data, "schema", int, where)
        if schema != SCHEMA_VERSION:
            raise MeasureSchemaError(f"{where}: schema {schema} is not supported (expected {SCHEMA_VERSION})")
        rows = _need(data, "rows", list, where)
        meta = data.get("meta", {})
        if not isinstance(meta, dict):
            raise MeasureSchemaError(f"{where}: meta must be an object, found {meta!r}")
        return MeasureReport(tuple(MeasuredRow.from_dict(r, f"{where}: rows[{i}]") for i, r in enumerate(rows)),
                             schema, meta)


def load_report(path: str | Path) -> MeasureReport:
    """Read a ``netsim measure --json`` file; errors name the file and the offending row."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise MeasureSchemaError(f"cannot read measurements {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise MeasureSchemaError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    return MeasureReport.from_dict(data, str(path))
