"""What a real transport adds to the fluid model: header bytes, start-up latency, sharing losses.

The fluid engine alone moves payload at line rate with zero latency, so a 1-byte all-reduce would take
picoseconds. A :class:`TransportModel` adds, for every step of a collective (steps are barriers):

- **headers**: a message of ``b`` bytes occupies ``b + ceil(b / mss) * overhead`` bytes on the wire
  (``mss = mtu - l3l4_header_bytes``, ``overhead = l3l4_header_bytes + l2_header_bytes``); link rates are
  on-wire rates, as a tbf or a switch port counts them;
- **rate efficiency**: the fraction of the on-wire rate a single transport flow sustains;
- **sharing loss**: ``n`` subflows on one link get ``1 - sharing_loss * (1 - 1/n)`` of its rate together
  (TCP flows sharing a queue lose some throughput to drops and uneven shares);
- **start-up**: ``message_startup_s`` per step (software and wake-up cost of one message exchange) before
  any byte moves, and ``subflow_startup_s`` for every subflow a host drives beyond the first, which
  overlaps the transfer: a step lasts at least that long once its bytes start moving;
- **propagation**: ``hop_latency_s`` per link on the step's longest path (2 within a leaf, 4 across);
- **burst**: ``burst_bytes`` a link passes at once before its rate applies (a tbf bucket, switch buffering);
  a job may use it once, so each of its ``n`` steps subtracts ``burst_bytes / n`` from every host's
  sent bytes (shared evenly by that host's subflows).

Connection set-up (handshakes) is outside the model: collectives and ``netsim measure`` reuse persistent
connections and time warmed-up iterations. :data:`IDEAL` turns everything off (the pure fluid model);
:data:`TCP_DEFAULT` holds defaults for Linux TCP over an emulated or real Ethernet fabric.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from netsim.errors import NetsimError

MODEL_VERSION = 1


class TransportModelError(NetsimError, ValueError):
    """A transport model's parameters or file are invalid."""


@dataclass(frozen=True)
class TransportModel:
    """Parameters of a transport, see the module docstring; ``to_dict``/``from_dict`` for JSON files."""

    mtu_bytes: int = 1500
    l3l4_header_bytes: int = 52  # IPv4 20 + TCP 20 + timestamps 12
    l2_header_bytes: int = 14  # Ethernet header, as tbf and interface byte counters count it
    rate_efficiency: float = 1.0
    sharing_loss: float = 0.0
    message_startup_s: float = 0.0
    subflow_startup_s: float = 0.0
    hop_latency_s: float = 0.0
    burst_bytes: float = 0.0
    source: str = "defaults"

    def __post_init__(self) -> None:
        if not (isinstance(self.mtu_bytes, int) and isinstance(self.l3l4_header_bytes, int)
                and isinstance(self.l2_header_bytes, int)):
            raise TransportModelError("mtu_bytes, l3l4_header_bytes and l2_header_bytes must be integers")
        if not 0 <= self.l3l4_header_bytes < self.mtu_bytes or self.l2_header_bytes < 0:
            raise TransportModelError(f"need 0 <= l3l4_header_bytes < mtu_bytes and l2_header_bytes >= 0, found "
                                      f"{self.l3l4_header_bytes}, {self.mtu_bytes}, {self.l2_header_bytes}")
        if not 0 < self.rate_efficiency <= 1:
            raise TransportModelError(f"rate_efficiency must be in (0, 1], found {self.rate_efficiency!r}")
        if not 0 <= self.sharing_loss < 1:
            raise TransportModelError(f"sharing_loss must be in [0, 1), found {self.sharing_loss!r}")
        for name in ("message_startup_s", "subflow_startup_s", "hop_latency_s", "burst_bytes"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise TransportModelError(f"{name} must be a finite number >= 0, found {value!r}")

    @property
    def mss_bytes(self) -> int:
        """Payload bytes per full packet."""
        return self.mtu_bytes - self.l3l4_header_bytes

    @property
    def packet_overhead_bytes(self) -> int:
        """Header bytes on the wire per packet."""
        return self.l3l4_header_bytes + self.l2_header_bytes

    @property
    def header_efficiency(self) -> float:
        """Payload fraction of a full packet on the wire (0.956 for 1500-byte MTU TCP over Ethernet)."""
        return self.mss_bytes / (self.mss_bytes + self.packet_overhead_bytes)

    def wire_bytes(self, payload: np.ndarray) -> np.ndarray:
        """On-wire bytes of messages of ``payload`` bytes each."""
        payload = np.asarray(payload, dtype=np.float64)
        return payload + np.ceil(payload / self.mss_bytes) * self.packet_overhead_bytes

    def sharing_efficiency(self, subflows: np.ndarray) -> np.ndarray:
        """Fraction of a link's rate that ``subflows`` concurrent subflows get together (1.0 for <= 1)."""
        n = np.maximum(np.asarray(subflows, dtype=np.float64), 1.0)
        return 1.0 - self.sharing_loss * (1.0 - 1.0 / n)

    def step_latency(self, max_hops: int) -> float:
        """Time before a step's bytes move: message start-up plus propagation over ``max_hops`` links."""
        return self.message_startup_s + self.hop_latency_s * max_hops

    def subflow_floor(self, max_subflows_per_host: int) -> float:
        """Least time a step's transfer takes when a host drives that many subflows (overlaps the bytes)."""
        return self.subflow_startup_s * max(max_subflows_per_host - 1, 0)

    @property
    def is_ideal(self) -> bool:
        """True when the model changes nothing: no headers, full rate, no latency."""
        return (self.packet_overhead_bytes == 0 and self.rate_efficiency == 1 and self.sharing_loss == 0
                and self.step_latency(1) == 0 and self.subflow_floor(2) == 0 and self.burst_bytes == 0)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready values, with the file format version."""
        return {"version": MODEL_VERSION, **asdict(self)}

    @staticmethod
    def from_dict(data: Any, where: str = "transport model") -> TransportModel:
        """Parse and validate; unknown keys and a wrong version are errors."""
        if not isinstance(data, dict):
            raise TransportModelError(f"{where}: expected a JSON object, found {type(data).__name__}")
        if data.get("version") != MODEL_VERSION:
            raise TransportModelError(f"{where}: version must be {MODEL_VERSION}, found {data.get('version')!r}")
        known = {f.name: f.type for f in fields(TransportModel)}
        unknown = sorted(set(data) - set(known) - {"version"})
        if unknown:
            raise TransportModelError(f"{where}: unknown field(s) {unknown}; expected some of {sorted(known)}")
        values = {k: v for k, v in data.items() if k != "version"}
        for key, value in values.items():
            ok = isinstance(value, str) if key == "source" else (
                isinstance(value, (int, float)) and not isinstance(value, bool))
            if not ok:
                raise TransportModelError(f"{where}: field {key!r} has the wrong type: {value!r}")
        try:
            return TransportModel(**values)
        except TransportModelError as exc:
            raise TransportModelError(f"{where}: {exc}") from None

    def write(self, path: str | Path) -> None:
        """Write the model as JSON."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")


IDEAL = TransportModel(l3l4_header_bytes=0, l2_header_bytes=0, source="ideal")
# Rounded from `netsim fit-transport` on 396 split-tcp rows (ring all-reduce and all-to-all, 8 ranks, 4 KiB to
# 4 MiB) on the emulated 4x2x2 leaf-spine at 100 Mbit/s (docs/netsim.md): Linux TCP with 1500-byte MTU driven
# by split-TCP's one-thread event loop. burst_bytes is half of tbf's bucket there (2 ms at 100 Mbit/s); use 0
# on switches.
TCP_DEFAULT = TransportModel(rate_efficiency=1.0, sharing_loss=0.2, message_startup_s=20e-6,
                             subflow_startup_s=100e-6, hop_latency_s=20e-6, burst_bytes=25_000,
                             source="tcp defaults")
PRESETS = {"ideal": IDEAL, "tcp": TCP_DEFAULT}


def load_transport_model(spec: str | Path) -> TransportModel:
    """A preset name (``ideal``, ``tcp``) or the path of a JSON file written by ``netsim fit-transport``."""
    if str(spec) in PRESETS:
        return PRESETS[str(spec)]
    path = Path(spec)
    try:
        text = path.read_text()
    except OSError as exc:
        raise TransportModelError(f"cannot read transport model {path} ({exc.strerror}); give a JSON file "
                                  f"or one of {', '.join(PRESETS)}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise TransportModelError(f"{path}: invalid JSON at line {exc.lineno}: {exc.msg}") from None
    return TransportModel.from_dict(data, str(path))
