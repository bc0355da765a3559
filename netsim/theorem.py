"""Empirical check of the splitting theorem (Addanki et al., arXiv 2407.00550) over random instances.

For equal-size flows starting together on a leaf-spine fabric, single-path transport with minimal
application-level splitting (k = P / gcd(D, P) subflows per flow, coloured assignment) should reach ideal
packet spraying's maximum congestion. Each trial measures, on a random topology and traffic pattern, the
maximum leaf-spine congestion and the CCT of spraying, minimal splitting and ECMP, and the smallest k with
which splitting matches spraying's congestion.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from netsim.colouring import max_degree
from netsim.engine import simulate
from netsim.metrics import link_congestion
from netsim.policies import ColouredSplit, Ecmp, PathPolicy, Spray, healthy_paths, minimal_splits
from netsim.topology import LEAF_UP, LeafSpine
from netsim.traffic import FlowSet, Job

PATTERNS = ("permutation", "ring", "random-pairs")
_TOL = 1e-9


@dataclass(frozen=True)
class TheoremTrial:
    """One random instance and what each policy achieved on it."""

    leaves: int
    hosts_per_leaf: int
    spines: int
    pattern: str
    degree: int
    k_formula: int
    k_needed: int
    spray_congestion: float
    split_congestion: float
    ecmp_congestion: float
    spray_cct: float
    split_cct: float
    ecmp_cct: float

    @property
    def congestion_equal(self) -> bool:
        """Minimal splitting reached spraying's maximum fabric congestion."""
        return abs(self.split_congestion - self.spray_congestion) <= _TOL * max(self.spray_congestion, 1.0)

    @property
    def cct_equal(self) -> bool:
        """Minimal splitting reached spraying's CCT (relative 1e-6)."""
        return abs(self.split_cct - self.spray_cct) <= 1e-6 * self.spray_cct


def fabric_congestion(topology: LeafSpine, flows: FlowSet, policy: PathPolicy) -> float:
    """Maximum congestion over leaf-spine links (see :func:`netsim.metrics.link_congestion`)."""
    congestion = link_congestion(topology, flows, policy.route(topology, flows))
    return float(congestion[topology.link_kind() >= LEAF_UP].max())


def random_instance(rng: np.random.Generator) -> tuple[LeafSpine, FlowSet, str]:
    """A random fabric (2-8 leaves, 1-8 hosts per leaf, 1-8 spines) and one step of equal-size flows."""
    while True:
        topology = LeafSpine(int(rng.integers(2, 9)), int(rng.integers(1, 9)), int(rng.integers(1, 9)), 100.0)
        if topology.hosts >= 3:
            break
    n = topology.hosts
    pattern = PATTERNS[int(rng.integers(len(PATTERNS)))]
    if pattern == "permutation":
        dst = rng.permutation(n)
        while (dst == np.arange(n)).any():
            dst = rng.permutation(n)
        src = np.arange(n)
    elif pattern == "ring":
        src = rng.permutation(n)
        dst = np.roll(src, -1)
    else:
        src = np.arange(n)
        dst = (src + rng.integers(1, n, size=n)) % n
    return topology, FlowSet.build(src, dst, 1e6, 49152 + np.arange(n)), pattern


def check_instance(topology: LeafSpine, flows: FlowSet, pattern: str, seed: int) -> TheoremTrial:
    """Measure spraying, minimal splitting and ECMP on one instance."""
    paths = int(healthy_paths(topology)[0].size)
    src_leaf, dst_leaf = topology.leaf_of(flows.src), topology.leaf_of(flows.dst)
    cross = src_leaf != dst_leaf
    degree = max_degree(src_leaf[cross], dst_leaf[cross])
    k_formula = minimal_splits(degree, paths)
    spray = fabric_congestion(topology, flows, Spray())
    k_needed = next(k for k in range(1, paths + 1)
                    if fabric_congestion(topology, flows, ColouredSplit(k)) <= spray * (1 + _TOL) + _TOL)
    job = [Job("trial", (flows,))]
    ecmp = Ecmp(seed)
    return TheoremTrial(
        topology.leaves, topology.hosts_per_leaf, topology.spines, pattern, degree, k_formula, k_needed,
        spray, fabric_congestion(topology, flows, ColouredSplit()), fabric_congestion(topology, flows, ecmp),
        simulate(topology, job, Spray()).cct_seconds, simulate(topology, job, ColouredSplit()).cct_seconds,
        simulate(topology, job, ecmp).cct_seconds,
    )


def run_trials(trials: int, seed: int = 0) -> list[TheoremTrial]:
    """Check ``trials`` random instances, deterministically from ``seed``."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(trials):
        topology, flows, pattern = random_instance(rng)
        out.append(check_instance(topology, flows, pattern, seed * 1_000_003 + i))
    return out


def summarize(trials: list[TheoremTrial]) -> list[dict[str, object]]:
    """One row per case (all, k = 1, k > 1, each pattern): agreement rates and ECMP's distance from spraying."""
    cases = {
        "all": trials,
        "k_formula = 1": [t for t in trials if t.k_formula == 1],
        "k_formula > 1": [t for t in trials if t.k_formula > 1],
    } | {f"pattern {p}": [t for t in trials if t.pattern == p] for p in PATTERNS}
    rows = []
    for case, group in cases.items():
        if not group:
            continue
        ecmp_cong = np.array([t.ecmp_congestion / t.spray_congestion if t.spray_congestion else 1.0
                              for t in group])
        ecmp_cct = np.array([t.ecmp_cct / t.spray_cct for t in group])
        split_cct = np.array([t.split_cct / t.spray_cct for t in group])
        rows.append({
            "case": case,
            "trials": len(group),
            "split_congestion_equals_spray": float(np.mean([t.congestion_equal for t in group])),
            "k_needed_equals_formula": float(np.mean([t.k_needed == t.k_formula for t in group])),
            "k_formula_max": max(t.k_formula for t in group),
            "split_cct_equals_spray": float(np.mean([t.cct_equal for t in group])),
            "split_cct_over_spray_max": float(split_cct.max()),
            "split_cct_over_spray_min": float(split_cct.min()),
            "ecmp_congestion_over_spray_mean": float(ecmp_cong.mean()),
            "ecmp_congestion_over_spray_max": float(ecmp_cong.max()),
            "ecmp_cct_over_spray_mean": float(ecmp_cct.mean()),
            "ecmp_cct_over_spray_max": float(ecmp_cct.max()),
        })
    return rows


def trial_dict(trial: TheoremTrial) -> dict[str, object]:
    """A trial as a plain dict, with its verdicts."""
    return asdict(trial) | {"congestion_equal": trial.congestion_equal, "cct_equal": trial.cct_equal}
