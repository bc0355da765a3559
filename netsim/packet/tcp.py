"""A TCP connection as the packet simulator runs it: one direction's data, the other direction's ACKs.

Enough of Linux TCP for collectives on a shaped fabric: MSS 1448 (1500 IP bytes a full segment),
initial window 10, slow start and congestion avoidance (CUBIC's multiplicative decrease 0.7; Reno
growth, which CUBIC matches at these small windows), an ACK per segment carrying SACK blocks
(split-TCP re-arms TCP_QUICKACK), and Linux's loss recovery: a segment is lost when 3 segments above it
were SACKed or, as RACK does, when a segment sent after it was delivered more than a quarter RTT later;
lost segments are retransmitted while the bytes in flight stay under the window; a tail loss probe
after max(2 srtt, 10 ms) without ACKs resends the last segment; the retransmission timeout of
max(200 ms, srtt + 4 rttvar) backs off and marks everything outstanding lost with a window of 1. A
connection idle for longer than its RTO restarts from the initial window (``tcp_slow_start_after_idle``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from netsim.packet.links import Clock, Packet, TbfLink

MSS = 1448
HEADER = 52  # IPv4 20 + TCP 20 + timestamps 12
INITIAL_WINDOW = 10
MIN_RTO_S = 0.2
DUP_THRESHOLD = 3
CUBIC_BETA = 0.7
MIN_PROBE_S = 0.010


@dataclass
class _Segment:
    seq: int
    length: int
    sent_at: float
    sacked: bool = False
    lost: bool = False
    retransmitted: bool = False


class TcpConnection:
    """Bytes from one host to another over ``route``; ACKs return over ``reverse``."""

    def __init__(self, clock: Clock, route: list[TbfLink], reverse: list[TbfLink], min_rto_s: float = MIN_RTO_S) -> None:
        self.clock, self.route, self.reverse, self.min_rto_s = clock, route, reverse, min_rto_s
        self.snd_una = self.snd_nxt = self.app_end = 0
        self.segments: dict[int, _Segment] = {}  # unacknowledged, by first byte (insertion order = stream order)
        self.cwnd, self.ssthresh = float(INITIAL_WINDOW), float("inf")
        self.in_recovery, self.recover = False, 0
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.rto = 1.0  # Linux's initial RTO, until a sample
        self.backoff = 1
        self.timer_generation = 0
        self.last_active = 0.0
        self.rack_sent_at, self.rack_seq, self.rack_rtt = -1.0, -1, 0.0  # the latest-sent delivered segment
        self.reorder_generation = 0
        self.watchers: list[tuple[int, Callable[[], None]]] = []  # (end byte, called once acknowledged)
        self.rcv_nxt = 0
        self.out_of_order: dict[int, int] = {}  # received above rcv_nxt: first byte -> end
        self.delivered: list[tuple[int, Callable[[], None]]] = []  # (end byte, called once received)
        self.timeouts = self.retransmits = self.probes = 0

    # -- the application ---------------------------------------------------------------------------

    def send(self, nbytes: int, acked: Callable[[], None], received: Callable[[], None]) -> None:
        """Queue ``nbytes``; ``received()`` runs when the receiver has them all, ``acked()`` when the
        sender learns it."""
        if not self.segments and self.clock.now - self.last_active > self.rto:
            self.cwnd = min(self.cwnd, float(INITIAL_WINDOW))
        self.app_end += nbytes
        self.watchers.append((self.app_end, acked))
        self.delivered.append((self.app_end, received))
        self._transmit()

    # -- sender ------------------------------------------------------------------------------------

    def _in_flight(self) -> int:
        return sum(s.length for s in self.segments.values() if not s.sacked and (not s.lost or s.retransmitted))

    def _transmit(self) -> None:
        """Retransmit lost segments, then send new data, while the bytes in flight fit the window."""
        window = max(int(self.cwnd), 1) * MSS
        flight = self._in_flight()
        for seg in self.segments.values():
            if flight >= window:
                break
            if seg.lost and not seg.retransmitted and not seg.sacked:
                seg.retransmitted, seg.sent_at = True, self.clock.now
                self.retransmits += 1
                self._send_segment(seg)
                flight += seg.length
        while self.snd_nxt < self.app_end and flight < window:
            seg = _Segment(self.snd_nxt, min(MSS, self.app_end - self.snd_nxt), self.clock.now)
            self.segments[seg.seq] = seg
            self.snd_nxt += seg.length
            self._send_segment(seg)
            flight += seg.length

    def _send_segment(self, seg: _Segment) -> None:
        self.last_active = self.clock.now
        packet = Packet(seg.length + HEADER, self.route, self._on_data,
                        {"seq": seg.seq, "len": seg.length, "ts": self.clock.now})
        self.route[0].send(packet)
        self._arm_timers()

    def _arm_timers(self) -> None:
        """(Re)start the retransmission timer and the tail loss probe from now."""
        self.timer_generation += 1
        generation = self.timer_generation
        self.clock.at(self.clock.now + self.rto * self.backoff, self._on_timeout, generation)
        if self.srtt is not None:
            self.clock.at(self.clock.now + max(2 * self.srtt, MIN_PROBE_S), self._on_probe, generation)

    def _on_ack(self, packet: Packet) -> None:
        ack, echo, sacks = packet.payload["ack"], packet.payload["ts"], packet.payload["sack"]
        progressed = ack > self.snd_una
        if progressed:
            self._rtt_sample(self.clock.now - echo)
            self.backoff = 1
            newly = 0
            for seq in [s for s in self.segments if s < ack]:
                seg = self.segments.pop(seq)
                newly += 0 if seg.sacked else seg.length
                self._delivered(seg)
            self.snd_una = ack
            self.snd_nxt = max(self.snd_nxt, ack)
            if self.in_recovery and ack >= self.recover:
                self.in_recovery = False
                self.cwnd = self.ssthresh
            elif not self.in_recovery:
                self.cwnd += newly / MSS if self.cwnd < self.ssthresh else newly / MSS / self.cwnd
        for start, end in sacks:
            for seq, seg in self.segments.items():
                if not seg.sacked and start <= seq and seq + seg.length <= end:
                    seg.sacked = True
                    self._delivered(seg)
        if self._detect_losses():
            self._enter_recovery()
        if self.segments and (progressed or sacks):
            self._arm_timers()
        elif not self.segments:
            self.timer_generation += 1  # nothing outstanding: no timers
        self._notify(self.watchers, self.snd_una)
        self._transmit()

    def _delivered(self, seg: _Segment) -> None:
        """RACK: remember the most recently sent segment known delivered, and its RTT."""
        if (seg.sent_at, seg.seq) > (self.rack_sent_at, self.rack_seq):
            self.rack_sent_at, self.rack_seq, self.rack_rtt = seg.sent_at, seg.seq, self.clock.now - seg.sent_at

    def _detect_losses(self) -> bool:
        """Mark lost: 3 SACKed segments above it (RFC 6675), or (RACK) a segment sent after it was
        delivered and it has been out for an RTT and a quarter since; else arm the reorder timer."""
        reorder = (self.srtt or 0.0) / 4
        sacked_above = 0
        found = False
        earliest: float | None = None
        for seg in reversed(list(self.segments.values())):
            if seg.sacked:
                sacked_above += 1
                continue
            if seg.lost and not seg.retransmitted:
                continue
            if sacked_above >= DUP_THRESHOLD and not seg.retransmitted:
                seg.lost = True
                found = True
            elif (seg.sent_at, seg.seq) < (self.rack_sent_at, self.rack_seq):
                deadline = seg.sent_at + self.rack_rtt + reorder
                if self.clock.now >= deadline:
                    seg.lost, seg.retransmitted = True, False
                    found = True
                elif earliest is None or deadline < earliest:
                    earliest = deadline
        if earliest is not None:
            self.reorder_generation += 1
            self.clock.at(earliest, self._on_reorder_timeout, self.reorder_generation)
        return found

    def _on_reorder_timeout(self, generation: int) -> None:
        if generation != self.reorder_generation or not self.segments:
            return
        if self._detect_losses():
            self._enter_recovery()
            self._transmit()

    def _enter_recovery(self) -> None:
        if not self.in_recovery:
            self.in_recovery, self.recover = True, self.snd_nxt
            self.ssthresh = max(self.cwnd * CUBIC_BETA, 2.0)
            self.cwnd = self.ssthresh

    def _rtt_sample(self, rtt: float) -> None:
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.rto = max(self.min_rto_s, self.srtt + 4 * self.rttvar)

    def _on_probe(self, generation: int) -> None:
        """Tail loss probe: no ACK for a while; resend the last segment so its ACK reveals the holes."""
        if generation != self.timer_generation or not self.segments:
            return
        unsacked = [seg for seg in self.segments.values() if not seg.sacked]
        if not unsacked:
            return
        last = unsacked[-1]
        self.probes += 1
        last.sent_at = self.clock.now
        self._send_segment(last)

    def _on_timeout(self, generation: int) -> None:
        if generation != self.timer_generation or not self.segments:
            return
        self.timeouts += 1
        self.ssthresh = max(self._in_flight() / MSS * CUBIC_BETA, 2.0)
        self.cwnd = 1.0
        self.in_recovery = False
        self.backoff = min(self.backoff * 2, 64)
        for seg in self.segments.values():
            if not seg.sacked:
                seg.lost, seg.retransmitted = True, False
        self._transmit()

    # -- receiver ----------------------------------------------------------------------------------

    def _on_data(self, packet: Packet) -> None:
        seq, length = packet.payload["seq"], packet.payload["len"]
        end = seq + length
        if seq <= self.rcv_nxt < end:
            self.rcv_nxt = end
            while self.rcv_nxt in self.out_of_order:
                self.rcv_nxt = self.out_of_order.pop(self.rcv_nxt)
            for stale in [s for s in self.out_of_order if s < self.rcv_nxt]:
                del self.out_of_order[stale]
        elif seq > self.rcv_nxt:
            self.out_of_order[seq] = max(end, self.out_of_order.get(seq, end))
        sacks = _ranges(self.out_of_order)
        ack = Packet(HEADER, self.reverse, self._on_ack, {"ack": self.rcv_nxt, "ts": packet.payload["ts"], "sack": sacks})
        self.reverse[0].send(ack)
        self._notify(self.delivered, self.rcv_nxt)

    @staticmethod
    def _notify(waiting: list[tuple[int, Callable[[], None]]], upto: int) -> None:
        while waiting and waiting[0][0] <= upto:
            waiting.pop(0)[1]()


def _ranges(blocks: dict[int, int]) -> list[tuple[int, int]]:
    """Merged (start, end) ranges of the received out-of-order blocks (what SACK reports)."""
    out: list[tuple[int, int]] = []
    for start in sorted(blocks):
        end = blocks[start]
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out
