"""netsim: a deterministic fluid simulator of collectives on leaf-spine fabrics under path policies."""

from netsim.engine import max_min_rates, simulate
from netsim.errors import NetsimError, PolicyError, TopologyError, TrafficError
from netsim.policies import (
                             ColouredSplit,
                             Ecmp,
                             GreedyLeastLoaded,
                             PathPolicy,
                             RandomSplit,
                             Routing,
                             Spray,
                             make_policy,
)
from netsim.results import SimulationResult, StepRecord
from netsim.topology import LeafSpine, LinkFault
from netsim.traffic import FlowSet, Job, load_matrix, place

__all__ = [
    "ColouredSplit", "Ecmp", "FlowSet", "GreedyLeastLoaded", "Job", "LeafSpine", "LinkFault", "NetsimError",
    "PathPolicy", "PolicyError", "RandomSplit", "Routing", "SimulationResult", "Spray", "StepRecord",
    "TopologyError", "TrafficError", "load_matrix", "make_policy", "max_min_rates", "place", "simulate",
]
