"""Errors of ``netsim measure`` (a :class:`netsim.errors.NetsimError`)."""

from __future__ import annotations

from netsim.errors import NetsimError


class MeasureError(NetsimError, RuntimeError):
    """A measurement could not be set up, or a rank failed or timed out."""
