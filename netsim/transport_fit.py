"""Fit a :class:`~netsim.transport_model.TransportModel` to ``netsim measure --json`` rows.

Every measured row on an emulated fabric becomes a :class:`Scenario`: the fabric as a
:class:`~netsim.topology.LeafSpine` (tbf rates are on-wire rates), the collective on the measured rank
placement, and the measured routing (split-TCP's path plan: pinned spines; unpinned subflows are hashed by
netsim's ECMP, which is not the kernel's hash, so such rows are predicted but not fitted).

For one job of barrier steps the predicted CCT is (nearly) linear in the start-up and in
``1 / rate_efficiency``: ``cct = F / rate_efficiency + message_startup * S + hop_latency * H``, where ``F``
is the time of the rate-limited on-wire bytes (with the sharing loss, burst and subflow floor of a grid
point) and ``S``, ``H`` count steps and hops. :func:`fit_transport` scans ``sharing_loss``, ``burst_bytes``
and ``subflow_startup_s`` on grids and, for each point, solves a non-negative least-absolute-deviations
problem on relative errors; the hop latency is held fixed (with the start-up it is not
identifiable from CCTs: every cross-leaf step has 4 hops).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from itertools import combinations, product

import numpy as np

from netsim.collectives import collective_job, collective_steps
from netsim.engine import simulate
from netsim.errors import NetsimError
from netsim.given_paths import GivenPaths
from netsim.measure_schema import MeasuredRow
from netsim.topology import LeafSpine
from netsim.traffic import Job
from netsim.transport_model import TCP_DEFAULT, TransportModel

SIM_COLLECTIVE = {"allreduce": "ring-allreduce", "allgather": "ring-allgather",
                  "reducescatter": "ring-reducescatter", "alltoall": "alltoall"}
SHARING_GRID = (0.0, 0.05, 0.1, 0.2, 0.3)
BURST_TICKS = (0.0, 0.5, 1.0)
SUBFLOW_GRID = (0.0, 1e-4, 2e-4, 4e-4)


class FitError(NetsimError, ValueError):
    """The measurements cannot be fitted (no usable rows, or rows the simulator cannot replay)."""


@dataclass(frozen=True)
class Scenario:
    """A measured row as the simulator sees it; ``routing_known``: no cross-leaf subflow was hashed."""

    row: MeasuredRow
    topology: LeafSpine
    job: Job
    policy: GivenPaths
    routing_known: bool

    def predict(self, model: TransportModel) -> float:
        """Simulated CCT in seconds under ``model``."""
        return simulate(self.topology, [self.job], self.policy, transport=model).cct_seconds


def _rank_paths(row: MeasuredRow, pairs: list[tuple[int, int]], rank_leaf: list[int],
                spines: int) -> dict[tuple[int, int], tuple[int | None, ...]]:
    """Split-TCP's plan in rank ids: from the row, or re-planned with the transport's own planner."""
    if row.paths is not None:
        return {(int(k.split("->")[0]), int(k.split("->")[1])): v for k, v in row.paths.items()}
    from netsim.transport.paths import PathPolicyName, plan_paths

    try:
        policy = PathPolicyName(row.policy)
    except ValueError:
        raise FitError(f"row {row.collective}/{row.size_bytes}: unknown split-tcp policy {row.policy!r}") from None
    plan = plan_paths(pairs, rank_leaf, spines, policy, row.splits, row.fabric.seed if row.fabric else 0)
    return {pair: tuple(p.spine for p in plan.subflows(*pair)) for pair in pairs}


def scenario(row: MeasuredRow) -> Scenario:
    """Build the simulator's view of one measured row (it must carry a fabric summary)."""
    f = row.fabric
    if f is None:
        raise FitError(f"row {row.backend}/{row.collective}/{row.size_bytes} has no fabric: it ran on loopback "
                       "or GPUs and cannot be simulated")
    topology = LeafSpine(f.leaves, f.hosts_per_leaf, f.spines, f.link_mbit / 1000, f.spine_mbit / 1000)
    hosts = np.asarray(f.rank_hosts, dtype=np.int64)
    name = SIM_COLLECTIVE[row.collective]
    pairs = sorted({(int(s), int(d)) for step in collective_steps(name, row.ranks, 1.0)
                    for s, d in zip(step.src, step.dst)})
    rank_leaf = [int(h) // f.hosts_per_leaf for h in f.rank_hosts]
    if row.backend == "split-tcp":
        rank_paths = _rank_paths(row, pairs, rank_leaf, f.spines)
    else:
        rank_paths = {}  # one connection per pair, hashed by ECMP
    paths = {(int(hosts[s]), int(hosts[d])): spines for (s, d), spines in rank_paths.items()}
    cross = [(s, d) for s, d in pairs if rank_leaf[s] != rank_leaf[d]]
    known = f.spines == 1 or all(None not in rank_paths.get(pair, (None,)) for pair in cross)
    job = collective_job("measured", name, hosts, float(row.size_bytes))
    return Scenario(row, topology, job, GivenPaths(paths, 1, f.seed), known)


@dataclass(frozen=True)
class RowComparison:
    """Measured p50 CCT beside the default model's and the fitted model's predictions."""

    scenario: Scenario
    measured_s: float
    default_s: float
    fitted_s: float
    used_in_fit: bool

    @property
    def default_error(self) -> float:
        """Relative error of the default model's prediction."""
        return self.default_s / self.measured_s - 1

    @property
    def fitted_error(self) -> float:
        """Relative error of the fitted model's prediction."""
        return self.fitted_s / self.measured_s - 1

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready values."""
        r = self.scenario.row
        return {"backend": r.backend, "collective": r.collective, "policy": r.policy, "splits": r.splits,
                "ranks": r.ranks, "size_bytes": r.size_bytes, "rank_hosts": list(r.fabric.rank_hosts) if r.fabric
                else None, "routing_known": self.scenario.routing_known, "used_in_fit": self.used_in_fit,
                "measured_s": self.measured_s, "default_s": self.default_s, "fitted_s": self.fitted_s,
                "default_error": self.default_error, "fitted_error": self.fitted_error}


@dataclass(frozen=True)
class FitResult:
    """The fitted model and every row's comparison."""

    model: TransportModel
    rows: tuple[RowComparison, ...]

    def max_error(self, fitted: bool = True, only_fitted_rows: bool = True) -> float:
        """Largest absolute relative error over the rows (those used in the fit by default)."""
        errors = [abs(c.fitted_error if fitted else c.default_error) for c in self.rows
                  if c.used_in_fit or not only_fitted_rows]
        return max(errors, default=0.0)

    def to_dict(self) -> dict[str, object]:
        """Plain JSON-ready values."""
        return {"model": self.model.to_dict(), "rows_fitted": sum(c.used_in_fit for c in self.rows),
                "max_error_default": self.max_error(fitted=False), "max_error_fitted": self.max_error(),
                "rows": [c.to_dict() for c in self.rows]}


def _nnls(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Non-negative least squares for a handful of columns, by trying every support set."""
    best, best_x = np.inf, np.zeros(a.shape[1])
    for size in range(a.shape[1] + 1):
        for support in combinations(range(a.shape[1]), size):
            x = np.zeros(a.shape[1])
            if support:
                x[list(support)] = np.linalg.lstsq(a[:, support], b, rcond=None)[0]
            if (x >= 0).all():
                residual = float(np.sum((a @ x - b) ** 2))
                if residual < best - 1e-15:
                    best, best_x = residual, x
    return best_x


def _robust_nnls(a: np.ndarray, b: np.ndarray, iterations: int = 20) -> np.ndarray:
    """Non-negative least absolute deviations by iteratively reweighted least squares.

    Outliers (a collective stalled by a retransmission timeout or a delayed ACK) then pull the fit far less
    than in least squares.
    """
    weight = np.ones(b.size)
    x = np.zeros(a.shape[1])
    for _ in range(iterations):
        root = np.sqrt(weight)[:, None]
        x = _nnls(a * root, b * root[:, 0])
        weight = 1.0 / np.maximum(np.abs(a @ x - b), 1e-3)
    return x


def fit_transport(rows: list[MeasuredRow], hop_latency_s: float = TCP_DEFAULT.hop_latency_s,
                  base: TransportModel = TCP_DEFAULT, source: str = "fitted") -> FitResult:
    """Fit rate efficiency, sharing loss, burst and start-up terms to the rows with known routing.

    The objective is the sum of absolute relative CCT errors. Sharing loss and burst are scanned on grids
    (burst in units of a 4 ms kernel tick at the host link rate, tbf's bucket on the emulated fabric);
    the linear terms are solved for each grid point.
    """
    scenarios = [scenario(r) for r in rows]
    fit = [s for s in scenarios if s.routing_known]
    if not fit:
        raise FitError(f"none of the {len(rows)} row(s) has known routing (pinned subflows); nothing to fit")
    zero = replace(base, rate_efficiency=1.0, sharing_loss=0.0, message_startup_s=0.0, subflow_startup_s=0.0,
                   hop_latency_s=0.0, burst_bytes=0.0)
    y = np.array([s.row.seconds.p50 for s in fit])
    f0 = np.array([s.predict(zero) for s in fit])
    steps, hops = (np.array([s.predict(replace(zero, **{name: 1.0})) for s in fit]) - f0
                   for name in ("message_startup_s", "hop_latency_s"))
    tick = fit[0].topology.host_capacity / 250
    best: tuple[float, TransportModel] | None = None
    for burst, loss, per_subflow in product(BURST_TICKS, SHARING_GRID, SUBFLOW_GRID):
        trial = replace(zero, sharing_loss=loss, burst_bytes=burst * tick, subflow_startup_s=per_subflow)
        for _ in range(2):  # solve, then re-simulate at the solved rate (the subflow floor does not scale)
            fluid = f0 if trial == zero else np.array([s.predict(trial) for s in fit])
            u, startup = _robust_nnls(np.stack([fluid, steps], axis=1) / y[:, None],
                                      (y - fluid - hop_latency_s * hops) / y)
            trial = replace(trial, rate_efficiency=float(min(trial.rate_efficiency / (1 + u), 1.0)))
        pred = fluid * (1 + u) + startup * steps + hop_latency_s * hops
        score = float(np.sum(np.abs(pred / y - 1)))
        if best is None or score < best[0] - 1e-12:
            best = (score, replace(base, rate_efficiency=trial.rate_efficiency, sharing_loss=float(loss),
                                   message_startup_s=float(startup), subflow_startup_s=float(per_subflow),
                                   hop_latency_s=hop_latency_s, burst_bytes=float(burst * tick), source=source))
    assert best is not None
    model = best[1]
    comparisons = tuple(RowComparison(s, s.row.seconds.p50, s.predict(base), s.predict(model), s.routing_known)
                        for s in scenarios)
    return FitResult(model, comparisons)
