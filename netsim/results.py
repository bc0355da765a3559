"""Simulation results as plain dataclasses, exported to JSON and CSV."""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from netsim.busbw import algbw, busbw
from netsim.topology import LINK_KINDS, LeafSpine
from netsim.transport_model import IDEAL, TransportModel


@dataclass(frozen=True)
class StepRecord:
    """One step of one job: when it ran, its ideal lower bound and its maximum link congestion."""

    job: str
    index: int
    start: float
    end: float
    ideal_seconds: float
    max_congestion: float

    @property
    def seconds(self) -> float:
        """Duration of the step."""
        return self.end - self.start


@dataclass(frozen=True)
class CollectiveRun:
    """What every simulated job ran, in nccl-tests' terms: collective, per-rank buffer, ranks per job."""

    name: str
    size_bytes: float
    ranks: int


def weighted_quantiles(groups: list[np.ndarray], counts: list[int], qs: list[float]) -> list[float]:
    """Quantiles of the multiset in which array ``groups[i]`` appears ``counts[i]`` times."""
    values = np.concatenate(groups)
    weights = np.concatenate([np.full(g.size, c, dtype=np.float64) for g, c in zip(groups, counts)])
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weights[order])
    idx = np.searchsorted(cum, np.asarray(qs) * cum[-1], side="left")
    return [float(values[order][min(i, values.size - 1)]) for i in idx]


@dataclass
class SimulationResult:
    """Outcome of :func:`netsim.engine.simulate`.

    ``flow_fct[i]`` holds the completion time of every flow of ``steps[i]``, measured from the step's
    start; steps replayed from an identical earlier step share that step's array.
    """

    policy: str
    topology: dict[str, object]
    cct_seconds: float
    ideal_cct_seconds: float
    max_congestion: float
    splits: int
    job_cct: dict[str, float]
    steps: list[StepRecord]
    flow_fct: list[np.ndarray]
    link_bytes: np.ndarray
    link_capacity: np.ndarray
    events_simulated: int
    events_replayed: int
    wall_seconds: float
    transport: TransportModel = IDEAL
    collective: CollectiveRun | None = None

    @property
    def gap(self) -> float:
        """Relative distance of the CCT above the ideal lower bound (0.0 = ideal)."""
        return self.cct_seconds / self.ideal_cct_seconds - 1.0 if self.ideal_cct_seconds > 0 else 0.0

    @property
    def link_utilisation(self) -> np.ndarray:
        """Average utilisation of every link over the whole run (bytes / (capacity * CCT))."""
        denom = self.link_capacity * self.cct_seconds
        return np.divide(self.link_bytes, denom, out=np.zeros_like(self.link_bytes), where=denom > 0)

    @property
    def algbw(self) -> float | None:
        """nccl-tests' algorithm bandwidth (bytes/s) of the slowest job; None without a collective."""
        if self.collective is None or self.cct_seconds <= 0:
            return None
        return algbw(self.collective.size_bytes, max(self.job_cct.values()))

    @property
    def busbw(self) -> float | None:
        """nccl-tests' bus bandwidth (bytes/s) of the slowest job; None without a collective."""
        if self.collective is None or self.cct_seconds <= 0:
            return None
        c = self.collective
        return busbw(c.name, c.size_bytes, max(self.job_cct.values()), c.ranks)

    def fct_groups(self) -> tuple[list[np.ndarray], list[int]]:
        """Distinct per-step FCT arrays and how many steps share each."""
        seen: dict[int, int] = {}
        groups: list[np.ndarray] = []
        counts: list[int] = []
        for arr in self.flow_fct:
            if id(arr) in seen:
                counts[seen[id(arr)]] += 1
            else:
                seen[id(arr)] = len(groups)
                groups.append(arr)
                counts.append(1)
        return groups, counts

    def fct_quantiles(self, qs: list[float]) -> list[float]:
        """Quantiles of the per-flow completion times over all steps."""
        groups, counts = self.fct_groups()
        return weighted_quantiles(groups, counts, qs) if groups else [0.0] * len(qs)

    def to_dict(self, detail: bool = False) -> dict[str, object]:
        """Summary as plain JSON-ready values; ``detail`` adds per-step times and per-link utilisation."""
        durations = np.array([s.seconds for s in self.steps])
        p50, p99, pmax = self.fct_quantiles([0.5, 0.99, 1.0])
        out: dict[str, object] = {
            "policy": self.policy,
            "topology": self.topology,
            "cct_seconds": self.cct_seconds,
            "ideal_cct_seconds": self.ideal_cct_seconds,
            "gap": self.gap,
            "max_congestion": self.max_congestion,
            "splits": self.splits,
            "job_cct_seconds": self.job_cct,
            "steps": len(self.steps),
            "step_seconds_min": float(durations.min()) if durations.size else 0.0,
            "step_seconds_max": float(durations.max()) if durations.size else 0.0,
            "fct_seconds_p50": p50,
            "fct_seconds_p99": p99,
            "fct_seconds_max": pmax,
            "max_link_utilisation": float(self.link_utilisation.max()),
            "events_simulated": self.events_simulated,
            "events_replayed": self.events_replayed,
            "wall_seconds": self.wall_seconds,
            "transport": self.transport.to_dict(),
        }
        if self.collective is not None:
            out.update(collective=self.collective.name, size_bytes=self.collective.size_bytes,
                       ranks=self.collective.ranks, algbw_Bps=self.algbw, busbw_Bps=self.busbw)
        if detail:
            out["step_seconds"] = durations.tolist()
            out["link_utilisation"] = self.link_utilisation.tolist()
        return out

    def write_json(self, path: str | Path, detail: bool = False) -> None:
        """Write :meth:`to_dict` as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(detail), indent=2) + "\n")

    def write_steps_csv(self, path: str | Path) -> None:
        """One row per step: job, index, start, end, seconds, ideal, congestion."""
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["job", "step", "start_s", "end_s", "seconds", "ideal_seconds", "max_congestion"])
            for s in self.steps:
                w.writerow([s.job, s.index, s.start, s.end, s.seconds, s.ideal_seconds, s.max_congestion])

    def write_flows_csv(self, path: str | Path) -> None:
        """One row per flow: job, step, flow index, completion time from the step's start."""
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["job", "step", "flow", "fct_s"])
            for s, fct in zip(self.steps, self.flow_fct):
                w.writerows([s.job, s.index, i, t] for i, t in enumerate(fct.tolist()))

    def write_links_csv(self, path: str | Path, topology: LeafSpine) -> None:
        """One row per link: id, name, kind, capacity, bytes, utilisation."""
        kinds = topology.link_kind()
        util = self.link_utilisation
        with open(path, "w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["link", "name", "kind", "capacity_Bps", "bytes", "utilisation"])
            for i in range(topology.num_links):
                w.writerow([i, topology.link_name(i), LINK_KINDS[kinds[i]], self.link_capacity[i],
                            self.link_bytes[i], util[i]])
