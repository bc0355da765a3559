"""Path policies for split-TCP: which spine each subflow of each (source, destination) pair takes.

A subflow's path is chosen by its TCP *source port* (see :mod:`netsim.fabric.leafspine`): a port in spine
k's pinned range goes through spine k both ways; a port in the ECMP range is hashed by the leaves.

* ``minimal`` - the simulator's minimal splitting: cross-leaf pairs form a bipartite multigraph
  (source leaf -> destination leaf) of max degree D, edge-coloured with D colours; subflow j of a pair
  coloured c is pinned to spine ``(c + j*D) mod S``, with ``k = S / gcd(D, S)`` subflows by default
  (:class:`netsim.policies.ColouredSplit`).
* ``round-robin`` - subflow j of the i-th pair pinned to spine ``(i + j) mod S``.
* ``ecmp`` - k subflows with random source ports from the ECMP range (seeded); the hash picks spines.

Without a fabric (loopback) every subflow is unpinned and the kernel picks its port.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

import numpy as np

from netsim.colouring import edge_colouring, max_degree
from netsim.errors import PolicyError
from netsim.policies import minimal_splits


class PathPolicyName(str, enum.Enum):
    """Subflow path policies of the split-TCP transport."""

    minimal = "minimal"
    round_robin = "round-robin"
    ecmp = "ecmp"


@dataclass(frozen=True)
class SubflowPath:
    """How to open one subflow: ``spine`` to pin to (None = hashed), or a fixed ``port`` (0 = any)."""

    spine: int | None
    port: int = 0


@dataclass(frozen=True)
class PathPlan:
    """Subflow paths per directed pair ``(src_rank, dst_rank)``; pairs not listed use ``default_k`` x any."""

    paths: dict[tuple[int, int], tuple[SubflowPath, ...]]
    default_k: int = 1

    def subflows(self, src: int, dst: int) -> tuple[SubflowPath, ...]:
        """The subflows of ``src -> dst`` (at least one)."""
        return self.paths.get((src, dst), (SubflowPath(None),) * self.default_k)

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: ``{"src->dst": [[spine, port], ...]}``."""
        return {
            "default_k": self.default_k,
            "paths": {f"{s}->{d}": [[p.spine, p.port] for p in subs] for (s, d), subs in self.paths.items()},
        }


def plan_paths(
    pairs: list[tuple[int, int]],
    rank_leaf: list[int] | None,
    spines: int,
    policy: PathPolicyName,
    splits: int | None = None,
    seed: int = 0,
    ecmp_ports: tuple[int, int] = (40000, 59999),
) -> PathPlan:
    """Plan subflow paths for the directed rank pairs a collective uses.

    ``rank_leaf[r]`` is the leaf of rank r's host (None: no fabric, loopback). ``splits`` overrides k.
    """
    if splits is not None and splits < 1:
        raise PolicyError(f"--splits must be >= 1, found {splits}")
    if rank_leaf is None:
        return PathPlan({}, default_k=splits or 1)
    if spines < 1:
        raise PolicyError(f"a fabric needs >= 1 spine, found {spines}")
    for s, d in pairs:
        if not (0 <= s < len(rank_leaf) and 0 <= d < len(rank_leaf)) or s == d:
            raise PolicyError(f"pair {s}->{d} is not a pair of distinct ranks in 0..{len(rank_leaf) - 1}")
    pairs = sorted(set(pairs))
    src_leaf = np.array([rank_leaf[s] for s, _ in pairs], dtype=np.int64)
    dst_leaf = np.array([rank_leaf[d] for _, d in pairs], dtype=np.int64)
    cross = src_leaf != dst_leaf
    paths: dict[tuple[int, int], tuple[SubflowPath, ...]] = {}
    if policy is PathPolicyName.minimal:
        degree = max_degree(src_leaf[cross], dst_leaf[cross])
        k = splits if splits is not None else minimal_splits(degree, spines)
        colour = np.zeros(len(pairs), dtype=np.int64)
        colour[cross] = edge_colouring(src_leaf[cross], dst_leaf[cross])
        for i, pair in enumerate(pairs):
            paths[pair] = tuple(SubflowPath(int((colour[i] + j * max(degree, 1)) % spines)) for j in range(k))
    elif policy is PathPolicyName.round_robin:
        k = splits or spines
        paths = {pair: tuple(SubflowPath((i + j) % spines) for j in range(k)) for i, pair in enumerate(pairs)}
    elif policy is PathPolicyName.ecmp:
        k = splits or 1
        rng = random.Random(seed)
        lo, hi = ecmp_ports
        used: set[tuple[int, int]] = set()
        for pair in pairs:
            subs = []
            for _ in range(k):
                port = rng.randint(lo, hi)
                while (pair[0], port) in used:
                    port = rng.randint(lo, hi)
                used.add((pair[0], port))
                subs.append(SubflowPath(None, port))
            paths[pair] = tuple(subs)
    else:  # pragma: no cover - enum exhausted
        raise PolicyError(f"unknown path policy {policy!r}")
    return PathPlan(paths, default_k=k)
