"""Path policies: how each flow of a step is split into subflows and which links each subflow uses.

Every policy implements :class:`PathPolicy`: ``route(topology, flows)`` returns a :class:`Routing`. Routing
depends only on the flows' 5-tuples and the step's pattern, so a FlowSet repeated across steps (persistent
connections) is routed the same way each time.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import gcd
from typing import Protocol

import numpy as np

from netsim.colouring import edge_colouring, max_degree
from netsim.errors import PolicyError
from netsim.topology import LeafSpine
from netsim.traffic import FlowSet

_MASK64 = (1 << 64) - 1


@dataclass(frozen=True, eq=False)
class Routing:
    """Subflows of one FlowSet: parent flow, bytes, and a sparse (subflow, link, weight) incidence.

    A subflow at rate ``r`` puts ``weight * r`` on each of its links; weights below 1 describe a fluid
    sprayed flow spread over several paths.
    """

    flow: np.ndarray
    size: np.ndarray
    entry_sub: np.ndarray
    entry_link: np.ndarray
    entry_weight: np.ndarray
    splits: int

    @property
    def n_sub(self) -> int:
        """Number of subflows."""
        return int(self.flow.size)

    def link_bytes(self, num_links: int) -> np.ndarray:
        """Bytes each link carries when every subflow completes."""
        return np.bincount(self.entry_link, weights=self.size[self.entry_sub] * self.entry_weight,
                           minlength=num_links)


class PathPolicy(Protocol):
    """Maps one step's flows onto paths of a topology."""

    name: str

    def route(self, topology: LeafSpine, flows: FlowSet) -> Routing:
        """Split ``flows`` into subflows and give each its links."""
        ...


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on uint64 arrays (wrapping arithmetic)."""
    x = np.array(x, dtype=np.uint64, copy=True)
    with np.errstate(over="ignore"):
        x ^= x >> np.uint64(30)
        x *= np.uint64(0xBF58476D1CE4E5B9)
        x ^= x >> np.uint64(27)
        x *= np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x


def five_tuple_hash(seed: np.ndarray | int, src: np.ndarray, dst: np.ndarray, port: np.ndarray) -> np.ndarray:
    """Hash of (src, dst, UDP src port, RoCE dst port 4791, UDP) under a per-switch seed."""
    h = _mix(np.asarray(seed, dtype=np.uint64) ^ np.uint64(0x9E3779B97F4A7C15))
    for part in (src, dst, port, np.uint64(4791), np.uint64(17)):
        h = _mix(h ^ np.asarray(part).astype(np.uint64))
    return np.broadcast_to(h, np.shape(src))


def _pick(mask: np.ndarray, h: np.ndarray) -> np.ndarray:
    """Index of the ``h mod count``-th True entry in every row of ``mask``."""
    counts = mask.sum(axis=1).astype(np.uint64)
    idx = (h % counts).astype(np.int64)
    return np.argmax(np.cumsum(mask, axis=1) > idx[:, None], axis=1)


def _check_routable(src: np.ndarray, dst: np.ndarray, src_leaf: np.ndarray, dst_leaf: np.ndarray,
                    mask: np.ndarray) -> None:
    """Raise if some flow has no alive equal-cost path (every spine between its leaves failed)."""
    dead = ~mask.any(axis=(1, 2))
    if dead.any():
        i = int(np.flatnonzero(dead)[0])
        raise PolicyError(f"no alive path from leaf {src_leaf[i]} to leaf {dst_leaf[i]} (host {src[i]} -> "
                          f"{dst[i]}); every spine between them has failed")


def single_path_routing(topology: LeafSpine, flow: np.ndarray, size: np.ndarray, src: np.ndarray,
                        dst: np.ndarray, plane: np.ndarray, spine: np.ndarray, splits: int) -> Routing:
    """Routing where subflow ``i`` of parent ``flow[i]`` takes one path: ``plane[i]``, ``spine[i]``."""
    n = flow.size
    src_leaf, dst_leaf = topology.leaf_of(src), topology.leaf_of(dst)
    cross = np.flatnonzero(src_leaf != dst_leaf)
    sub = np.concatenate([np.arange(n), np.arange(n), cross, cross])
    link = np.concatenate([
        topology.host_up(plane, src), topology.host_down(plane, dst),
        topology.leaf_up(plane[cross], src_leaf[cross], spine[cross]),
        topology.spine_down(plane[cross], spine[cross], dst_leaf[cross]),
    ])
    return Routing(flow, size, sub, link.astype(np.int64), np.ones(sub.size), splits)


@dataclass(frozen=True)
class Ecmp:
    """ECMP: hash the 5-tuple at the host (plane) and at the source leaf (spine).

    With ``per_switch_seed=False`` every switch hashes with the same seed, so the plane and spine choices
    correlate and some spines stay idle (hash polarization) whenever planes > 1.
    """

    seed: int = 0
    per_switch_seed: bool = True
    name: str = "ecmp"

    def choose(self, topology: LeafSpine, src: np.ndarray, dst: np.ndarray,
               port: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Plane and spine of each (src, dst, port) connection."""
        src_leaf, dst_leaf = topology.leaf_of(src), topology.leaf_of(dst)
        mask = topology.path_mask(src_leaf, dst_leaf)
        _check_routable(src, dst, src_leaf, dst_leaf, mask)
        seed = np.uint64(self.seed & _MASK64)
        host_seed = _mix(seed ^ _mix(src + 1)) if self.per_switch_seed else seed
        plane = _pick(mask.any(axis=2), five_tuple_hash(host_seed, src, dst, port))
        leaf_seed = (_mix(seed ^ _mix((src_leaf + 1) * 1000003 + plane)) if self.per_switch_seed
                     else seed)
        spine = _pick(mask[np.arange(src.size), plane], five_tuple_hash(leaf_seed, src, dst, port))
        return plane, spine

    def route(self, topology: LeafSpine, flows: FlowSet) -> Routing:
        """One subflow per flow on its hashed path."""
        plane, spine = self.choose(topology, flows.src, flows.dst, flows.port)
        return single_path_routing(topology, np.arange(len(flows)), flows.size, flows.src, flows.dst,
                                   plane, spine, 1)


@dataclass(frozen=True)
class RandomSplit:
    """k-way splitting over ECMP: each flow becomes k subflows with their own source ports (multi-QP)."""

    k: int = 4
    seed: int = 0
    name: str = "random-split"

    def __post_init__(self) -> None:
        if self.k < 1:
            raise PolicyError(f"random-split needs k >= 1 subflows, found {self.k}")

    def route(self, topology: LeafSpine, flows: FlowSet) -> Routing:
        """k equal subflows per flow, each hashed independently."""
        flow = np.repeat(np.arange(len(flows)), self.k)
        j = np.tile(np.arange(self.k), len(flows))
        src, dst = flows.src[flow], flows.dst[flow]
        plane, spine = Ecmp(self.seed).choose(topology, src, dst, flows.port[flow] * 64 + j)
        return single_path_routing(topology, flow, flows.size[flow] / self.k, src, dst, plane, spine, self.k)


@dataclass(frozen=True)
class Spray:
    """Ideal packet spraying: every flow is a fluid split evenly over all its equal-cost paths."""

    name: str = "spray"

    def route(self, topology: LeafSpine, flows: FlowSet) -> Routing:
        """One subflow per flow whose weight 1/m lies on each of its m paths."""
        src_leaf, dst_leaf = topology.leaf_of(flows.src), topology.leaf_of(flows.dst)
        mask = topology.path_mask(src_leaf, dst_leaf)
        _check_routable(flows.src, flows.dst, src_leaf, dst_leaf, mask)
        m = mask.sum(axis=(1, 2)).astype(np.float64)
        per_plane = mask.sum(axis=2)
        hf, hp = np.nonzero(per_plane)
        hw = per_plane[hf, hp] / m[hf]
        cross = src_leaf != dst_leaf
        sf, sp, ss = np.nonzero(mask & cross[:, None, None])
        sw = 1.0 / m[sf]
        sub = np.concatenate([hf, hf, sf, sf])
        link = np.concatenate([
            topology.host_up(hp, flows.src[hf]), topology.host_down(hp, flows.dst[hf]),
            topology.leaf_up(sp, src_leaf[sf], ss), topology.spine_down(sp, ss, dst_leaf[sf]),
        ])
        n = len(flows)
        return Routing(np.arange(n), flows.size.copy(), sub, link.astype(np.int64),
                       np.concatenate([hw, hw, sw, sw]), int(m.max()) if n else 1)


def healthy_paths(topology: LeafSpine) -> tuple[np.ndarray, np.ndarray]:
    """(plane, spine) pairs whose cables to every leaf are alive, in plane-major order."""
    plane, spine = np.nonzero(topology.alive.all(axis=1))
    return plane, spine


def minimal_splits(degree: int, paths: int) -> int:
    """Smallest k with which a k-split colouring matches spraying: ``paths / gcd(degree, paths)``."""
    return 1 if degree == 0 else paths // gcd(degree, paths)


@dataclass(frozen=True)
class ColouredSplit:
    """Single-path transport with k-way application-level splitting and a deterministic assignment.

    Cross-leaf flows form a bipartite multigraph (source leaf -> destination leaf) of max degree D, edge
    coloured with D colours; subflow j of an edge coloured c takes path ``(c + j*D) mod P`` of the P healthy
    paths. With ``k = P / gcd(D, P)`` (the default) every leaf-spine link carries exactly ``kD/P``
    subflows of size/k, i.e. ``D/P`` flows' worth: the same maximum congestion as ideal spraying.
    """

    k: int | None = None
    name: str = "split"

    def __post_init__(self) -> None:
        if self.k is not None and self.k < 1:
            raise PolicyError(f"split needs k >= 1 subflows, found {self.k}")

    def route(self, topology: LeafSpine, flows: FlowSet) -> Routing:
        """Colour the leaf multigraph, split every flow k ways, map colours onto healthy paths."""
        path_plane, path_spine = healthy_paths(topology)
        if path_plane.size == 0:
            raise PolicyError("split needs at least one spine whose links to every leaf are alive")
        src_leaf, dst_leaf = topology.leaf_of(flows.src), topology.leaf_of(flows.dst)
        cross = src_leaf != dst_leaf
        degree = max_degree(src_leaf[cross], dst_leaf[cross])
        k = self.k if self.k is not None else minimal_splits(degree, path_plane.size)
        colour = np.zeros(len(flows), dtype=np.int64)
        colour[cross] = edge_colouring(src_leaf[cross], dst_leaf[cross])
        flow = np.repeat(np.arange(len(flows)), k)
        j = np.tile(np.arange(k), len(flows))
        path = (colour[flow] + j * max(degree, 1)) % path_plane.size
        plane = np.where(cross[flow], path_plane[path], j % topology.planes)
        return single_path_routing(topology, flow, flows.size[flow] / k, flows.src[flow], flows.dst[flow],
                                   plane, path_spine[path], k)


@dataclass(frozen=True)
class GreedyLeastLoaded:
    """Each subflow, largest first, takes the path whose busier leaf-spine link has the fewest bytes/s."""

    k: int = 1
    name: str = "greedy"

    def __post_init__(self) -> None:
        if self.k < 1:
            raise PolicyError(f"greedy needs k >= 1 subflows, found {self.k}")

    def route(self, topology: LeafSpine, flows: FlowSet) -> Routing:
        """Assign paths one subflow at a time against running per-link byte counts."""
        flow = np.repeat(np.arange(len(flows)), self.k)
        j = np.tile(np.arange(self.k), len(flows))
        src, dst, size = flows.src[flow], flows.dst[flow], flows.size[flow] / self.k
        src_leaf, dst_leaf = topology.leaf_of(src), topology.leaf_of(dst)
        mask = topology.path_mask(src_leaf, dst_leaf)
        _check_routable(src, dst, src_leaf, dst_leaf, mask)
        grid = np.meshgrid(np.arange(topology.planes), np.arange(topology.leaves),
                           np.arange(topology.spines), indexing="ij")
        up_cap = topology.capacity[topology.leaf_up(*grid)]  # [plane, leaf, spine]
        down_cap = topology.capacity[topology.spine_down(grid[0], grid[2], grid[1])]
        up, down = np.zeros(up_cap.shape), np.zeros(up_cap.shape)  # bytes placed so far
        plane = j % topology.planes
        spine = np.zeros(flow.size, dtype=np.int64)
        for i in np.argsort(-size, kind="stable"):
            a, b = src_leaf[i], dst_leaf[i]
            if a == b:
                continue
            with np.errstate(divide="ignore"):
                cost = np.maximum((up[:, a] + size[i]) / up_cap[:, a], (down[:, b] + size[i]) / down_cap[:, b])
            cost = np.where(mask[i], cost, np.inf)
            p, s = np.unravel_index(int(np.argmin(cost)), cost.shape)
            plane[i], spine[i] = p, s
            up[p, a, s] += size[i]
            down[p, b, s] += size[i]
        return single_path_routing(topology, flow, size, src, dst, plane, spine, self.k)


POLICIES = ("ecmp", "spray", "split", "random-split", "greedy")


def make_policy(name: str, splits: int | None = None, seed: int = 0) -> PathPolicy:
    """Build a policy by CLI name; ``splits`` is k for split policies (split: None = minimal)."""
    if name == "ecmp":
        return Ecmp(seed)
    if name == "spray":
        return Spray()
    if name == "split":
        return ColouredSplit(splits)
    if name == "random-split":
        return RandomSplit(4 if splits is None else splits, seed)
    if name == "greedy":
        return GreedyLeastLoaded(1 if splits is None else splits)
    raise PolicyError(f"unknown policy {name!r}; expected one of {', '.join(POLICIES)}")
