"""Errors of the split-TCP transport (all :class:`netsim.errors.NetsimError`)."""

from __future__ import annotations

from netsim.errors import NetsimError


class TransportError(NetsimError, RuntimeError):
    """A send, receive or collective failed; the transport is closed and unusable afterwards."""


class PeerDisconnected(TransportError, ConnectionError):
    """A peer closed a subflow (it failed or exited) before a message was complete."""


class MessageLengthError(TransportError, ValueError):
    """Sender and receiver disagree on a message's length (or the framing is corrupt)."""


class TransportTimeout(TransportError, TimeoutError):
    """No progress on a connection or connect within the transport's timeout."""
