"""Leaf-spine fabric: hosts, leaves, spines, planes, directed links and their capacities.

Every host has one port per plane. Within a plane, host ``h`` hangs off leaf ``h // hosts_per_leaf`` and
every leaf connects to every spine. Links are directed and numbered in one flat index space so that the
engine can work on plain arrays; :meth:`LeafSpine.link_name` turns an index back into words.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from netsim.errors import TopologyError

GBPS = 1e9 / 8  # bytes per second in one Gbit/s

HOST_UP, HOST_DOWN, LEAF_UP, SPINE_DOWN = 0, 1, 2, 3
LINK_KINDS = ("host-up", "host-down", "leaf-up", "spine-down")


@dataclass(frozen=True)
class LinkFault:
    """A failed (``factor == 0``) or degraded (``0 < factor < 1``) leaf-spine cable, both directions."""

    leaf: int
    spine: int
    plane: int = 0
    factor: float = 0.0


@dataclass(frozen=True)
class LeafSpine:
    """A two-tier leaf-spine fabric, optionally replicated into several parallel planes.

    ``link_gbps`` is the host-leaf port speed, ``spine_gbps`` the leaf-spine port speed (defaults to
    ``link_gbps``). Oversubscription is ``hosts_per_leaf * link_gbps / (spines * spine_gbps)``.
    """

    leaves: int
    hosts_per_leaf: int
    spines: int
    link_gbps: float
    spine_gbps: float | None = None
    planes: int = 1
    faults: tuple[LinkFault, ...] = ()
    _capacity: np.ndarray = field(init=False, repr=False, compare=False)
    _alive: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("leaves", "hosts_per_leaf", "spines", "planes"):
            value = getattr(self, name)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise TopologyError(f"{name} must be a positive integer, found {value!r}")
        if self.leaves * self.hosts_per_leaf < 2:
            raise TopologyError(f"a fabric needs at least 2 hosts, found {self.leaves}x{self.hosts_per_leaf}")
        if not self.link_gbps > 0:
            raise TopologyError(f"link_gbps must be > 0, found {self.link_gbps!r}")
        if self.spine_gbps is not None and not self.spine_gbps > 0:
            raise TopologyError(f"spine_gbps must be > 0, found {self.spine_gbps!r}")
        capacity = np.empty(self.num_links)
        alive = np.ones((self.planes, self.leaves, self.spines))
        for fault in self.faults:
            if not (0 <= fault.leaf < self.leaves and 0 <= fault.spine < self.spines
                    and 0 <= fault.plane < self.planes):
                raise TopologyError(
                    f"fault {fault} names a link outside the fabric "
                    f"(leaves 0..{self.leaves - 1}, spines 0..{self.spines - 1}, planes 0..{self.planes - 1})")
            if not 0.0 <= fault.factor < 1.0:
                raise TopologyError(f"fault factor must be in [0, 1), found {fault.factor!r} in {fault}")
            alive[fault.plane, fault.leaf, fault.spine] = fault.factor
        n, ls = self.hosts, self.leaves * self.spines
        for p in range(self.planes):
            base = p * self._plane_links
            capacity[base:base + 2 * n] = self.link_gbps * GBPS
            factors = alive[p].reshape(-1)
            capacity[base + 2 * n:base + 2 * n + ls] = self.uplink_gbps * GBPS * factors
            capacity[base + 2 * n + ls:base + 2 * n + 2 * ls] = self.uplink_gbps * GBPS * factors
        capacity.setflags(write=False)
        object.__setattr__(self, "_capacity", capacity)
        object.__setattr__(self, "_alive", alive > 0)

    @property
    def hosts(self) -> int:
        """Number of hosts (each has one port per plane)."""
        return self.leaves * self.hosts_per_leaf

    @property
    def uplink_gbps(self) -> float:
        """Leaf-spine port speed in Gbit/s."""
        return self.link_gbps if self.spine_gbps is None else self.spine_gbps

    @property
    def oversubscription(self) -> float:
        """Host bandwidth into a leaf divided by its healthy uplink bandwidth (1.0 = non-blocking)."""
        return self.hosts_per_leaf * self.link_gbps / (self.spines * self.uplink_gbps)

    @property
    def _plane_links(self) -> int:
        return 2 * self.hosts + 2 * self.leaves * self.spines

    @property
    def num_links(self) -> int:
        """Number of directed links in all planes."""
        return self.planes * self._plane_links

    @property
    def capacity(self) -> np.ndarray:
        """Capacity of every directed link in bytes per second (read-only; 0 for failed links)."""
        return self._capacity

    @property
    def host_capacity(self) -> float:
        """Capacity of one host port in bytes per second."""
        return self.link_gbps * GBPS

    @property
    def alive(self) -> np.ndarray:
        """Boolean ``[plane, leaf, spine]``: the leaf-spine cable is usable (not failed)."""
        return self._alive

    def leaf_of(self, host: np.ndarray | int) -> np.ndarray | int:
        """Leaf index of a host (or array of hosts)."""
        return host // self.hosts_per_leaf

    def host_up(self, plane: np.ndarray | int, host: np.ndarray | int) -> np.ndarray | int:
        """Link id of host -> leaf."""
        return plane * self._plane_links + host

    def host_down(self, plane: np.ndarray | int, host: np.ndarray | int) -> np.ndarray | int:
        """Link id of leaf -> host."""
        return plane * self._plane_links + self.hosts + host

    def leaf_up(self, plane: np.ndarray | int, leaf: np.ndarray | int,
                spine: np.ndarray | int) -> np.ndarray | int:
        """Link id of leaf -> spine."""
        return plane * self._plane_links + 2 * self.hosts + leaf * self.spines + spine

    def spine_down(self, plane: np.ndarray | int, spine: np.ndarray | int,
                   leaf: np.ndarray | int) -> np.ndarray | int:
        """Link id of spine -> leaf."""
        return (plane * self._plane_links + 2 * self.hosts + self.leaves * self.spines
                + leaf * self.spines + spine)

    def link_kind(self) -> np.ndarray:
        """Kind of every link: one of HOST_UP, HOST_DOWN, LEAF_UP, SPINE_DOWN."""
        n, ls = self.hosts, self.leaves * self.spines
        one = np.concatenate([np.full(n, HOST_UP), np.full(n, HOST_DOWN),
                              np.full(ls, LEAF_UP), np.full(ls, SPINE_DOWN)])
        return np.tile(one, self.planes)

    def link_name(self, link: int) -> str:
        """Human-readable name of a link id, e.g. ``p0 leaf3->spine1``."""
        if not 0 <= link < self.num_links:
            raise TopologyError(f"link id must be in 0..{self.num_links - 1}, found {link}")
        plane, rest = divmod(int(link), self._plane_links)
        n, ls = self.hosts, self.leaves * self.spines
        if rest < n:
            return f"p{plane} host{rest}->leaf{self.leaf_of(rest)}"
        if rest < 2 * n:
            h = rest - n
            return f"p{plane} leaf{self.leaf_of(h)}->host{h}"
        if rest < 2 * n + ls:
            leaf, spine = divmod(rest - 2 * n, self.spines)
            return f"p{plane} leaf{leaf}->spine{spine}"
        leaf, spine = divmod(rest - 2 * n - ls, self.spines)
        return f"p{plane} spine{spine}->leaf{leaf}"

    def path_mask(self, src_leaf: np.ndarray, dst_leaf: np.ndarray) -> np.ndarray:
        """Boolean ``[flow, plane, spine]``: spine ``s`` of plane ``p`` is an equal-cost path.

        For flows within one leaf, only the plane matters; their mask is True on spine 0 only.
        """
        src_leaf = np.asarray(src_leaf)
        dst_leaf = np.asarray(dst_leaf)
        mask = self._alive[:, src_leaf, :] & self._alive[:, dst_leaf, :]  # [plane, flow, spine]
        mask = np.transpose(mask, (1, 0, 2)).copy()
        same = src_leaf == dst_leaf
        if same.any():
            mask[same] = False
            mask[same, :, 0] = True
        return mask

    def describe(self) -> dict[str, object]:
        """Plain-dict summary for JSON output."""
        return {
            "leaves": self.leaves, "hosts_per_leaf": self.hosts_per_leaf, "spines": self.spines,
            "planes": self.planes, "hosts": self.hosts, "link_gbps": self.link_gbps,
            "spine_gbps": self.uplink_gbps, "oversubscription": self.oversubscription,
            "faults": [asdict(f) for f in self.faults],
        }
