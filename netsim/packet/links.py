"""The packet simulator's clock, packets and links: ``tc tbf`` token buckets with drop-tail queues.

A :class:`TbfLink` passes a packet when its bucket holds the packet's bytes (tokens refill at the
rate up to ``burst`` bytes), queues it otherwise, and drops it when the queued bytes would exceed
``limit`` (tbf's ``latency`` times the rate, plus the burst). Packets follow a fixed list of links
(source routing: the path a flow's 5-tuple or pinning chose); each hop adds ``prop_s``.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_EPSILON_BYTES = 1e-6  # refilled tokens fall short of a packet by rounding only


class Clock:
    """A discrete-event clock: callbacks at times, run in time order (ties in scheduling order)."""

    def __init__(self) -> None:
        self.now = 0.0
        self._heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self._seq = 0

    def at(self, when: float, fn: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self._heap, (when, self._seq, fn, args))
        self._seq += 1

    def run(self, until: Callable[[], bool], horizon_s: float) -> None:
        """Run events until ``until()`` holds; a simulation past ``horizon_s`` is an error (a stuck flow)."""
        while not until():
            if not self._heap:
                raise RuntimeError("the packet simulation ran out of events before the collective finished")
            when, _, fn, args = heapq.heappop(self._heap)
            if when > horizon_s:
                raise RuntimeError(f"the packet simulation passed {horizon_s:g} s of simulated time")
            self.now = when
            fn(*args)


@dataclass
class Packet:
    """``size`` bytes on the wire (IP bytes, as tbf counts them) along ``route``; ``arrive`` at the end."""

    size: int
    route: list[TbfLink]
    arrive: Callable[[Packet], None]
    payload: dict[str, Any] = field(default_factory=dict)
    hop: int = 0
    left_host: Callable[[Packet], None] | None = None  # called when it leaves its first link's queue

    def forward(self) -> None:
        self.hop += 1
        if self.hop < len(self.route):
            self.route[self.hop].send(self)
        else:
            self.arrive(self)


class TbfLink:
    """One egress with a token bucket (``rate`` bytes/s, ``burst`` bytes) and a ``limit``-byte queue."""

    def __init__(self, clock: Clock, name: str, rate: float, burst: float, limit: float, prop_s: float) -> None:
        self.clock, self.name, self.rate, self.burst, self.limit, self.prop_s = clock, name, rate, burst, limit, prop_s
        self.tokens, self.last = burst, 0.0
        self.queue: deque[Packet] = deque()
        self.queued = 0
        self.waiting = False
        self.drops = 0
        self.sent_bytes = 0

    def send(self, packet: Packet) -> bool:
        """Take ``packet`` (its first hop, or forwarded to this one); False if the queue had no room (a
        drop, counted; a sender with small queues learns it there, as from a local qdisc)."""
        if self.queued + packet.size > self.limit:
            self.drops += 1
            return False
        self.queue.append(packet)
        self.queued += packet.size
        if not self.waiting:
            self._pump()
        return True

    def _pump(self) -> None:
        self.waiting = False
        now = self.clock.now
        self.tokens = min(self.burst, self.tokens + self.rate * (now - self.last))
        self.last = now
        while self.queue:
            packet = self.queue[0]
            if self.tokens < packet.size - _EPSILON_BYTES:
                self.waiting = True
                self.clock.at(now + max((packet.size - self.tokens) / self.rate, 1e-9), self._pump)
                return
            self.tokens = max(self.tokens - packet.size, 0.0)
            self.queue.popleft()
            self.queued -= packet.size
            self.sent_bytes += packet.size
            if packet.left_host is not None:  # as its own event: the sender may send again at once
                self.clock.at(now, packet.left_host, packet)
                packet.left_host = None
            self.clock.at(now + self.prop_s, packet.forward)
