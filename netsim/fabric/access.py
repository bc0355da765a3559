"""One emulated access link between the root namespace (the server side) and a leaf namespace.

Without impairments::

    root: <name>h  10.<net>.<i>.1/30  ==veth==  <ns>: eth0 10.<net>.<i>.2/30
          tbf(down) on <name>h egress            tbf(up) on eth0 egress

With delay, jitter or loss, a router namespace ``<ns>r`` sits in between and runs a TUN delay line
(:mod:`netsim.fabric.delayline`); both tbf's then sit on the router's two egress devices::

    root 10.<net>.<i>.1 == <ns>r [up-side .2 | tun dl0 | down-side 10.<net+1>.<i>.1] == <ns> 10.<net+1>.<i>.2

Root gets one veth and (with a router) one route; nothing else in the root namespace changes.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import time
from dataclasses import dataclass, field

from typing_extensions import Self

from netsim.fabric import shaping
from netsim.fabric.errors import FabricError
from netsim.fabric.namespaces import (
    create_namespace,
    delete_link,
    delete_namespace,
    exec_prefix,
    ip_batch,
    list_namespaces,
    missing_capabilities,
    run,
    sysctl,
)

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LinkSpec:
    """Rates in bit/s (``None`` = unshaped), one-way delays and jitters in ms, loss as a probability."""

    down_bps: float | None = None
    up_bps: float | None = None
    down_delay_ms: float = 0.0
    up_delay_ms: float = 0.0
    down_jitter_ms: float = 0.0
    up_jitter_ms: float = 0.0
    down_loss: float = 0.0
    up_loss: float = 0.0
    down_trace: str | None = None
    up_trace: str | None = None

    @property
    def impaired(self) -> bool:
        """Whether the link needs a delay line (any delay, jitter, loss or trace)."""
        return any((self.down_delay_ms, self.up_delay_ms, self.down_jitter_ms, self.up_jitter_ms,
                    self.down_loss, self.up_loss, self.down_trace, self.up_trace))


@dataclass
class AccessLink:
    """Build with :meth:`up`, remove with :meth:`down` (idempotent; also a context manager)."""

    name: str
    index: int
    spec: LinkSpec
    net: int = 77
    _proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def namespace(self) -> str:
        return self.name

    @property
    def router(self) -> str:
        return f"{self.name}r"

    @property
    def host_dev(self) -> str:
        return f"{self.name}h"[:15]

    @property
    def server_ip(self) -> str:
        """Address of the root namespace's end of the link (where the node reaches the server)."""
        return f"10.{self.net}.{self.index}.1"

    @property
    def node_ip(self) -> str:
        """Address of the leaf namespace."""
        return f"10.{self.net + 1}.{self.index}.2" if self.spec.impaired else f"10.{self.net}.{self.index}.2"

    def up(self) -> AccessLink:
        why = missing_capabilities()
        if why:
            raise FabricError(f"cannot build access link {self.name}: {why}")
        if not 0 < self.index < 255:
            raise FabricError(f"link index must be in 1..254, found {self.index}")
        if not 0 < self.net < 254:
            raise FabricError(f"net must be in 1..253 (addresses 10.net.index.x), found {self.net}")
        taken = {self.namespace, self.router} & set(list_namespaces())
        if taken:  # someone else's (or a crashed run's): never delete what this link did not create
            raise FabricError(f"namespace(s) {sorted(taken)} already exist; pick another link name or remove "
                              f"them with `ip netns delete`")
        blocks = [f"10.{self.net}.{self.index}.0/30"] + ([f"10.{self.net + 1}.{self.index}.0/30"] if self.spec.impaired else [])
        for block in blocks:  # never take over an address or route the host already has
            used = run("ip", "-4", "-o", "addr", "show", "to", block).stdout.strip()
            routed = run("ip", "-4", "route", "show", "exact", block).stdout.strip()
            if used or routed:
                raise FabricError(f"address block {block} is already in use on this host ({(used or routed)[:120]}); "
                                  "pick another net= for the link")
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def _build(self) -> None:
        s, i, n = self.spec, self.index, self.net
        create_namespace(self.namespace)
        if not s.impaired:
            ip_batch([f"link add {self.host_dev} type veth peer name eth0 netns {self.namespace}",
                      f"addr add 10.{n}.{i}.1/30 dev {self.host_dev}", f"link set {self.host_dev} up"])
            ip_batch([f"addr add 10.{n}.{i}.2/30 dev eth0", "link set eth0 up",
                      f"route add default via 10.{n}.{i}.1"], self.namespace)
            down_dev, down_ns, up_dev, up_ns = self.host_dev, None, "eth0", self.namespace
        else:
            r = self.router
            create_namespace(r)
            sysctl(r, "net.ipv4.ip_forward", "1")
            sysctl(r, "net.ipv4.conf.all.rp_filter", "0")
            sysctl(r, "net.ipv4.conf.default.rp_filter", "0")
            ip_batch([f"link add {self.host_dev} type veth peer name up0 netns {r}",
                      f"addr add 10.{n}.{i}.1/30 dev {self.host_dev}", f"link set {self.host_dev} up"])
            ip_batch([f"link add down0 type veth peer name eth0 netns {self.namespace}",
                      f"addr add 10.{n}.{i}.2/30 dev up0", "link set up0 up",
                      f"addr add 10.{n + 1}.{i}.1/30 dev down0", "link set down0 up",
                      "tuntap add dev dl0 mode tun", "link set dl0 up",
                      "route add default via " + f"10.{n}.{i}.1"], r)
            sysctl(r, "net.ipv4.conf.dl0.rp_filter", "0")
            ip_batch([f"addr add 10.{n + 1}.{i}.2/30 dev eth0", "link set eth0 up",
                      f"route add default via 10.{n + 1}.{i}.1"], self.namespace)
            run("ip", "route", "replace", f"10.{n + 1}.{i}.0/30", "via", f"10.{n}.{i}.2")
            ip_batch(["rule add pref 100 iif dl0 lookup main", "rule add pref 200 iif up0 lookup 100",
                      "rule add pref 201 iif down0 lookup 100", "route add default dev dl0 table 100"], r)
            self._proc = subprocess.Popen(
                [*exec_prefix(r), sys.executable, "-m", "netsim.fabric.delayline", "--dev", "dl0",
                 "--down-subnet", f"10.{n + 1}.{i}.0/30",
                 "--down-delay-ms", str(s.down_delay_ms), "--up-delay-ms", str(s.up_delay_ms),
                 "--down-jitter-ms", str(s.down_jitter_ms), "--up-jitter-ms", str(s.up_jitter_ms),
                 "--down-loss", str(s.down_loss), "--up-loss", str(s.up_loss), "--seed", str(i),
                 *(["--down-trace", s.down_trace] if s.down_trace else []),
                 *(["--up-trace", s.up_trace] if s.up_trace else [])],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            time.sleep(0.3)
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise FabricError(f"delay line of {self.name} exited at start: {err.strip()[-500:]}")
            down_dev, down_ns, up_dev, up_ns = "down0", r, "up0", r
        if s.down_bps and not s.down_trace:
            shaping.set_rate(down_dev, s.down_bps, down_ns)
        if s.up_bps and not s.up_trace:
            shaping.set_rate(up_dev, s.up_bps, up_ns)
        logger.info("link %s up: node %s, server %s, %s", self.name, self.node_ip, self.server_ip, s)

    def down(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait(5)
            self._proc = None
        delete_namespace(self.namespace)
        delete_namespace(self.router)
        delete_link(self.host_dev)
        run("ip", "route", "del", f"10.{self.net + 1}.{self.index}.0/30", check=False)

    def exec_prefix(self) -> list[str]:
        """Prefix that runs a command in the leaf namespace."""
        return exec_prefix(self.namespace)

    def __enter__(self) -> Self:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()
