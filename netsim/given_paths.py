"""A path policy that replays a known plan: each flow's subflows pinned to given spines (or hashed).

Used to simulate what split-TCP did on the emulated fabric: its path plan says, per (source, destination)
host pair, which spine every subflow was pinned to; ``None`` means the subflow was left to ECMP, which
this policy hashes with :class:`netsim.policies.Ecmp` (the kernel's hash is not reproduced).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from netsim.errors import PolicyError
from netsim.policies import Ecmp, Routing, single_path_routing
from netsim.topology import LeafSpine
from netsim.traffic import FlowSet


@dataclass(frozen=True)
class GivenPaths:
    """Subflows of every host pair on given spines; pairs not in ``paths`` get ``default_k`` hashed subflows."""

    paths: dict[tuple[int, int], tuple[int | None, ...]] = field(default_factory=dict)
    default_k: int = 1
    seed: int = 0
    name: str = "given-paths"

    def __post_init__(self) -> None:
        if self.default_k < 1 or any(not spines for spines in self.paths.values()):
            raise PolicyError("given paths need >= 1 subflow per pair")

    def route(self, topology: LeafSpine, flows: FlowSet) -> Routing:
        """Split each flow evenly over its pair's subflows; pinned ones on their spine, the rest hashed."""
        plans = [self.paths.get(pair, (None,) * self.default_k)
                 for pair in zip(flows.src.tolist(), flows.dst.tolist())]
        k = np.array([len(p) for p in plans], dtype=np.int64)
        flow = np.repeat(np.arange(len(flows)), k)
        j = np.concatenate([np.arange(n) for n in k]) if len(flows) else np.zeros(0, dtype=np.int64)
        given = np.array([-1 if s is None else s for p in plans for s in p], dtype=np.int64)
        if (given >= topology.spines).any():
            raise PolicyError(f"a given path names spine {int(given.max())}; the fabric has {topology.spines}")
        src, dst = flows.src[flow], flows.dst[flow]
        plane, spine = Ecmp(self.seed).choose(topology, src, dst, flows.port[flow] * 64 + j)
        spine = np.where(given >= 0, given, spine)
        return single_path_routing(topology, flow, flows.size[flow] / k[flow], src, dst, plane, spine,
                                   int(k.max()) if k.size else 1)
