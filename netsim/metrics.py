"""Static measures of one routed step: maximum link congestion and the ideal (cut) lower bound."""

from __future__ import annotations

import numpy as np

from netsim.policies import Routing
from netsim.topology import LeafSpine
from netsim.traffic import FlowSet


def link_congestion(topology: LeafSpine, flows: FlowSet, routing: Routing) -> np.ndarray:
    """Congestion of every link, in flows' worth.

    A link's congestion is the bytes routed over it, divided by the step's largest flow, scaled by how
    much slower the link is than a host port. With equal-size flows on a uniform fabric it is the number
    of flows crossing the link (sprayed flows count fractionally), as in the packet-spraying paper.
    """
    if len(flows) == 0:
        return np.zeros(topology.num_links)
    loads = routing.link_bytes(topology.num_links)
    cap = topology.capacity
    scaled = np.divide(loads * topology.host_capacity, cap, out=np.zeros_like(loads), where=cap > 0)
    return scaled / float(flows.size.max())


def ideal_step_seconds(topology: LeafSpine, flows: FlowSet) -> float:
    """Lower bound on a step's duration under any routing: the busiest host port or leaf-spine cut.

    Hosts can use all their plane ports; a leaf's cross-leaf traffic can use all its alive uplinks.
    """
    if len(flows) == 0:
        return 0.0
    host_cap = topology.host_capacity * topology.planes
    bound = max(np.bincount(flows.src, flows.size).max(), np.bincount(flows.dst, flows.size).max()) / host_cap
    src_leaf, dst_leaf = topology.leaf_of(flows.src), topology.leaf_of(flows.dst)
    cross = src_leaf != dst_leaf
    if cross.any():
        grid = np.meshgrid(np.arange(topology.planes), np.arange(topology.leaves),
                           np.arange(topology.spines), indexing="ij")
        up_cap = topology.capacity[topology.leaf_up(*grid)].sum(axis=(0, 2))
        down_cap = topology.capacity[topology.spine_down(grid[0], grid[2], grid[1])].sum(axis=(0, 2))
        out = np.bincount(src_leaf[cross], flows.size[cross], minlength=topology.leaves)
        into = np.bincount(dst_leaf[cross], flows.size[cross], minlength=topology.leaves)
        with np.errstate(divide="ignore", invalid="ignore"):
            bound = max(bound, float(np.nanmax(out / up_cap)), float(np.nanmax(into / down_cap)))
    return float(bound)
