"""Link profiles: built-in ``ethernet``, ``wifi``, ``5g-sa`` and custom JSON/TOML files.

Rates are in Mbit/s at the IP layer (tbf's convention: headers included; TCP goodput is ~4 % lower).
Delays are one-way, in ms; jitter is the half-width of a uniform spread in ms; loss is a percentage.

A custom file holds one profile::

    {"name": "lte", "down_mbit": 30, "up_mbit": 8, "delay_ms": 25, "jitter_ms": 3, "loss_pct": 0.1}

(``up_delay_ms``/``down_delay_ms`` override ``delay_ms`` per direction; TOML takes the same keys.)
``up_trace``/``down_trace`` name Mahimahi traces (paths relative to the profile file) replayed by the
delay line instead of a fixed rate; that direction's ``*_mbit`` then defaults to the trace's mean rate.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import tomllib

from flsim.errors import ProfileError
from netsim.fabric.access import LinkSpec
from netsim.fabric.delayline import MTU_BYTES, read_trace

TCP_PAYLOAD_SHARE = 1448 / 1500


@dataclass(frozen=True)
class LinkProfile:
    """One access link's rates (Mbit/s), one-way delays and jitters (ms) and loss (%)."""

    name: str
    down_mbit: float
    up_mbit: float
    down_delay_ms: float = 0.0
    up_delay_ms: float = 0.0
    jitter_ms: float = 0.0
    loss_pct: float = 0.0
    down_trace: str | None = None
    up_trace: str | None = None

    def spec(self) -> LinkSpec:
        """The :class:`netsim.fabric.LinkSpec` that emulates this profile."""
        return LinkSpec(down_bps=self.down_mbit * 1e6, up_bps=self.up_mbit * 1e6,
                        down_delay_ms=self.down_delay_ms, up_delay_ms=self.up_delay_ms,
                        down_jitter_ms=self.jitter_ms, up_jitter_ms=self.jitter_ms,
                        down_loss=self.loss_pct / 100, up_loss=self.loss_pct / 100,
                        down_trace=self.down_trace, up_trace=self.up_trace)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def model_seconds(self, nbytes: int, direction: str) -> float:
        """Modelled time for ``nbytes`` of payload one way (``"down"``/``"up"``): one-way delay plus
        serialization at the TCP goodput of the rate (1448 payload bytes per 1500-byte packet).

        Used by simulation mode, where no packet crosses a real link; loss, jitter and TCP's slow start
        are not modelled.
        """
        if direction not in ("down", "up"):
            raise ProfileError(f"direction must be 'down' or 'up', found {direction!r}")
        rate = (self.down_mbit if direction == "down" else self.up_mbit) * 1e6 * TCP_PAYLOAD_SHARE
        delay = self.down_delay_ms if direction == "down" else self.up_delay_ms
        return delay / 1e3 + nbytes * 8 / rate


#: Built-in profiles. Rates follow Hayek et al.'s testbed classes (Raspberry Pi clients, 5G-NR SA over an
#: SDR cell with a slow uplink); see docs/flsim.md for where each number comes from.
BUILTIN: dict[str, LinkProfile] = {
    "ethernet": LinkProfile("ethernet", down_mbit=94.0, up_mbit=94.0, down_delay_ms=0.25, up_delay_ms=0.25),
    "wifi": LinkProfile("wifi", down_mbit=60.0, up_mbit=50.0, down_delay_ms=2.0, up_delay_ms=2.0, jitter_ms=1.0),
    "5g-sa": LinkProfile("5g-sa", down_mbit=40.0, up_mbit=3.0, down_delay_ms=10.0, up_delay_ms=12.0,
                         jitter_ms=2.0, loss_pct=0.0),
}

_KEYS = {"name", "down_mbit", "up_mbit", "delay_ms", "down_delay_ms", "up_delay_ms", "jitter_ms", "loss_pct",
         "down_trace", "up_trace"}


def trace_mean_mbit(path: Path) -> float:
    """Mean rate of a Mahimahi trace in Mbit/s (1500 bytes per opportunity); :class:`ProfileError` if bad."""
    try:
        opportunities = read_trace(str(path))
    except (OSError, ValueError) as err:
        raise ProfileError(f"trace {path}: {err}") from err
    return len(opportunities) * MTU_BYTES * 8 / (opportunities[-1] / 1e3) / 1e6


def parse_profile(data: Any, where: str) -> LinkProfile:
    """Validate one profile mapping (from a file at ``where``); raises :class:`ProfileError`."""
    if not isinstance(data, dict):
        raise ProfileError(f"{where}: expected a mapping of profile keys, found {type(data).__name__}")
    unknown = set(data) - _KEYS
    if unknown:
        raise ProfileError(f"{where}: unknown key(s) {sorted(unknown)}; expected some of {sorted(_KEYS)}")
    traces: dict[str, str] = {}
    for d in ("down", "up"):
        trace = data.get(f"{d}_trace")
        if trace is not None:
            if not isinstance(trace, str) or not trace:
                raise ProfileError(f"{where}: '{d}_trace' must be a file name, found {trace!r}")
            path = Path(where).parent / trace
            data = {**data, f"{d}_mbit": data.get(f"{d}_mbit", trace_mean_mbit(path))}
            traces[d] = str(path.resolve())
    for key in ("down_mbit", "up_mbit"):
        if key not in data:
            raise ProfileError(f"{where}: missing required key {key!r} (Mbit/s at the IP layer)")

    def num(key: str, default: float = 0.0, positive: bool = False, upper: float = math.inf) -> float:
        value = data.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise ProfileError(f"{where}: {key!r} must be a finite number, found {value!r}")
        if (positive and value <= 0) or value < 0 or value > upper:
            bound = "> 0" if positive else ">= 0"
            raise ProfileError(f"{where}: {key!r} must be {bound} and <= {upper}, found {value!r}")
        return float(value)

    delay = num("delay_ms")
    name = data.get("name", Path(where).stem)
    if not isinstance(name, str) or not name:
        raise ProfileError(f"{where}: 'name' must be a non-empty string, found {name!r}")
    return LinkProfile(name=name, down_mbit=num("down_mbit", positive=True, upper=10_000),
                       up_mbit=num("up_mbit", positive=True, upper=10_000),
                       down_delay_ms=num("down_delay_ms", delay, upper=10_000),
                       up_delay_ms=num("up_delay_ms", delay, upper=10_000),
                       jitter_ms=num("jitter_ms", upper=10_000), loss_pct=num("loss_pct", upper=100),
                       down_trace=traces.get("down"), up_trace=traces.get("up"))


def load_profile(name_or_path: str | Path) -> LinkProfile:
    """A built-in profile by name, or a custom one from a ``.json``/``.toml`` file."""
    key = str(name_or_path)
    if key in BUILTIN:
        return BUILTIN[key]
    path = Path(key)
    if not path.exists():
        raise ProfileError(f"profile {key!r} is neither a built-in ({', '.join(BUILTIN)}) nor an existing file")
    text = path.read_text(encoding="utf-8")
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        kind = "TOML" if path.suffix == ".toml" else "JSON"
        raise ProfileError(f"{path}: not valid {kind}: {err}") from err
    return parse_profile(data, str(path))
