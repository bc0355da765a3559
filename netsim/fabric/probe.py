"""Measure an emulated link with plain TCP: round-trip time and goodput in each direction.

The server side runs in this process (root namespace); the client side runs inside the leaf namespace
as ``python -m netsim.fabric.probe HOST PORT MODE BYTES`` and prints one JSON object.

* ``rtt``: median (and minimum) TCP connect time over several connects (one SYN/SYN-ACK round trip).
* ``up``: the client sends BYTES; goodput = BYTES / time from first to last byte at the receiver.
* ``down``: the server sends BYTES; the client times them the same way.
"""

from __future__ import annotations

import json
import socket
import statistics
import subprocess
import sys
import threading
import time

CHUNK = 1 << 16


def _recv_all(conn: socket.socket, nbytes: int) -> tuple[float, float]:
    got, first = 0, None
    while got < nbytes:
        data = conn.recv(CHUNK)
        if not data:
            break
        if first is None:
            first = time.perf_counter()
        got += len(data)
    return first or time.perf_counter(), time.perf_counter()


class ProbeServer:
    """Accepts probe connections on ``host`` (an ephemeral port); serves ``up``/``down`` requests."""

    def __init__(self, host: str) -> None:
        self.sock = socket.create_server((host, 0))
        self.port = self.sock.getsockname()[1]
        self.results: list[float] = []
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            header = conn.recv(64).split(b"\n", 1)[0].split()
            if len(header) != 2:
                return
            mode, nbytes = header[0].decode(), int(header[1])
            conn.sendall(b"ok\n")
            if mode == "up":
                first, last = _recv_all(conn, nbytes)
                conn.sendall(json.dumps({"seconds": last - first}).encode())
            elif mode == "down":
                _send_zeros(conn, nbytes)

    def close(self) -> None:
        self.sock.close()


def _send_zeros(sock: socket.socket, nbytes: int) -> None:
    payload = b"\0" * CHUNK
    left = nbytes
    while left > 0:
        sock.sendall(payload[:min(CHUNK, left)])
        left -= CHUNK


def client(host: str, port: int, mode: str, nbytes: int) -> dict[str, float]:
    if mode == "rtt":
        samples = []
        for _ in range(max(nbytes, 3)):
            t0 = time.perf_counter()
            s = socket.create_connection((host, port), timeout=10)
            samples.append(time.perf_counter() - t0)
            s.close()
        return {"rtt_s": statistics.median(samples), "rtt_min_s": min(samples), "samples": len(samples)}
    with socket.create_connection((host, port), timeout=60) as s:
        s.sendall(f"{mode} {nbytes}\n".encode())
        s.recv(3)
        if mode == "up":
            _send_zeros(s, nbytes)
            s.shutdown(socket.SHUT_WR)
            seconds = json.loads(s.recv(256))["seconds"]
        else:
            first, last = _recv_all(s, nbytes)
            seconds = last - first
    return {"bytes": nbytes, "seconds": seconds, "goodput_bps": 8 * nbytes / seconds}


def measure(prefix: list[str], server_host: str, mode: str, nbytes: int, timeout: float = 120) -> dict[str, float]:
    """Run the client inside a namespace (``prefix`` from ``exec_prefix``) against a local ProbeServer."""
    server = ProbeServer(server_host)
    try:
        out = subprocess.run([*prefix, sys.executable, "-m", "netsim.fabric.probe", server_host,
                              str(server.port), mode, str(nbytes)], capture_output=True, text=True,
                             timeout=timeout, check=True)
        return json.loads(out.stdout)
    finally:
        server.close()


if __name__ == "__main__":
    print(json.dumps(client(sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))))
