"""Fixtures shared by the packages' tests: real Prometheus servers (see prometheus_server.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.prometheus_server import PrometheusServer, Pushgateway


@pytest.fixture
def prometheus(tmp_path) -> Iterator[PrometheusServer]:
    """A Prometheus server, not yet started: ``prometheus.start([target_port, ...])``."""
    server = PrometheusServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def pushgateway(tmp_path) -> Iterator[Pushgateway]:
    """A running Prometheus Pushgateway."""
    gateway = Pushgateway(tmp_path)
    yield gateway
    gateway.stop()
