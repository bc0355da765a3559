"""Errors of the real-link emulation (a :class:`netsim.errors.NetsimError`)."""

from __future__ import annotations

from netsim.errors import NetsimError


class FabricError(NetsimError, RuntimeError):
    """A namespace, link, qdisc or delay line could not be set up, or the host lacks root/iproute2."""
