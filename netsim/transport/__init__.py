"""Split-TCP: a flow-splitting single-path transport for collectives on real (or emulated) links.

* :mod:`netsim.transport.paths` - subflow path policies (minimal-splitting colouring, round-robin, ECMP);
* :mod:`netsim.transport.split_tcp` - k persistent TCP subflows per peer, framing, checks, timings;
* :mod:`netsim.transport.collectives` - ring all-reduce / all-gather / reduce-scatter, all-to-all.
"""

from netsim.transport.collectives import allgather, allreduce, alltoall, reducescatter
from netsim.transport.errors import MessageLengthError, PeerDisconnected, TransportError, TransportTimeout
from netsim.transport.paths import PathPlan, PathPolicyName, SubflowPath, plan_paths
from netsim.transport.split_tcp import SplitTcpTransport, SubflowTiming

__all__ = [
    "MessageLengthError",
    "PathPlan",
    "PathPolicyName",
    "PeerDisconnected",
    "SplitTcpTransport",
    "SubflowPath",
    "SubflowTiming",
    "TransportError",
    "TransportTimeout",
    "allgather",
    "allreduce",
    "alltoall",
    "plan_paths",
    "reducescatter",
]
