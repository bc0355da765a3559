"""Real Prometheus servers for tests: the Debian packages ``prometheus`` and ``prometheus-pushgateway``
(.ci/run installs both), started on free loopback ports and stopped after the test."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary(name: str) -> str:
    binary = shutil.which(name)
    if binary is None:
        pytest.skip(f"{name} is not installed (apt-get install {name})")
    return binary


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class PrometheusServer:
    """A Prometheus server scraping loopback targets every second; ``query`` uses its HTTP API."""

    def __init__(self, workdir: Path) -> None:
        self.binary = _binary("prometheus")
        self.workdir = workdir
        self.port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self, target_ports: list[int], job: str = "test") -> None:
        """Write the config (one job scraping ``127.0.0.1:<port>`` for each port) and start the server."""
        targets = ", ".join(f"'127.0.0.1:{p}'" for p in target_ports)
        cfg = self.workdir / "prometheus.yml"
        cfg.write_text("global:\n  scrape_interval: 1s\nscrape_configs:\n"
                       f"  - job_name: {job}\n"
                       f"    static_configs:\n      - targets: [{targets}]\n")
        log = open(self.workdir / "prometheus.log", "wb")  # noqa: SIM115 - the server's output, kept for debugging
        self.proc = subprocess.Popen(
            [self.binary, f"--config.file={cfg}", f"--storage.tsdb.path={self.workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"], stdout=log, stderr=log)

    def query(self, promql: str, strict: bool = False) -> list[dict[str, Any]]:
        """The result of an instant query: an empty list while the server is starting, or (unless
        ``strict``, which raises) when the query is rejected."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode({"query": promql})
        try:
            with urllib.request.urlopen(url, timeout=5) as resp:
                return json.loads(resp.read())["data"]["result"]
        except urllib.error.HTTPError as exc:
            if strict:
                raise AssertionError(f"Prometheus rejected {promql!r}: {exc.read().decode()}") from exc
            return []
        except (urllib.error.URLError, ConnectionError):
            if strict:
                raise
            return []

    def wait_for(self, promql: str, done: Callable[[list[dict[str, Any]]], bool], timeout: float = 60.0
                 ) -> list[dict[str, Any]]:
        """Poll ``promql`` until ``done(result)``; return the last result (the caller asserts on it)."""
        deadline, found = time.monotonic() + timeout, []
        while time.monotonic() < deadline:
            found = self.query(promql)
            if done(found):
                break
            time.sleep(0.5)
        return found

    def value(self, promql: str) -> float:
        """The single value of ``promql``; fails the test if there is not exactly one series."""
        found = self.query(promql)
        assert len(found) == 1, f"{promql}: expected one series, got {found}"
        return float(found[0]["value"][1])

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
            self.proc = None


class Pushgateway:
    """A Prometheus Pushgateway on a free loopback port; ``metrics()`` is what it exposes."""

    def __init__(self, workdir: Path) -> None:
        binary = _binary("prometheus-pushgateway")
        self.port = free_port()
        log = open(workdir / "pushgateway.log", "wb")  # noqa: SIM115 - the server's output, kept for debugging
        self.proc = subprocess.Popen([binary, f"--web.listen-address=127.0.0.1:{self.port}"],
                                     stdout=log, stderr=log)
        deadline = time.monotonic() + 30
        while self.metrics() is None:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"the pushgateway did not start; see {workdir / 'pushgateway.log'}")
            time.sleep(0.2)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def metrics(self) -> str | None:
        try:
            with urllib.request.urlopen(f"http://{self.address}/metrics", timeout=5) as resp:
                return resp.read().decode()
        except (urllib.error.URLError, ConnectionError):
            return None

    def stop(self) -> None:
        _stop(self.proc)
