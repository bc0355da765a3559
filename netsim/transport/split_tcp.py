"""Split-TCP: every message to a peer is cut into k subflows over k persistent TCP connections.

Protocol (one directed pair ``src -> dst``, in this order):

1. ``src`` opens the pair's k connections on first use, each from the source port its
   :class:`~netsim.transport.paths.SubflowPath` asks for (which pins it to a spine on the emulated fabric),
   and sends a hello ``(magic, src rank, subflow index, k)``.
2. Per message, subflow j carries a header ``(magic, seq, total, offset, length, xxh3)`` and then bytes
   ``[offset, offset + length)`` of the message; the k pieces are contiguous near-equal cuts.
3. ``dst`` receives all pieces into the destination buffer in place, checks lengths and checksums, and
   answers on subflow 0 with a status: OK, or an error text that ``src`` raises too.

Any failure (a peer that closes, a wrong length, a timeout) closes every connection of the transport,
so the peers blocked on this rank fail too, each with its own clear error: no hangs.
"""

from __future__ import annotations

import errno
import logging
import random
import socket
import struct
import threading
import time
from dataclasses import dataclass
from typing import Any

import xxhash
from typing_extensions import Self

from netsim.transport.buffers import byte_view
from netsim.transport.errors import MessageLengthError, PeerDisconnected, TransportError, TransportTimeout
from netsim.transport.event_loop import CHUNK, All, Task, read_exact, run_tasks, write_all
from netsim.transport.paths import PathPlan, SubflowPath

logger = logging.getLogger(__name__)

MAGIC = 0x53504C54  # "SPLT"
_HELLO = struct.Struct("!IIIIi")
_HEADER = struct.Struct("!IQQQQQ")
_STATUS = struct.Struct("!BI")


@dataclass(frozen=True)
class SubflowTiming:
    """One subflow's part of one message, timed on this rank (perf_counter seconds)."""

    peer: int
    direction: str  # "send" or "recv"
    subflow: int
    spine: int | None
    port: int
    nbytes: int
    start: float
    end: float

    @property
    def seconds(self) -> float:
        """Duration of this subflow's transfer."""
        return self.end - self.start


@dataclass
class _Conn:
    sock: socket.socket
    subflow: int
    spine: int | None
    port: int


def piece_bounds(total: int, k: int) -> list[tuple[int, int]]:
    """The byte ranges of a ``total``-byte message's k subflows (contiguous, near-equal)."""
    return [(total * j // k, total * (j + 1) // k) for j in range(k)]


def _recv_exact(sock: socket.socket, view: memoryview, what: str) -> None:
    """Fill ``view`` from the blocking ``sock`` (the hello of a new connection)."""
    got = 0
    while got < len(view):
        n = sock.recv_into(view[got:], len(view) - got)
        if n == 0:
            raise PeerDisconnected(f"{what}: connection closed after {got} of {len(view)} bytes")
        got += n


class SplitTcpTransport:
    """Point-to-point messages split over k pinned TCP subflows, for ``world`` ranks.

    ``addresses[r]`` is rank r's (ip, listen port). ``pinned_ports[k]`` are the source-port ranges that pin
    spine k (from the fabric description; empty on loopback). Call :meth:`close` (or use ``with``).
    """

    def __init__(
        self,
        rank: int,
        addresses: list[tuple[str, int]],
        plan: PathPlan,
        timeout: float = 30.0,
        pinned_ports: tuple[tuple[int, int], ...] = (),
        ecmp_ports: tuple[int, int] = (40000, 59999),
        verify: bool = True,
        congestion: str | None = "cubic",
    ) -> None:
        if not 0 <= rank < len(addresses):
            raise TransportError(f"rank {rank} is not in 0..{len(addresses) - 1}")
        if not timeout > 0:
            raise TransportError(f"timeout must be > 0 s, found {timeout}")
        self.rank, self.world, self.addresses, self.plan = rank, len(addresses), addresses, plan
        self.timeout, self.pinned_ports, self.ecmp_ports = timeout, pinned_ports, ecmp_ports
        self.verify, self.congestion = verify, congestion
        self.timings: list[SubflowTiming] = []
        self._out: dict[int, list[_Conn]] = {}
        self._in: dict[tuple[int, int], socket.socket] = {}
        self._in_k: dict[int, int] = {}
        self._in_spine: dict[tuple[int, int], int | None] = {}
        self._send_seq: dict[int, int] = {}
        self._recv_seq: dict[int, int] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._failure: str | None = None
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._listener.bind(addresses[rank])
        except OSError as exc:
            self._listener.close()
            raise TransportError(f"rank {rank}: cannot listen on {addresses[rank]}: {exc.strerror}") from None
        self._listener.listen(256)
        self._accepter = threading.Thread(
            target=self._accept_loop, daemon=True, name=f"split-tcp-accept-{rank}"
        )
        self._accepter.start()

    # -- connections -------------------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return  # listener closed
            try:
                sock.settimeout(self.timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                hello = bytearray(_HELLO.size)
                _recv_exact(sock, memoryview(hello), "hello")
                magic, src, subflow, k, spine = _HELLO.unpack(hello)
                if magic != MAGIC or not 0 <= src < self.world or not 0 <= subflow < k:
                    raise TransportError(f"bad hello {magic:#x} {src} {subflow}/{k}")
            except (OSError, TransportError) as exc:
                logger.warning("rank %d: dropped an incoming connection: %s", self.rank, exc)
                sock.close()
                continue
            sock.setblocking(False)  # messages go through the event loop
            with self._cond:
                if self._closed:
                    sock.close()
                    return
                self._in[(src, subflow)] = sock
                self._in_spine[(src, subflow)] = None if spine < 0 else spine
                self._in_k[src] = k
                self._cond.notify_all()

    def _set_congestion(self, sock: socket.socket) -> None:
        if self.congestion:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CONGESTION, self.congestion.encode())
            except OSError:
                logger.debug("congestion control %s not available", self.congestion)

    def _candidate_ports(self, path: SubflowPath, peer: int, subflow: int) -> list[int]:
        if path.spine is not None and self.pinned_ports:
            first, last = self.pinned_ports[path.spine]
            width = last - first + 1
            start = (peer * 64 + subflow * 7 + self.rank * 131) % width
            return [first + (start + i) % width for i in range(width)]
        if path.port:
            rng = random.Random(path.port)
            return [path.port] + [rng.randint(*self.ecmp_ports) for _ in range(64)]
        return [0]

    def _open(self, peer: int, subflow: int, k: int, path: SubflowPath) -> _Conn:
        deadline = time.monotonic() + self.timeout
        ip = self.addresses[self.rank][0]
        for port in self._candidate_ports(path, peer, subflow):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self._set_congestion(sock)
            try:
                sock.bind((ip, port))
            except OSError as exc:
                sock.close()
                if exc.errno == errno.EADDRINUSE:
                    continue
                raise TransportError(f"rank {self.rank}: cannot bind {ip}:{port}: {exc.strerror}") from None
            while True:
                sock.settimeout(max(0.05, deadline - time.monotonic()))
                try:
                    sock.connect(self.addresses[peer])
                    break
                except ConnectionRefusedError:  # the peer is not listening yet
                    if time.monotonic() > deadline:
                        sock.close()
                        raise TransportTimeout(
                            f"rank {self.rank}: rank {peer} at {self.addresses[peer]} "
                            f"refused connections for {self.timeout:g} s"
                        ) from None
                    sock.close()
                    time.sleep(0.05)
                    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    self._set_congestion(sock)
                    sock.bind((ip, port))
                except TimeoutError:
                    sock.close()
                    raise TransportTimeout(
                        f"rank {self.rank}: connect to rank {peer} at "
                        f"{self.addresses[peer]} timed out after {self.timeout:g} s"
                    ) from None
                except OSError as exc:
                    sock.close()
                    if exc.errno == errno.EADDRNOTAVAIL:  # 4-tuple still in TIME_WAIT: try another port
                        break
                    raise TransportError(
                        f"rank {self.rank}: connect to rank {peer} at {self.addresses[peer]} "
                        f"failed: {exc.strerror}"
                    ) from None
            if sock.fileno() == -1:
                continue
            sock.settimeout(self.timeout)
            sock.sendall(_HELLO.pack(MAGIC, self.rank, subflow, k, -1 if path.spine is None else path.spine))
            sock.setblocking(False)  # messages go through the event loop
            return _Conn(sock, subflow, path.spine, sock.getsockname()[1])
        raise TransportError(
            f"rank {self.rank}: no free source port for subflow {subflow} to rank {peer} (spine {path.spine})"
        )

    def _outbound(self, peer: int) -> list[_Conn]:
        if peer not in self._out:
            paths = self.plan.subflows(self.rank, peer)
            self._out[peer] = [self._open(peer, j, len(paths), p) for j, p in enumerate(paths)]
        return self._out[peer]

    def _inbound(self, peer: int) -> list[socket.socket]:
        deadline = time.monotonic() + self.timeout
        with self._cond:
            while True:
                k = self._in_k.get(peer)
                if k is not None and all((peer, j) in self._in for j in range(k)):
                    return [self._in[(peer, j)] for j in range(k)]
                left = deadline - time.monotonic()
                if self._closed:
                    raise TransportError(f"rank {self.rank}: transport closed while waiting for rank {peer}")
                if left <= 0:
                    raise TransportTimeout(
                        f"rank {self.rank}: rank {peer} did not connect within {self.timeout:g} s"
                    )
                self._cond.wait(min(left, 0.5))

    # -- messages ----------------------------------------------------------------------------------

    def _send_piece(self, peer: int, conn: _Conn, seq: int, total: int, view: memoryview, offset: int) -> Task:
        checksum = xxhash.xxh3_64_intdigest(view) if self.verify else 0
        start = time.perf_counter()
        yield from write_all(conn.sock, memoryview(_HEADER.pack(MAGIC, seq, total, offset, len(view), checksum)))
        yield from write_all(conn.sock, view)
        self.timings.append(
            SubflowTiming(peer, "send", conn.subflow, conn.spine, conn.port, len(view), start, time.perf_counter())
        )

    def _recv_piece(
        self, peer: int, j: int, sock: socket.socket, seq: int, view: memoryview, bounds: tuple[int, int]
    ) -> Task:
        """Receive subflow j's piece in place; a problem text (the status to send back) or None."""
        where = f"rank {self.rank} <- rank {peer} subflow {j}"
        header = bytearray(_HEADER.size)
        yield from read_exact(sock, memoryview(header), PeerDisconnected, where)
        start = time.perf_counter()
        magic, got_seq, total, offset, length, checksum = _HEADER.unpack(header)
        if magic != MAGIC or got_seq != seq:
            raise MessageLengthError(
                f"{where}: corrupt framing (magic {magic:#x}, message {got_seq}, expected message {seq})"
            )
        if total != len(view) or (offset, offset + length) != bounds:
            scratch = memoryview(bytearray(min(length, CHUNK)))
            for pos in range(0, length, CHUNK):  # drain the piece, then report
                yield from read_exact(sock, scratch[: min(CHUNK, length - pos)], PeerDisconnected, where)
            return (
                f"message {seq} from rank {peer} has {total} bytes (piece {offset}+{length}); rank "
                f"{self.rank} expected {len(view)} bytes (piece {bounds[0]}+{bounds[1] - bounds[0]})"
            )
        piece = view[offset : offset + length]
        yield from read_exact(sock, piece, PeerDisconnected, where)
        if self.verify and xxhash.xxh3_64_intdigest(piece) != checksum:
            return f"message {seq} from rank {peer}: checksum mismatch on subflow {j}"
        spine = self._in_spine.get((peer, j))
        self.timings.append(
            SubflowTiming(peer, "recv", j, spine, sock.getpeername()[1], length, start, time.perf_counter())
        )
        return None

    def _send_message(self, peer: int, view: memoryview, conns: list[_Conn]) -> Task:
        seq = self._send_seq.get(peer, 0)
        self._send_seq[peer] = seq + 1
        yield All([self._send_piece(peer, c, seq, len(view), view[a:b], a)
                   for c, (a, b) in zip(conns, piece_bounds(len(view), len(conns)))])
        where = f"rank {self.rank} -> rank {peer} status"
        status = bytearray(_STATUS.size)
        yield from read_exact(conns[0].sock, memoryview(status), PeerDisconnected, where)
        ok, nbytes = _STATUS.unpack(status)
        if not ok:
            text = bytearray(nbytes)
            yield from read_exact(conns[0].sock, memoryview(text), PeerDisconnected, where)
            raise MessageLengthError(
                f"rank {peer} rejected a message from rank {self.rank}: {text.decode(errors='replace')}"
            )

    def _recv_message(self, peer: int, view: memoryview, socks: list[socket.socket]) -> Task:
        seq = self._recv_seq.get(peer, 0)
        self._recv_seq[peer] = seq + 1
        found = yield All([self._recv_piece(peer, j, s, seq, view, b)
                           for j, (s, b) in enumerate(zip(socks, piece_bounds(len(view), len(socks))))])
        problems = [p for p in found if p]
        if problems:
            text = "; ".join(problems).encode()
            yield from write_all(socks[0], memoryview(_STATUS.pack(0, len(text)) + text))
            raise MessageLengthError(f"rank {self.rank}: {problems[0]}")
        yield from write_all(socks[0], memoryview(_STATUS.pack(1, 0)))

    def exchange(self, sends: dict[int, Any], recvs: dict[int, Any]) -> None:
        """Send ``sends[peer]`` to each peer and receive into ``recvs[peer]`` from each, all concurrently.

        Messages between a pair are matched in order. Raises a :class:`TransportError` (and closes the
        transport) if any part fails.
        """
        self._check_open()
        for peer in (*sends, *recvs):
            if not 0 <= peer < self.world or peer == self.rank:
                raise TransportError(
                    f"rank {self.rank}: peer {peer} is not another rank in 0..{self.world - 1}"
                )
        try:
            out_views = {p: byte_view(b, writable=False) for p, b in sends.items()}  # bad buffers fail first
            in_views = {p: byte_view(b, writable=True) for p, b in recvs.items()}
            outbound = {p: self._outbound(p) for p in sends}  # connect first, then wait for peers to connect
            tasks = [self._send_message(p, view, outbound[p]) for p, view in out_views.items()]
            tasks += [self._recv_message(p, view, self._inbound(p)) for p, view in in_views.items()]
            run_tasks(tasks, self.timeout)
        except TransportError as exc:
            self.abort(str(exc))
            raise
        except TimeoutError:
            self.abort("timeout")
            raise TransportTimeout(
                f"rank {self.rank}: no progress for {self.timeout:g} s exchanging with ranks "
                f"{sorted({*sends, *recvs})}"
            ) from None
        except OSError as exc:
            self.abort(str(exc))
            raise PeerDisconnected(
                f"rank {self.rank}: connection to a peer in {sorted({*sends, *recvs})} "
                f"failed: {exc.strerror or exc}"
            ) from None

    def send(self, peer: int, buf: Any) -> None:
        """Send one message (a numpy array, CPU torch tensor, or bytes-like) to ``peer``."""
        self.exchange({peer: buf}, {})

    def recv(self, peer: int, buf: Any) -> None:
        """Receive one message from ``peer`` into ``buf`` (contiguous, writable, exactly its length)."""
        self.exchange({}, {peer: buf})

    def pop_timings(self) -> list[SubflowTiming]:
        """This rank's subflow timings since the last call."""
        out, self.timings = self.timings, []
        return out

    # -- lifetime ----------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise TransportError(
                f"rank {self.rank}: transport is closed"
                + (f" after an earlier error: {self._failure}" if self._failure else "")
            )

    def abort(self, reason: str) -> None:
        """Close every connection at once (peers blocked on this rank fail promptly)."""
        if self._failure is None:
            self._failure = reason
        self.close()

    def close(self) -> None:
        """Close the listener and all connections (idempotent)."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            socks = [c.sock for conns in self._out.values() for c in conns] + list(self._in.values())
            self._cond.notify_all()
        for sock in [self._listener, *socks]:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
