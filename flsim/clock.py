"""NTP-style clock-offset estimation from request/reply exchanges between two hosts.

One exchange gives four timestamps: ``t1`` server sends (server clock), ``t2`` client receives and
``t3`` client replies (client clock), ``t4`` server receives (server clock). Then

    offset = ((t2 - t1) + (t3 - t4)) / 2        (client clock minus server clock)
    delay  = (t4 - t1) - (t3 - t2)              (time on the wire, both ways)

Causality bounds the true offset of every exchange: ``t3 - t4 <= offset <= t2 - t1``. Flower's
polling makes the two one-way times very unequal (the wait for a poll lands on one side), so a single
NTP midpoint can be off by seconds; intersecting the bounds of all exchanges (as Marzullo's algorithm
does for one source) is tighter, and its midpoint is the estimate returned here.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from flsim.errors import RecordError


@dataclass(frozen=True)
class OffsetEstimate:
    """Client clock minus server clock: ``offset`` is the midpoint of ``[low, high]``."""

    offset: float
    low: float
    high: float
    samples: int

    @property
    def error_bound(self) -> float:
        """Largest possible error of :attr:`offset` given the exchanges seen."""
        return (self.high - self.low) / 2

    def to_dict(self) -> dict[str, float]:
        """Plain dict for JSON output."""
        return {"offset_s": self.offset, "low_s": self.low, "high_s": self.high,
                "error_bound_s": self.error_bound, "samples": self.samples}


def offset_sample(t1: float, t2: float, t3: float, t4: float) -> tuple[float, float]:
    """NTP offset and round-trip delay of one exchange (see the module docstring)."""
    if t4 < t1 or t3 < t2:
        raise RecordError(f"an exchange needs t1 <= t4 and t2 <= t3, found t1={t1} t2={t2} t3={t3} t4={t4}")
    return ((t2 - t1) + (t3 - t4)) / 2, (t4 - t1) - (t3 - t2)


def estimate_offset(exchanges: Iterable[tuple[float, float, float, float]]) -> OffsetEstimate:
    """Offset from the intersection of every exchange's causal bounds ``[t3 - t4, t2 - t1]``.

    Raises :class:`RecordError` when there is no exchange, or when the bounds do not intersect
    (some clock jumped during the run, or the timestamps were joined wrongly).
    """
    low, high, n = float("-inf"), float("inf"), 0
    for t1, t2, t3, t4 in exchanges:
        offset_sample(t1, t2, t3, t4)  # validates the ordering on each side
        low, high, n = max(low, t3 - t4), min(high, t2 - t1), n + 1
    if n == 0:
        raise RecordError("clock-offset estimation needs at least one (t1, t2, t3, t4) exchange, found none")
    if low > high:
        raise RecordError(f"the exchanges' causal bounds do not intersect (low {low:.6f} s > high {high:.6f} s): "
                          "a clock stepped during the run, or events were joined to the wrong messages")
    return OffsetEstimate(offset=(low + high) / 2, low=low, high=high, samples=n)
