"""An emulated leaf-spine fabric of network namespaces: build, describe, tear down.

Layout for fabric ``NAME`` (every namespace is ``netsim-NAME-<role><index>``)::

    host h (leaf j, slot i): eth0 10.N.(100+j).(4i+2)/30  == veth ==  leaf j: hI 10.N.(100+j).(4i+1)
    leaf j: sK 10.N.(j+1).(4k+1)/30                        == veth ==  spine k: lJ 10.N.(j+1).(4k+2)

Every veth end has a ``tbf`` on its egress (host<->leaf at ``link_mbit``, leaf<->spine at ``spine_mbit``,
a queue of ``queue_ms``), so the links, not the CPU, are the bottleneck. Leaves route a remote leaf's
/24 over an ECMP multipath route through every spine, hashed on the L4 5-tuple
(``fib_multipath_hash_policy=3`` with fields ``0x0037``; policy 1 is not deterministic on these kernels)
with a per-leaf seed. A TCP connection whose
*source* port lies in spine k's range (:attr:`FabricDescription.pinned_ports`) is pinned to spine k in
both directions: ``ip rule ... sport A-B lookup 100+k`` on the sending leaf and ``dport A-B`` (the ACKs)
on the far leaf; table ``100+k`` routes remote leaves via spine k only.

veth pairs are created directly inside the namespaces: the root namespace is never touched, and deleting
the namespaces (after ending their processes) removes everything. :func:`fabric_down` also removes
leftovers of a build that crashed half-way (it matches the namespace prefix, not the state file).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from netsim.fabric import shaping
from netsim.fabric.errors import FabricError
from netsim.fabric.namespaces import (
    delete_namespace,
    ip_batch,
    list_namespaces,
    missing_capabilities,
    run,
)

logger = logging.getLogger(__name__)

STATE_DIR_ENV = "NETSIM_FABRIC_DIR"
DEFAULT_STATE_DIR = "/run/netsim-fabric"
PIN_PORT_BASE = 20000
PORTS_PER_SPINE = 1000
ECMP_PORTS = (40000, 59999)
LISTEN_PORT = 19000
HASH_FIELDS = "0x0037"
PIN_TABLE_BASE = 100
_NAME = re.compile(r"^[a-z][a-z0-9]{0,11}$")
DESCRIPTION_VERSION = 1


@dataclass(frozen=True)
class FabricSpec:
    """What to build; validated on construction (before anything is built)."""

    name: str = "fab"
    leaves: int = 2
    hosts_per_leaf: int = 2
    spines: int = 2
    link_mbit: float = 100.0
    spine_mbit: float | None = None
    seed: int = 0
    net: int = 66
    queue_ms: float = 10.0

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise FabricError(
                f"fabric name must match {_NAME.pattern} (a letter, then up to 11 lowercase "
                f"letters/digits), found {self.name!r}"
            )
        if not 1 <= self.leaves <= 99:
            raise FabricError(f"--leaves must be in 1..99, found {self.leaves}")
        if not 1 <= self.hosts_per_leaf <= 63:
            raise FabricError(f"--hosts-per-leaf must be in 1..63, found {self.hosts_per_leaf}")
        if not 1 <= self.spines <= (ECMP_PORTS[0] - PIN_PORT_BASE) // PORTS_PER_SPINE:
            raise FabricError(
                f"--spines must be in 1..{(ECMP_PORTS[0] - PIN_PORT_BASE) // PORTS_PER_SPINE}, "
                f"found {self.spines}"
            )
        for label, rate in (("--link-mbit", self.link_mbit), ("--spine-mbit", self.spine_mbit)):
            if rate is not None and not 0.1 <= rate <= 10_000:
                raise FabricError(f"{label} must be in 0.1..10000 Mbit/s, found {rate}")
        if not 0.5 <= self.queue_ms <= 1000:
            raise FabricError(f"queue_ms (tbf latency) must be in 0.5..1000 ms, found {self.queue_ms}")
        if not 1 <= self.net <= 254:
            raise FabricError(f"net must be in 1..254 (the second octet of 10.N.x.x), found {self.net}")

    @property
    def prefix(self) -> str:
        """Namespace-name prefix shared by all of this fabric's namespaces."""
        return f"netsim-{self.name}-"

    @property
    def uplink_mbit(self) -> float:
        """Leaf-spine rate (``spine_mbit``, or ``link_mbit`` when unset)."""
        return self.spine_mbit if self.spine_mbit is not None else self.link_mbit


@dataclass(frozen=True)
class FabricHost:
    """One host namespace of the fabric."""

    index: int
    leaf: int
    namespace: str
    address: str


@dataclass(frozen=True)
class FabricDescription:
    """Machine-readable description of a built fabric (``netsim fabric status --json``)."""

    spec: FabricSpec
    hosts: tuple[FabricHost, ...]
    leaf_namespaces: tuple[str, ...]
    spine_namespaces: tuple[str, ...]
    pinned_ports: tuple[tuple[int, int], ...]  # pinned_ports[k] = (first, last) source ports for spine k
    ecmp_ports: tuple[int, int]
    listen_port: int
    created: float

    @property
    def namespaces(self) -> tuple[str, ...]:
        """All namespaces of the fabric."""
        return tuple(h.namespace for h in self.hosts) + self.leaf_namespaces + self.spine_namespaces

    def spine_of_port(self, port: int) -> int | None:
        """The spine a source port pins to, or ``None`` for an unpinned (ECMP-hashed) port."""
        for spine, (first, last) in enumerate(self.pinned_ports):
            if first <= port <= last:
                return spine
        return None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready dict (versioned)."""
        return {
            "version": DESCRIPTION_VERSION,
            "spec": asdict(self.spec),
            "hosts": [asdict(h) for h in self.hosts],
            "leaf_namespaces": list(self.leaf_namespaces),
            "spine_namespaces": list(self.spine_namespaces),
            "pinned_ports": [
                {"spine": k, "first": a, "last": b} for k, (a, b) in enumerate(self.pinned_ports)
            ],
            "ecmp_ports": list(self.ecmp_ports),
            "listen_port": self.listen_port,
            "created": self.created,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> FabricDescription:
        """Parse :meth:`to_dict`'s output, raising :class:`FabricError` on anything unexpected."""
        try:
            if data["version"] != DESCRIPTION_VERSION:
                raise FabricError(
                    f"fabric description version {data['version']!r}, expected {DESCRIPTION_VERSION}"
                )
            spec = FabricSpec(**data["spec"])  # type: ignore[arg-type]
            return cls(
                spec,
                tuple(FabricHost(**h) for h in data["hosts"]),  # type: ignore[union-attr]
                tuple(data["leaf_namespaces"]),
                tuple(data["spine_namespaces"]),  # type: ignore[arg-type]
                tuple((int(p["first"]), int(p["last"])) for p in data["pinned_ports"]),  # type: ignore
                (int(data["ecmp_ports"][0]), int(data["ecmp_ports"][1])),  # type: ignore[index]
                int(data["listen_port"]),
                float(data["created"]),
            )  # type: ignore[arg-type]
        except (KeyError, TypeError, IndexError, ValueError) as exc:
            raise FabricError(f"malformed fabric description: {type(exc).__name__}: {exc}") from None


def describe(spec: FabricSpec, created: float = 0.0) -> FabricDescription:
    """The description of ``spec``'s fabric (pure: names, addresses and port ranges)."""
    hosts = tuple(
        FabricHost(
            h,
            h // spec.hosts_per_leaf,
            f"{spec.prefix}h{h}",
            f"10.{spec.net}.{100 + h // spec.hosts_per_leaf}.{4 * (h % spec.hosts_per_leaf) + 2}",
        )
        for h in range(spec.leaves * spec.hosts_per_leaf)
    )
    pinned = tuple(
        (PIN_PORT_BASE + k * PORTS_PER_SPINE, PIN_PORT_BASE + (k + 1) * PORTS_PER_SPINE - 1)
        for k in range(spec.spines)
    )
    return FabricDescription(
        spec,
        hosts,
        tuple(f"{spec.prefix}l{j}" for j in range(spec.leaves)),
        tuple(f"{spec.prefix}s{k}" for k in range(spec.spines)),
        pinned,
        ECMP_PORTS,
        LISTEN_PORT,
        created,
    )


def state_dir() -> Path:
    """Where descriptions of built fabrics are kept (``$NETSIM_FABRIC_DIR`` or a directory under /run)."""
    return Path(os.environ.get(STATE_DIR_ENV, DEFAULT_STATE_DIR))


def _state_file(name: str) -> Path:
    return state_dir() / f"{name}.json"


def _require_root() -> None:
    problem = missing_capabilities()
    if problem:
        raise FabricError(f"the emulated fabric needs root and iproute2: {problem}")


def _proc_writes(values: dict[str, str]) -> str:
    return "; ".join(f"echo {v} > /proc/sys/{k.replace('.', '/')}" for k, v in values.items())


def _build(d: FabricDescription) -> None:
    spec = d.spec
    n, hpl = spec.net, spec.hosts_per_leaf
    ip_batch([f"netns add {ns}" for ns in d.namespaces])
    links = []
    for h in d.hosts:
        links.append(
            f"link add h{h.index % hpl} netns {d.leaf_namespaces[h.leaf]} type veth "
            f"peer name eth0 netns {h.namespace}"
        )
    for j, leaf in enumerate(d.leaf_namespaces):
        for k, spine in enumerate(d.spine_namespaces):
            links.append(f"link add s{k} netns {leaf} type veth peer name l{j} netns {spine}")
    ip_batch(links)
    router_sysctls = {
        "net.ipv4.ip_forward": "1",
        "net.ipv4.conf.all.rp_filter": "0",
        "net.ipv4.conf.default.rp_filter": "0",
        "net.ipv4.fib_multipath_hash_policy": "3",
        "net.ipv4.fib_multipath_hash_fields": HASH_FIELDS,
    }
    host_mbit, up_mbit = spec.link_mbit * 1e6, spec.uplink_mbit * 1e6
    for h in d.hosts:
        slot = h.index % hpl
        ip_batch(
            [
                "link set lo up",
                f"addr add {h.address}/30 dev eth0",
                "link set eth0 up",
                f"route add default via 10.{n}.{100 + h.leaf}.{4 * slot + 1}",
            ],
            h.namespace,
        )
        shaping.set_rate("eth0", host_mbit, h.namespace, spec.queue_ms)
    for j, leaf in enumerate(d.leaf_namespaces):
        cmds = ["link set lo up"]
        for slot in range(hpl):
            cmds += [f"addr add 10.{n}.{100 + j}.{4 * slot + 1}/30 dev h{slot}", f"link set h{slot} up"]
        for k in range(spec.spines):
            cmds += [f"addr add 10.{n}.{j + 1}.{4 * k + 1}/30 dev s{k}", f"link set s{k} up"]
        for other in range(spec.leaves):
            if other == j:
                continue
            hops = " ".join(f"nexthop via 10.{n}.{j + 1}.{4 * k + 2} dev s{k}" for k in range(spec.spines))
            cmds.append(f"route add 10.{n}.{100 + other}.0/24 {hops}")
            for k in range(spec.spines):
                cmds.append(
                    f"route add 10.{n}.{100 + other}.0/24 via 10.{n}.{j + 1}.{4 * k + 2} dev s{k} "
                    f"table {PIN_TABLE_BASE + k}"
                )
        for k, (first, last) in enumerate(d.pinned_ports):
            cmds.append(
                f"rule add pref {1000 + 2 * k} ipproto tcp sport {first}-{last} lookup {PIN_TABLE_BASE + k}"
            )
            cmds.append(
                f"rule add pref {1001 + 2 * k} ipproto tcp dport {first}-{last} lookup {PIN_TABLE_BASE + k}"
            )
        seed = (spec.seed * 1_000_003 + j * 7919 + 1) % (2**31)
        run(
            "ip",
            "netns",
            "exec",
            leaf,
            "sh",
            "-c",
            _proc_writes({**router_sysctls, "net.ipv4.fib_multipath_hash_seed": str(seed)}),
        )
        ip_batch(cmds, leaf)
        for slot in range(hpl):
            shaping.set_rate(f"h{slot}", host_mbit, leaf, spec.queue_ms)
        for k in range(spec.spines):
            shaping.set_rate(f"s{k}", up_mbit, leaf, spec.queue_ms)
    for k, spine in enumerate(d.spine_namespaces):
        cmds = ["link set lo up"]
        for j in range(spec.leaves):
            cmds += [
                f"addr add 10.{n}.{j + 1}.{4 * k + 2}/30 dev l{j}",
                f"link set l{j} up",
                f"route add 10.{n}.{100 + j}.0/24 via 10.{n}.{j + 1}.{4 * k + 1} dev l{j}",
            ]
        run("ip", "netns", "exec", spine, "sh", "-c", _proc_writes(router_sysctls))
        ip_batch(cmds, spine)
        for j in range(spec.leaves):
            shaping.set_rate(f"l{j}", up_mbit, spine, spec.queue_ms)


def leftover_namespaces(name: str) -> list[str]:
    """Namespaces of fabric ``name`` that exist now (from the prefix, whatever the state file says)."""
    prefix = FabricSpec(name=name).prefix
    return [ns for ns in list_namespaces() if ns.startswith(prefix)]


def fabric_down(name: str) -> list[str]:
    """Remove fabric ``name``: end processes in its namespaces, delete them and its state file.

    Idempotent; also cleans up after a build that was killed half-way. Returns the deleted namespaces.
    """
    FabricSpec(name=name)  # validates the name
    _require_root()
    removed = leftover_namespaces(name)
    for ns in removed:
        delete_namespace(ns)
    _state_file(name).unlink(missing_ok=True)
    if removed:
        logger.info("fabric %s: removed %d namespaces", name, len(removed))
    return removed


def load_description(name: str) -> FabricDescription:
    """The description of the built fabric ``name`` (raises :class:`FabricError` if it is not up)."""
    FabricSpec(name=name)
    path = _state_file(name)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FabricError(
            f"fabric {name!r} is not up (no description in {path}); run `netsim fabric up`"
        ) from None
    except json.JSONDecodeError as exc:
        raise FabricError(f"fabric description {path} is not JSON: {exc}") from None
    return FabricDescription.from_dict(data)


def fabric_status(name: str) -> tuple[FabricDescription | None, list[str], list[str]]:
    """(description or None, namespaces missing from it, namespaces present but not described)."""
    _require_root()
    present = set(leftover_namespaces(name))
    try:
        d = load_description(name)
    except FabricError:
        return None, [], sorted(present)
    expected = set(d.namespaces)
    return d, sorted(expected - present), sorted(present - expected)


def fabric_up(spec: FabricSpec) -> tuple[FabricDescription, bool]:
    """Build ``spec``'s fabric; returns (description, built). Idempotent.

    A complete fabric with the same spec is left as it is (``built`` False); anything else of that name
    (another spec, a half-built one) is removed first. A failed build removes what it made.
    """
    _require_root()
    d, missing, extra = fabric_status(spec.name)
    if d is not None and d.spec == spec and not missing and not extra:
        return d, False
    fabric_down(spec.name)
    d = describe(spec, created=time.time())
    t0 = time.perf_counter()
    try:
        _build(d)
        path = _state_file(spec.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(d.to_dict(), indent=2))
        tmp.replace(path)
    except BaseException:
        fabric_down(spec.name)
        raise
    logger.info(
        "fabric %s: %d namespaces built in %.2f s", spec.name, len(d.namespaces), time.perf_counter() - t0
    )
    return d, True
