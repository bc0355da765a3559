"""A TCP connection as the packet simulator runs it: one direction's data, the other direction's ACKs.

Enough of Linux TCP for collectives on a shaped fabric: MSS 1448 (1514 bytes a full segment as a veth's
tbf counts it: 1500 IP bytes and the Ethernet header), initial window 10, slow start with CUBIC's
HyStart (slow start ends when a round's ACK train lasts longer than half of (min RTT + 1 ms), or when a
round's least RTT exceeds the min RTT by clamp(min RTT / 8, 4 ms, 16 ms)), congestion avoidance (CUBIC's
multiplicative decrease 0.7 and, at these small windows and RTTs, its TCP-friendly growth of
3 (1 - 0.7) / (1 + 0.7) = 0.53 segments an RTT), a window that grows only while it limits the sender
(tcp_cwnd_validate: not while TCP small queues or the application hold it back), an ACK per segment
carrying SACK blocks (split-TCP re-arms TCP_QUICKACK), and Linux's loss recovery: a segment is lost
when 3 segments above it were SACKed or, as RACK does, when a segment sent after it was delivered more
than a reorder window later (a quarter of the min RTT; none in recovery or once 3 segments are SACKed);
lost segments are retransmitted while the bytes in flight stay under the window. RACK's timer for
segments not yet overdue fires 2 ms late. A tail loss probe (only outside recovery, one at a time) fires 2 srtt + 2 ms after the last send or ACK
(2 srtt + 200 ms when one segment is out, to allow for a delayed ACK; never after the RTO) and sends new
data or resends the last segment. The retransmission timer runs from the last cumulative ACK (or the first send
after an idle period), its timeout is srtt + max(200 ms, 4 rttvar) and backs off; it marks everything
outstanding lost and restarts from a window of 1. A connection idle for longer than its RTO restarts from
the initial window (``tcp_slow_start_after_idle``).

The sender's own egress queue (the host's tbf) drops what it has no room for like any other queue,
unless ``small_queue_units`` is given; then it behaves as Linux's qdisc does for a local socket: a
refused segment stays unsent (the send fails; nothing is lost in the network) and the connection
enters CWR (window x 0.7, once per window of data); it is tried again on the next ACK or, with nothing
in flight, when the zero-window probe timer fires (max(RTO, 200 ms) later; no retransmission timeout
is counted). And TCP small queues hold the rest in the socket: a connection with more than one segment
unacknowledged sends only while its bytes in that queue are under ``small_queue_units`` GSO units
(a unit: 1 ms of its pacing rate, cwnd / srtt x2 in slow start below half of ssthresh and x1.2 after,
clamped to 2 segments - 64 KiB; the kernel's limit is two skbs' truesize), not counted in flight.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

from netsim.packet.links import Clock, Packet, TbfLink

MSS = 1448
HEADER = 66  # IPv4 20 + TCP 20 + timestamps 12 + Ethernet 14: what a veth's tbf counts per segment
TSQ_SHIFT_S = 2.0 ** -10  # sk_pacing_shift 10: about 1 ms of the pacing rate
TSQ_MAX_BYTES = 1 << 20  # tcp_limit_output_bytes
GSO_MAX_BYTES = 1 << 16
INITIAL_WINDOW = 10
MIN_RTO_S = 0.2
DUP_THRESHOLD = 3
CUBIC_BETA = 0.7
CUBIC_FRIENDLY_GROWTH = 3 * (1 - CUBIC_BETA) / (1 + CUBIC_BETA)  # segments an RTT in CUBIC's TCP-friendly region
PROBE_SLACK_S = 0.002  # TCP_TIMEOUT_MIN_US added to a tail loss probe's 2 srtt
REORDER_TIMER_SLACK_S = 0.002  # and to RACK's reorder timer
HYSTART_LOW_WINDOW = 16
HYSTART_ACK_DELTA_S = 0.002  # ACKs closer than this form a train
HYSTART_ACK_DELAY_S = 0.001  # the receiver's ACK delay allowance (Linux caps its estimate at 1 ms)
HYSTART_MIN_SAMPLES = 8
HYSTART_DELAY_MIN_S, HYSTART_DELAY_MAX_S = 0.004, 0.016


class _State(Enum):
    """Linux's congestion states that matter here (Open also stands for Disorder and CWR)."""

    OPEN = "open"
    RECOVERY = "recovery"
    LOSS = "loss"  # after a retransmission timeout, until everything sent before it is acknowledged


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

    def __init__(self, clock: Clock, route: list[TbfLink], reverse: list[TbfLink], min_rto_s: float = MIN_RTO_S,
                 small_queue_units: float | None = None) -> None:
        self.clock, self.route, self.reverse, self.min_rto_s = clock, route, reverse, min_rto_s
        self.small_queue_units = small_queue_units
        self.snd_una = self.snd_nxt = self.app_end = 0
        self.segments: dict[int, _Segment] = {}  # unacknowledged, by first byte (insertion order = stream order)
        self.cwnd, self.ssthresh = float(INITIAL_WINDOW), float("inf")
        self.state, self.recover = _State.OPEN, 0
        self.srtt: float | None = None
        self.rttvar, self.min_rtt = 0.0, math.inf
        self.rto = 1.0  # Linux's initial RTO, until a sample
        self.backoff = 1
        self.rto_deadline = 0.0
        self.timer_generation = 0  # the pending tail loss probe or retransmission timer
        self.tlp_high_seq: int | None = None  # a probe is out until this is acknowledged
        self.last_active = 0.0
        self.rack_sent_at, self.rack_seq, self.rack_rtt = -1.0, -1, 0.0  # the latest-sent delivered segment
        self.reorder_generation = 0
        self.hystart_found = False
        self.round_start = self.round_last_ack = 0.0
        self.round_end_seq, self.round_rtt, self.round_samples = -1, math.inf, 0
        self.watchers: list[tuple[int, Callable[[], None]]] = []  # (end byte, called once acknowledged)
        self.rcv_nxt = 0
        self.out_of_order: dict[int, int] = {}  # received above rcv_nxt: first byte -> end
        self.delivered: list[tuple[int, Callable[[], None]]] = []  # (end byte, called once received)
        self.cwr_until = 0  # no further CWR reduction until this is acknowledged
        self.queued_locally = 0  # bytes of this connection in the sender's egress queue
        self.tsq_throttled = False
        self.probe0_generation = 0
        # tcp_cwnd_validate: the window grows only while it limits the sender (not TSQ, not the app)
        self.is_cwnd_limited = False
        self.max_packets_out = 0
        self.cwnd_usage_seq = 0
        self.timeouts = self.retransmits = self.probes = self.refusals = 0

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
        """Retransmit lost segments, then send new data, while the bytes in flight fit the window and
        the sender's egress takes them."""
        window = max(int(self.cwnd), 1) * MSS
        flight = self._in_flight()
        was_idle = not self.segments
        head = next(iter(self.segments.values()), None)
        restart_rto = sent_new = refused = False
        for seg in self.segments.values():
            if flight >= window:
                break
            if seg.lost and not seg.retransmitted and not seg.sacked:
                if self._small_queue_full():
                    break
                if not self._send_segment(seg):
                    refused = True
                    break
                seg.retransmitted = True
                self.retransmits += 1
                flight += seg.length
                restart_rto |= seg is head  # Linux restarts the timer when it resends the head
        while not refused and self.snd_nxt < self.app_end and flight < window and not self._small_queue_full():
            seg = self._send_new()
            if seg is None:
                refused = True
                break
            flight += seg.length
            sent_new = True
        self._validate_cwnd(flight >= window)
        if (sent_new and was_idle) or restart_rto:
            self._set_xmit_timer(restart_rto=True)
        elif sent_new and self._probe_allowed():
            self._set_xmit_timer(restart_rto=False)
        if refused:
            self._refused()

    def _validate_cwnd(self, limited: bool) -> None:
        """Latch, for a window of data, whether the window limited what was sent (tcp_cwnd_validate)."""
        packets_out = len(self.segments)
        if (self.snd_una >= self.cwnd_usage_seq or limited
                or (not self.is_cwnd_limited and packets_out > self.max_packets_out)):
            self.is_cwnd_limited, self.max_packets_out, self.cwnd_usage_seq = limited, packets_out, self.snd_nxt

    def _cwnd_limited(self) -> bool:
        """Whether an ACK may grow the window (tcp_is_cwnd_limited): it limited the sender in the last
        window, or in slow start it is under twice the most segments out then."""
        return self.is_cwnd_limited or (self.cwnd < self.ssthresh and self.cwnd < 2 * self.max_packets_out)

    def _small_queue_full(self) -> bool:
        """TCP small queues: hold back while enough of this connection waits in the egress queue."""
        if self.small_queue_units is None or len(self.segments) <= 1 or self.srtt is None:
            return False
        pacing = (2.0 if self.cwnd < self.ssthresh / 2 else 1.2) * self.cwnd * MSS / self.srtt
        unit = min(max(pacing * TSQ_SHIFT_S, 2 * MSS), GSO_MAX_BYTES)
        self.tsq_throttled = self.queued_locally > min(self.small_queue_units * unit, TSQ_MAX_BYTES)
        return self.tsq_throttled

    def _left_host(self, packet: Packet) -> None:
        self.queued_locally -= packet.size
        if self.tsq_throttled:
            self.tsq_throttled = False
            self._transmit()

    def _refused(self) -> None:
        """The egress queue refused a segment: CWR, and with nothing in flight the probe timer."""
        self.refusals += 1
        if self.state is _State.OPEN and self.snd_una >= self.cwr_until:
            self.ssthresh = max(self.cwnd * CUBIC_BETA, 2.0)
            self.cwnd = self.ssthresh
            self.cwr_until = self.snd_nxt
        if self._in_flight() == 0:  # no ACK will come to try again
            self.probe0_generation += 1
            self.clock.at(self.clock.now + max(self.rto, MIN_RTO_S), self._on_probe0, self.probe0_generation)

    def _on_probe0(self, generation: int) -> None:
        if generation == self.probe0_generation:
            self._transmit()

    def _send_new(self) -> _Segment | None:
        """Send the next new segment; None (nothing sent) if the egress refused it."""
        seg = _Segment(self.snd_nxt, min(MSS, self.app_end - self.snd_nxt), self.clock.now)
        if not self._send_segment(seg):
            return None
        self.segments[seg.seq] = seg
        self.snd_nxt += seg.length
        return seg

    def _send_segment(self, seg: _Segment) -> bool:
        """Hand ``seg`` to the sender's egress; False if its queue refused it (only with small queues:
        otherwise a full egress drops it like any queue, and the segment counts as sent)."""
        payload = {"seq": seg.seq, "len": seg.length, "ts": self.clock.now}
        if self.small_queue_units is None:
            self.last_active = seg.sent_at = self.clock.now
            self.route[0].send(Packet(seg.length + HEADER, self.route, self._on_data, payload))
            return True
        packet = Packet(seg.length + HEADER, self.route, self._on_data, payload, left_host=self._left_host)
        self.queued_locally += packet.size
        if not self.route[0].send(packet):
            self.queued_locally -= packet.size
            return False
        self.last_active = seg.sent_at = self.clock.now
        return True

    def _probe_allowed(self) -> bool:
        return (self.state is _State.OPEN and self.srtt is not None and self.tlp_high_seq is None
                and bool(self.segments))

    def _set_xmit_timer(self, restart_rto: bool) -> None:
        """Arm the tail loss probe where allowed, else the retransmission timer (one of them is pending)."""
        self.timer_generation += 1
        if not self.segments:
            return
        if restart_rto:
            self.rto_deadline = self.clock.now + self.rto * self.backoff
        if self._probe_allowed():
            assert self.srtt is not None
            slack = MIN_RTO_S if len(self.segments) == 1 else PROBE_SLACK_S
            when = min(self.clock.now + 2 * self.srtt + slack, self.rto_deadline)
            self.clock.at(when, self._on_probe, self.timer_generation)
        else:
            self.clock.at(self.rto_deadline, self._on_timeout, self.timer_generation)

    def _on_ack(self, packet: Packet) -> None:
        ack, echo, sacks = packet.payload["ack"], packet.payload["ts"], packet.payload["sack"]
        progressed = ack > self.snd_una
        if progressed:
            rtt = self.clock.now - echo
            self._rtt_sample(rtt)
            self.backoff = 1
            newly = 0
            for seq in [s for s in self.segments if s < ack]:
                seg = self.segments.pop(seq)
                newly += 0 if seg.sacked else seg.length
                self._delivered(seg)
            self.snd_una = ack
            self.snd_nxt = max(self.snd_nxt, ack)
            if self.tlp_high_seq is not None and ack >= self.tlp_high_seq:
                self.tlp_high_seq = None
            if self.state is _State.RECOVERY and ack >= self.recover:
                self.state, self.cwnd = _State.OPEN, self.ssthresh
            elif self.state is not _State.RECOVERY:
                if self.state is _State.LOSS and ack >= self.recover:
                    self.state = _State.OPEN
                if self._cwnd_limited():  # a window that did not limit the sender lately does not grow
                    if self.cwnd < self.ssthresh:
                        self.cwnd = min(self.cwnd + newly / MSS, max(self.ssthresh, self.cwnd))
                        if not self.hystart_found:
                            self._hystart(rtt)
                    else:
                        self.cwnd += CUBIC_FRIENDLY_GROWTH * newly / MSS / self.cwnd
        for start, end in sacks:
            for seq, seg in self.segments.items():
                if not seg.sacked and start <= seq and seq + seg.length <= end:
                    seg.sacked = True
                    self._delivered(seg)
        if self._detect_losses():
            self._enter_recovery()
        if progressed:
            self._set_xmit_timer(restart_rto=True)
        elif not self.segments:
            self.timer_generation += 1  # nothing outstanding: no timers
        self._notify(self.watchers, self.snd_una)
        self._transmit()

    def _hystart(self, rtt: float) -> None:
        """CUBIC's hybrid slow start: leave slow start on a long ACK train or a rising round RTT."""
        now = self.clock.now
        if self.snd_una > self.round_end_seq:  # a new round of one window
            self.round_start = self.round_last_ack = now
            self.round_end_seq, self.round_rtt, self.round_samples = self.snd_nxt, math.inf, 0
        if self.cwnd < HYSTART_LOW_WINDOW:
            return
        found = False
        if now - self.round_last_ack <= HYSTART_ACK_DELTA_S:
            self.round_last_ack = now
            found = now - self.round_start > (self.min_rtt + HYSTART_ACK_DELAY_S) / 2
        self.round_rtt = min(self.round_rtt, rtt)
        if self.round_samples < HYSTART_MIN_SAMPLES:
            self.round_samples += 1
        else:
            threshold = min(max(self.min_rtt / 8, HYSTART_DELAY_MIN_S), HYSTART_DELAY_MAX_S)
            found |= self.round_rtt > self.min_rtt + threshold
        if found:
            self.hystart_found, self.ssthresh = True, self.cwnd

    def _delivered(self, seg: _Segment) -> None:
        """RACK: remember the most recently sent segment known delivered, and its RTT."""
        if (seg.sent_at, seg.seq) > (self.rack_sent_at, self.rack_seq):
            self.rack_sent_at, self.rack_seq, self.rack_rtt = seg.sent_at, seg.seq, self.clock.now - seg.sent_at

    def _reorder_window(self, sacked: int) -> float:
        """RACK's allowance for reordering: none in recovery or past the duplicate threshold (Linux
        before it has seen reordering), else a quarter of the min RTT."""
        if self.state is not _State.OPEN or sacked >= DUP_THRESHOLD or not math.isfinite(self.min_rtt):
            return 0.0
        return self.min_rtt / 4

    def _detect_losses(self) -> bool:
        """Mark lost: 3 SACKed segments above it (RFC 6675), or (RACK) a segment sent after it was
        delivered and it has been out for an RTT and the reorder window since; else arm the reorder timer."""
        reorder = self._reorder_window(sum(seg.sacked for seg in self.segments.values()))
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
            self.clock.at(earliest + REORDER_TIMER_SLACK_S, self._on_reorder_timeout, self.reorder_generation)
        return found

    def _on_reorder_timeout(self, generation: int) -> None:
        if generation != self.reorder_generation or not self.segments:
            return
        if self._detect_losses():
            self._enter_recovery()
            self._transmit()

    def _enter_recovery(self) -> None:
        if self.state is _State.OPEN:
            self.state, self.recover, self.tlp_high_seq = _State.RECOVERY, self.snd_nxt, None
            self.ssthresh = max(self.cwnd * CUBIC_BETA, 2.0)
            self.cwnd = self.ssthresh
            self._set_xmit_timer(restart_rto=False)  # no probes in recovery: the RTO is pending

    def _rtt_sample(self, rtt: float) -> None:
        self.min_rtt = min(self.min_rtt, rtt)
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self.rto = self.srtt + max(self.min_rto_s, 4 * self.rttvar)

    def _on_probe(self, generation: int) -> None:
        """Tail loss probe: no ACK for a while; send new data or resend the last segment, so that its
        ACK reveals the holes; then the retransmission timer is pending."""
        if generation != self.timer_generation or not self._probe_allowed():
            return
        if self.snd_nxt < self.app_end:
            sent = self._send_new() is not None  # a probe may exceed the window by one segment
        else:
            unsacked = [seg for seg in self.segments.values() if not seg.sacked]
            sent = not unsacked or self._send_segment(unsacked[-1])
            self.retransmits += bool(unsacked) and sent
        if sent:
            self.probes += 1
        else:
            self._refused()
        self.tlp_high_seq = self.snd_nxt
        head = next(iter(self.segments.values()))
        self.rto_deadline = max(self.rto_deadline, head.sent_at + self.rto * self.backoff)  # from the head's send
        self._set_xmit_timer(restart_rto=False)

    def _on_timeout(self, generation: int) -> None:
        if generation != self.timer_generation or not self.segments:
            return
        self.timeouts += 1
        if self.state is _State.OPEN:
            self.ssthresh = max(self.cwnd * CUBIC_BETA, 2.0)
        self.state, self.recover, self.tlp_high_seq = _State.LOSS, self.snd_nxt, None
        self.cwnd = 1.0
        self.hystart_found = False
        self.backoff = min(self.backoff * 2, 64)
        for seg in self.segments.values():
            if not seg.sacked:
                seg.lost, seg.retransmitted = True, False
        self._transmit()  # resends the head (nothing else is in flight), which restarts the backed-off timer

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
