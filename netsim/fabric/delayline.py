"""A user-space delay line on a TUN device: per-direction delay, jitter and random loss.

For kernels without ``netem``. The line runs inside a router namespace (see
:mod:`netsim.fabric.access`) whose policy routing sends every packet that arrives from either side into
the TUN device; this process reads it, holds it for ``delay + jitter`` and writes it back, after which
the kernel forwards it by the main table. Direction is told by destination: packets to
``down_subnet`` take the downlink parameters, others the uplink ones.

A direction may instead replay a Mahimahi trace (``--down-trace``/``--up-trace``): each line is a
millisecond timestamp at which the link can deliver one 1500-byte packet; the file repeats with the
period of its last timestamp; opportunities that find the queue empty are lost (as in Mahimahi).
Delayed packets then wait in that direction's queue for delivery opportunities.

Jitter is uniform in ``[-jitter, +jitter]`` and never reorders a direction (a packet leaves no earlier
than the one before it), which keeps TCP from mistaking jitter for loss, as netem's ``rate``/pfifo
combination also does. Run it as ``python -m netsim.fabric.delayline --dev DEV ...`` inside the namespace.
"""

from __future__ import annotations

import argparse
import collections
import fcntl
import heapq
import ipaddress
import os
import random
import select
import signal
import struct
import time
from dataclasses import dataclass

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000


@dataclass(frozen=True)
class Impairment:
    """One direction's delay and jitter (seconds) and loss probability (0..1)."""

    delay: float = 0.0
    jitter: float = 0.0
    loss: float = 0.0


MTU_BYTES = 1500


def read_trace(path: str) -> list[int]:
    """Delivery opportunities (ms) of a Mahimahi trace; ``ValueError`` saying where it is malformed."""
    out: list[int] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            text = line.strip()
            if not text:
                continue
            if not text.isdigit():
                raise ValueError(f"{path}:{lineno}: expected a non-negative integer millisecond, found {text!r}")
            value = int(text)
            if out and value < out[-1]:
                raise ValueError(f"{path}:{lineno}: timestamps must not decrease ({value} after {out[-1]})")
            out.append(value)
    if not out or out[-1] <= 0:
        raise ValueError(f"{path}: a trace needs at least one opportunity and a last timestamp > 0 ms")
    return out


class TraceLink:
    """One direction's trace-driven link: a FIFO served at the trace's delivery opportunities."""

    def __init__(self, trace: list[int], start: float) -> None:
        self.trace, self.period = trace, trace[-1] / 1e3
        self.start, self.index, self.cycle = start, 0, 0
        self.queue: collections.deque[bytes] = collections.deque()
        self.credit = 0

    def next_opportunity(self) -> float:
        return self.start + self.cycle * self.period + self.trace[self.index] / 1e3

    def serve(self, now: float, write: object) -> None:
        """Use every opportunity up to ``now``; ``write(pkt)`` sends a packet on."""
        while self.next_opportunity() <= now:
            if self.queue:
                self.credit += MTU_BYTES
                while self.queue and self.credit >= len(self.queue[0]):
                    pkt = self.queue.popleft()
                    self.credit -= len(pkt)
                    write(pkt)  # type: ignore[operator]
            if not self.queue:
                self.credit = 0
            self.index += 1
            if self.index == len(self.trace):
                self.index, self.cycle = 0, self.cycle + 1


def open_tun(dev: str) -> int:
    """Attach to (or create) TUN device ``dev`` in this process's namespace; returns the fd."""
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", dev.encode(), IFF_TUN | IFF_NO_PI))
    os.set_blocking(fd, False)
    return fd


def serve(fd: int, down_subnet: str, down: Impairment, up: Impairment, seed: int = 0,
          traces: tuple[list[int] | None, list[int] | None] = (None, None)) -> None:
    """Forward packets until SIGTERM/SIGINT (``traces``: optional Mahimahi opportunities, down and up)."""
    net = ipaddress.ip_network(down_subnet)
    lo, hi = int(net.network_address), int(net.broadcast_address)
    rng = random.Random(seed)
    heap: list[tuple[float, int, int, bytes]] = []
    last = [0.0, 0.0]
    seq = 0
    stop = False

    def _stop(*_: object) -> None:
        nonlocal stop
        stop = True

    def write(pkt: bytes) -> None:
        try:
            os.write(fd, pkt)
        except OSError:
            pass

    t0 = time.monotonic()
    links = [TraceLink(t, t0) if t else None for t in traces]
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    while not stop:
        wake = [heap[0][0]] if heap else []
        wake += [link.next_opportunity() for link in links if link is not None and link.queue]
        timeout = max(0.0, min(wake) - time.monotonic()) if wake else 0.5
        try:
            readable, _, _ = select.select([fd], [], [], timeout)
        except InterruptedError:
            continue
        now = time.monotonic()
        if readable:
            while True:
                try:
                    pkt = os.read(fd, 65535)
                except BlockingIOError:
                    break
                if len(pkt) < 20 or pkt[0] >> 4 != 4:
                    continue
                dst = int.from_bytes(pkt[16:20], "big")
                d = 0 if lo <= dst <= hi else 1
                imp = down if d == 0 else up
                if imp.loss and rng.random() < imp.loss:
                    continue
                due = now + imp.delay + (rng.uniform(-imp.jitter, imp.jitter) if imp.jitter else 0.0)
                due = max(due, last[d])
                last[d] = due
                heapq.heappush(heap, (due, seq, d, pkt))
                seq += 1
        now = time.monotonic()
        while heap and heap[0][0] <= now:
            _, _, d, pkt = heapq.heappop(heap)
            link = links[d]
            if link is None:
                write(pkt)
            else:
                if not link.queue:  # opportunities while the queue was empty are lost
                    link.serve(now - 1e-9, lambda _p: None)
                link.queue.append(pkt)
        for link in links:
            if link is not None and link.queue:
                link.serve(now, write)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m netsim.fabric.delayline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dev", required=True)
    p.add_argument("--down-subnet", required=True, help="destination subnet of the downlink direction")
    for d in ("down", "up"):
        p.add_argument(f"--{d}-delay-ms", type=float, default=0.0)
        p.add_argument(f"--{d}-jitter-ms", type=float, default=0.0)
        p.add_argument(f"--{d}-loss", type=float, default=0.0, help="probability 0..1")
        p.add_argument(f"--{d}-trace", default=None, help="Mahimahi trace file (replaces a fixed rate)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    fd = open_tun(a.dev)
    serve(fd, a.down_subnet, Impairment(a.down_delay_ms / 1e3, a.down_jitter_ms / 1e3, a.down_loss),
          Impairment(a.up_delay_ms / 1e3, a.up_jitter_ms / 1e3, a.up_loss), a.seed,
          (read_trace(a.down_trace) if a.down_trace else None, read_trace(a.up_trace) if a.up_trace else None))


if __name__ == "__main__":
    main()
