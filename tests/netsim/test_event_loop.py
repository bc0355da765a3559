"""The one-thread socket task loop under split-TCP: concurrency, results, timeouts, failures."""

from __future__ import annotations

import os
import socket
import time

import pytest

from netsim.transport.errors import PeerDisconnected
from netsim.transport.event_loop import All, read_exact, run_tasks, write_all


def _pair() -> tuple[socket.socket, socket.socket]:
    """A connected TCP pair on loopback, non-blocking (split-TCP's sockets are TCP)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        a = socket.create_connection(server.getsockname())
        b, _ = server.accept()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


def test_both_directions_move_more_than_the_socket_buffers_at_once() -> None:
    """Each side writes 8 MiB before reading: sequential blocking code would deadlock here."""
    a, b = _pair()
    data_a, data_b = os.urandom(8 << 20), os.urandom(8 << 20)
    got_a, got_b = bytearray(len(data_b)), bytearray(len(data_a))

    def side(sock, out, into):
        yield All([write_all(sock, memoryview(out)), read_exact(sock, memoryview(into), PeerDisconnected, "x")])
        return len(into)

    assert run_tasks([side(a, data_a, got_a), side(b, data_b, got_b)], timeout=10) == [8 << 20, 8 << 20]
    assert bytes(got_a) == data_b and bytes(got_b) == data_a
    a.close()
    b.close()


def test_all_resumes_with_results_in_order_and_empty_groups_resume_at_once() -> None:
    def leaf(value):
        return value
        yield  # a generator that returns at once

    def parent():
        first = yield All([leaf(i) for i in range(5)])
        empty = yield All([])
        return first, empty

    assert run_tasks([parent(), leaf("x")], timeout=1) == [([0, 1, 2, 3, 4], []), "x"]


def test_no_progress_raises_timeout_and_closes_the_waiting_tasks() -> None:
    a, b = _pair()
    closed = []

    def waiter():
        try:
            yield from read_exact(a, memoryview(bytearray(4)), PeerDisconnected, "a")
        finally:
            closed.append("waiter")

    started = time.monotonic()
    with pytest.raises(TimeoutError, match="no progress for 0.2 s"):
        run_tasks([waiter()], timeout=0.2)
    assert 0.15 < time.monotonic() - started < 2 and closed == ["waiter"]
    a.close()
    b.close()


def test_a_peer_that_closes_fails_the_run_with_the_first_error() -> None:
    a, b = _pair()
    b.send(b"ab")
    b.close()
    closed = []

    def reader():
        yield from read_exact(a, memoryview(bytearray(10)), PeerDisconnected, "rank 0 <- rank 1")

    def sleeper():
        c, d = _pair()
        try:
            yield from read_exact(c, memoryview(bytearray(1)), PeerDisconnected, "never")
        finally:
            closed.append("sleeper")
            c.close()
            d.close()

    with pytest.raises(PeerDisconnected, match=r"rank 0 <- rank 1: connection closed after 2 of 10 bytes"):
        run_tasks([sleeper(), reader()], timeout=5)
    assert closed == ["sleeper"]
    a.close()
