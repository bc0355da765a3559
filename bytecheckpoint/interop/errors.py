"""The error of conversions to and from other checkpoint formats."""

from __future__ import annotations

from ..errors import CheckpointError


class ConversionError(CheckpointError, ValueError):
    """A source cannot be converted (unsupported content, a missing or conflicting key, a bad
    destination); the message names the file and the key."""
