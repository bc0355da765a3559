"""The one exception root of netsim; every bad input raises a subclass of :class:`NetsimError`."""

from __future__ import annotations


class NetsimError(Exception):
    """Root of all netsim errors."""


class TopologyError(NetsimError, ValueError):
    """A topology description is invalid (sizes, capacities, faults)."""


class PolicyError(NetsimError, ValueError):
    """A path policy is unknown, misconfigured, or cannot route a flow."""


class TrafficError(NetsimError, ValueError):
    """A collective, placement or traffic matrix is invalid."""


class PacketParamsError(NetsimError, ValueError):
    """A packet replay's fabric or software parameters are invalid."""
