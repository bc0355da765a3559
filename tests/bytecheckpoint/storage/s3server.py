"""Real S3 servers for tests, each in its own process on a free loopback port: ``moto_server``
(objects in memory) and npm's ``s3rver`` (objects on disk, so it survives a kill and restart)."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

MOTO_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def moto_command() -> list[str]:
    exe = Path(sys.executable).with_name("moto_server")
    return [str(exe)] if exe.exists() else [shutil.which("moto_server") or "moto_server"]


class MotoServer:
    """``moto_server -H 127.0.0.1 -p PORT``; ``kill()`` SIGKILLs it, ``start()`` brings it back on the
    same port (empty: moto keeps its objects in memory)."""

    def __init__(self, port: int | None = None, min_part_size: int = 5 << 20) -> None:
        self.port = port or free_port()
        self.min_part_size = min_part_size
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        env = {**os.environ, **MOTO_CREDENTIALS, "S3_UPLOAD_PART_MIN_SIZE": str(self.min_part_size)}
        self.proc = subprocess.Popen(
            [*moto_command(), "-H", "127.0.0.1", "-p", str(self.port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with code {self.proc.returncode} on port {self.port}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"moto_server did not answer on {self.endpoint} within {timeout}s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        self.proc = None

    def create_bucket(self, name: str) -> None:
        req = urllib.request.Request(f"{self.endpoint}/{name}", method="PUT")
        with urllib.request.urlopen(req, timeout=10):
            pass

    def __enter__(self) -> MotoServer:  # noqa: PYI034
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


BUCKET = "bcp-tests"
TEST_PART_SIZE = 64 << 10  # small parts, so modest objects exercise multipart uploads


@pytest.fixture(scope="session")
def moto_server() -> Iterator[MotoServer]:
    """One moto server for the session, with credentials and ``AWS_ENDPOINT_URL`` in the environment
    (the S3 backend must find the endpoint there) and a test bucket."""
    saved = {k: os.environ.get(k) for k in (*MOTO_CREDENTIALS, "AWS_ENDPOINT_URL")}
    server = MotoServer(min_part_size=TEST_PART_SIZE)
    server.start()
    try:
        os.environ.update(MOTO_CREDENTIALS)
        os.environ["AWS_ENDPOINT_URL"] = server.endpoint
        server.create_bucket(BUCKET)
        yield server
    finally:
        server.kill()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


S3RVER_CREDENTIALS = {  # s3rver's only account; other keys get InvalidAccessKeyId
    "AWS_ACCESS_KEY_ID": "S3RVER",
    "AWS_SECRET_ACCESS_KEY": "S3RVER",
    "AWS_DEFAULT_REGION": "us-east-1",
}
REPO_ROOT = Path(__file__).resolve().parents[3]
S3RVER_BIN = REPO_ROOT / ".s3rver" / "node_modules" / ".bin" / "s3rver"
S3RVER_INSTALL = "npm install --prefix .s3rver s3rver@3.7.1  (run in the repository root; .ci/run does it)"


class S3rverServer:
    """npm's ``s3rver`` on 127.0.0.1: a disk-backed S3 server keeping its objects under ``directory``.
    ``kill()`` SIGKILLs its process group; ``start()`` brings it back on the same port and directory,
    objects and unfinished multipart uploads included. It checks signatures against its one built-in
    key pair (``S3RVER_CREDENTIALS``) and ignores ``If-None-Match`` on PUT."""

    def __init__(self, directory: str | os.PathLike[str], port: int | None = None,
                 buckets: tuple[str, ...] = (BUCKET,)) -> None:
        self.directory = Path(directory)
        self.port = port or free_port()
        self.buckets = buckets
        self.proc: subprocess.Popen | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def environ(self) -> dict[str, str]:
        """What a client needs in its environment to reach this server by ``s3://`` URL alone."""
        return {**S3RVER_CREDENTIALS, "AWS_ENDPOINT_URL": self.endpoint}

    def start(self, timeout: float = 20.0) -> None:
        if not S3RVER_BIN.exists():
            pytest.fail(f"s3rver is not installed ({S3RVER_BIN} is missing); install it with: {S3RVER_INSTALL}",
                        pytrace=False)
        self.directory.mkdir(parents=True, exist_ok=True)
        args = [str(S3RVER_BIN), "--directory", str(self.directory), "--address", "127.0.0.1",
                "--port", str(self.port), "--silent"]
        for bucket in self.buckets:  # created at startup; already there after a restart, kept as it is
            args += ["--configure-bucket", bucket]
        log = self.directory.parent / f"{self.directory.name}.s3rver.log"  # beside the data, not in it
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(args, stdout=out, stderr=out, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code, self.proc = self.proc.returncode, None
                raise RuntimeError(f"s3rver exited with code {code} on port {self.port}: "
                                   f"{log.read_text(errors='replace')[-2000:]}")
            try:  # buckets are configured before it listens: any HTTP answer means it is ready
                with urllib.request.urlopen(self.endpoint, timeout=1):
                    return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"s3rver did not answer on {self.endpoint} within {timeout}s")

    def kill(self) -> None:
        if self.proc is not None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        self.proc = None

    def __enter__(self) -> S3rverServer:  # noqa: PYI034
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


@pytest.fixture(scope="session")
def s3rver_server() -> Iterator[S3rverServer]:
    """One s3rver for the session, on a free port with a temporary data directory and the test bucket.
    It leaves the environment alone (``moto_server`` owns ``AWS_ENDPOINT_URL``): a test points its
    clients at it with ``monkeypatch.setenv`` over ``server.environ``, or ``endpoint_url=``."""
    with tempfile.TemporaryDirectory(prefix="bcp-s3rver-") as directory, \
            S3rverServer(Path(directory) / "data") as server:
        yield server


class TcpProxy:
    """A loopback TCP relay in front of a server. ``stop()`` closes the listening socket and cuts
    every open connection (clients see resets and refused connections, as when the server dies);
    ``start()`` serves again on the same port."""

    def __init__(self, upstream_port: int, port: int | None = None) -> None:
        self.upstream_port = upstream_port
        self.port = port or free_port()
        self.listener: socket.socket | None = None
        self.conns: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.bytes_up = 0
        self.drop_reply_to: bytes | None = None  # the next request containing this loses its reply
        self.dropped = 0

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.upstream_port), timeout=5)
                upstream.settimeout(None)
            except OSError:
                client.close()
                continue
            with self.lock:
                self.conns |= {client, upstream}
            doomed = threading.Event()  # set: the server's next reply on this connection is dropped
            threading.Thread(target=self._pump, args=(client, upstream, True, doomed), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False, doomed), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool, doomed: threading.Event) -> None:
        try:
            while True:
                data = src.recv(1 << 16)
                if not data:
                    break
                if up:
                    self.bytes_up += len(data)
                    marker = self.drop_reply_to
                    if marker is not None and marker in data:
                        self.drop_reply_to = None
                        doomed.set()
                elif doomed.is_set():  # the request was served; the client never hears of it
                    self.dropped += 1
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                self._close(s)

    def _close(self, s: socket.socket) -> None:
        with self.lock:
            self.conns.discard(s)
        try:
            s.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        s.close()

    def stop(self) -> None:
        if self.listener is not None:
            try:  # wakes the thread blocked in accept(); close() alone leaves the socket listening
                self.listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.listener.close()
            self.listener = None
        with self.lock:
            conns = list(self.conns)
        for s in conns:
            self._close(s)
