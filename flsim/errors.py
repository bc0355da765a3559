"""The one exception root of flsim; every bad input or failed run raises a subclass of :class:`FlsimError`."""

from __future__ import annotations


class FlsimError(Exception):
    """Root of all flsim errors."""


class ProfileError(FlsimError, ValueError):
    """A link profile (built-in name, JSON/TOML file or Mahimahi trace) is unknown or invalid."""


class RecordError(FlsimError, ValueError):
    """Recorded events are missing, duplicated or inconsistent, so phases cannot be assembled."""


class RunError(FlsimError, RuntimeError):
    """A deployment run failed: a process exited, a timeout passed, or a tool is missing."""
